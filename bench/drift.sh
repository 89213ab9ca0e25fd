#!/usr/bin/env bash
# GitOps drift figures (issue: drift of the live platform), one run:
#   1. `kfm drift detect` over the platform's own resources (this
#      repository's infra/platform, renamed under a prefix of its own on the
#      machine's NATS, in a fresh PostgreSQL database, on a moto S3 server):
#      median wall time of RUNS runs; goal < 1 s.
#   2. the same over GENERATED resources (450 streams, 50 key-value buckets,
#      400 PostgreSQL roles, 100 buckets, all existing): goal < 5 s.
#      Also the time `kfm drift reconcile` takes to create them, one signed
#      receipt each.
#   3. time from a live change (a stream's max_age) to its detection by
#      `kfm drift watch --interval INTERVAL`, TRIALS times at random offsets:
#      expected about half the interval on average, at most the interval
#      plus one detect.
# The anchor is the goal itself (no other tool reads these three engines);
# each figure is printed with its ratio to the goal.
#
# Needs the machine's NATS (127.0.0.1:4222) and PostgreSQL (127.0.0.1:5432),
# and moto_server (pip install 'moto[server]'; started here on a free port).
# Everything it creates is removed at the end (by `kfm drift reconcile` of a
# desired state that says ensure: absent, and DROP DATABASE).
#
# Usage: bench/drift.sh [RUNS] [INTERVAL] [TRIALS]   (defaults: 5 10s 5)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
INTERVAL=${2:-10s}
TRIALS=${3:-5}
NATS_URL=${KFM_BENCH_NATS:-nats://127.0.0.1:4222}
cargo build --release -p kfm -q
KFM=$PWD/target/release/kfm
SCRATCH=$(mktemp -d)
DB=kfm_bench_drift_$$
command -v moto_server >/dev/null || python3 -m pip install --quiet --disable-pip-version-check 'moto[server]==5.2.1' >&2
MOTO_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
moto_server -H 127.0.0.1 -p "$MOTO_PORT" >"$SCRATCH/moto.log" 2>&1 &
MOTO_PID=$!
cleanup() {
  kill "$MOTO_PID" 2>/dev/null || true
  [[ -n "${WATCH_PID:-}" ]] && kill "$WATCH_PID" 2>/dev/null || true
  psql -h 127.0.0.1 -U postgres -d postgres -qAtc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  psql -h 127.0.0.1 -U postgres -d postgres -qAtc "DROP ROLE IF EXISTS benchkfm_projector, benchkfm_api, benchkfm_api_precise" >/dev/null 2>&1 || true
  rm -rf "$SCRATCH"
}
trap cleanup EXIT
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$MOTO_PORT") 2>/dev/null && break; sleep 0.1; done
psql -h 127.0.0.1 -U postgres -d postgres -qAtc "CREATE DATABASE $DB" >/dev/null
export KFM_BENCH_S3_AK=testing KFM_BENCH_S3_SK=testing

# A repository with a desired state: $1 = directory, $2 = base YAML file.
make_repo() {
  local repo=$1 base=$2
  mkdir -p "$repo/infra/platform/base" "$repo/infra/platform/overlays/dev"
  cp "$base" "$repo/infra/platform/base/platform.yaml"
  cat >"$repo/infra/platform/overlays/dev/platform.yaml" <<EOF
apiVersion: kfm.dev/platform/v1
kind: PlatformOverlay
env: dev
engines:
  nats: {url: "$NATS_URL"}
  postgres: {dsn: "host=127.0.0.1 port=5432 user=postgres dbname=postgres"}
  s3: {endpoint: "http://127.0.0.1:$MOTO_PORT", region: us-east-1, access_key_env: KFM_BENCH_S3_AK, secret_key_env: KFM_BENCH_S3_SK}
EOF
  sed -i "s/^  database: .*/  database: $DB/" "$repo/infra/platform/base/platform.yaml"
  (cd "$repo" && git init -q -b main && git add -A && git -c user.name=b -c user.email=b@example.invalid commit -qm state)
  printf 'delivery:\n  approved: true\n  approver: bench\n' >"$repo/DELIVERY_APPROVED.yaml"
}
"$KFM" init "$SCRATCH/ws" >/dev/null
export KFM_WORKSPACE=$SCRATCH/ws

median_detect() { # $1 = repo; prints the median wall seconds of RUNS detects
  local repo=$1 times=()
  for _ in $(seq 1 "$RUNS"); do
    local t0 t1 code=0
    t0=$(date +%s.%N)
    (cd "$repo" && "$KFM" drift detect >/dev/null) || code=$?
    t1=$(date +%s.%N)
    if [[ $code -ne 0 ]]; then echo "detect exited $code (expected 0: no drift)" >&2; (cd "$repo" && "$KFM" drift detect | head -20) >&2; exit 1; fi
    times+=("$(echo "$t1 - $t0" | bc -l)")
  done
  printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}

# 1. The platform's own resources, renamed under prefixes of their own
#    (streams BENCHKFM_*, roles benchkfm_*) so nothing shared is touched.
sed -e 's/KFM_/BENCHKFM_/g' -e 's/"kfm\.\${env}/"bench.kfm.${env}/g' \
    -e 's/\bkfm_projector\b/benchkfm_projector/g' -e 's/\bkfm_api_precise\b/benchkfm_api_precise/g' \
    -e 's/\bkfm_api\b/benchkfm_api/g' -e 's/owns: \["kfm_"\]/owns: ["benchkfm_"]/' \
    infra/platform/base/platform.yaml >"$SCRATCH/platform.yaml"
make_repo "$SCRATCH/own" "$SCRATCH/platform.yaml"
(cd "$SCRATCH/own" && "$KFM" drift reconcile --actor bench >/dev/null)
OWN_N=$(cd "$SCRATCH/own" && "$KFM" --format json drift detect | python3 -c 'import json,sys; print(sum(json.load(sys.stdin)["compared"].values()))')
OWN=$(median_detect "$SCRATCH/own")

# 2. GENERATED resources.
python3 - "$SCRATCH/generated.yaml" "$SCRATCH/absent.yaml" "$DB" <<'PY'
import sys
out, absent, db = sys.argv[1], sys.argv[2], sys.argv[3]
def doc(ensure):
    e = "" if ensure == "present" else "      ensure: absent\n"
    lines = ["apiVersion: kfm.dev/platform/v1", "kind: PlatformState", "jetstream:", "  owns: [\"BENCHGEN_\"]", "  streams:"]
    for i in range(450):
        lines.append(f"    - name: BENCHGEN_S{i:03d}\n{e}      subjects: [\"benchgen.{i}.>\"]\n      storage: memory\n      max_age: 1h\n      max_msgs: 1000\n      replicas: 1")
    lines.append("  kv:")
    for i in range(50):
        lines.append(f"    - bucket: BENCHGEN_K{i:02d}\n{e}      history: 1\n      storage: memory")
    lines += ["postgres:", f"  database: {db}", "  owns: [\"benchgen_\"]", "  roles:"]
    for i in range(400):
        lines.append(f"    - name: benchgen_r{i:03d}\n{e}      login: {'true' if i % 2 else 'false'}")
    if ensure == "present":
        lines.append("s3:\n  buckets:")
        for i in range(100):
            lines.append(f"    - name: benchgen-b{i:03d}-dev\n      versioning: Enabled\n      public_access_block: {{block_public_acls: true, ignore_public_acls: true, block_public_policy: true, restrict_public_buckets: true}}\n      encryption: AES256\n      object_lock: null")
    return "\n".join(lines) + "\n"
open(out, "w").write(doc("present"))
open(absent, "w").write(doc("absent"))
PY
make_repo "$SCRATCH/gen" "$SCRATCH/generated.yaml"
t0=$(date +%s.%N)
(cd "$SCRATCH/gen" && "$KFM" drift reconcile --actor bench >/dev/null)
t1=$(date +%s.%N)
CREATE=$(echo "$t1 - $t0" | bc -l)
GEN_N=$(cd "$SCRATCH/gen" && "$KFM" --format json drift detect | python3 -c 'import json,sys; print(sum(json.load(sys.stdin)["compared"].values()))')
GEN=$(median_detect "$SCRATCH/gen")

# 3. Time from a live change to its detection by the loop. The change is
#    made with the JetStream API from a stream of the generated set (its
#    max_age), through kfm's own reconcile of a second desired state.
LAT=()
(cd "$SCRATCH/gen" && "$KFM" drift watch --interval "$INTERVAL" >"$SCRATCH/watch.out" 2>"$SCRATCH/watch.err") &
WATCH_PID=$!
sleep 2
mkdir -p "$SCRATCH/changer"
for trial in $(seq 1 "$TRIALS"); do
  sleep "$(python3 -c 'import random; print(round(random.uniform(0.5, 3.0), 2))')"
  age=$((2 + trial))h
  sed "0,/max_age: 1h/s//max_age: $age/" "$SCRATCH/generated.yaml" >"$SCRATCH/changer.yaml"
  rm -rf "$SCRATCH/changer"; make_repo "$SCRATCH/changer" "$SCRATCH/changer.yaml"
  before=$(wc -l <"$SCRATCH/watch.out")
  (cd "$SCRATCH/changer" && "$KFM" drift reconcile --actor bench >/dev/null) || true
  changed=$(date +%s.%N)
  # Wait for the first run line after the change that names it.
  while :; do
    line=$(tail -n +"$((before + 1))" "$SCRATCH/watch.out" | grep -m1 'BENCHGEN_S000 max_age' || true)
    if [[ -n "$line" ]]; then
      seen=$(date +%s.%N)
      LAT+=("$(echo "$seen - $changed" | bc -l)")
      break
    fi
    sleep 0.05
  done
  (cd "$SCRATCH/gen" && "$KFM" drift reconcile --actor bench >/dev/null) || true
done
kill "$WATCH_PID" 2>/dev/null || true; wait "$WATCH_PID" 2>/dev/null || true; WATCH_PID=

# Clean up what was created: git says ensure: absent.
make_repo "$SCRATCH/gone" "$SCRATCH/absent.yaml"
(cd "$SCRATCH/gone" && "$KFM" drift reconcile --actor bench >/dev/null) || true
python3 - "$SCRATCH/platform.yaml" >"$SCRATCH/own-absent.yaml" <<'PY'
import re, sys
t = open(sys.argv[1]).read().split("\npostgres:")[0]
print(re.sub(r"(\n    - (name|bucket): BENCHKFM_[^\n]*)", r"\1\n      ensure: absent", t))
PY
make_repo "$SCRATCH/own-gone" "$SCRATCH/own-absent.yaml"
(cd "$SCRATCH/own-gone" && "$KFM" drift reconcile --actor bench >/dev/null) || true

printf '\n%-58s %10s %8s %10s\n' "figure" "value" "goal" "ratio"
printf '%-58s %9.3fs %7ss %9.2fx\n' "detect, the platform's own resources ($OWN_N)" "$OWN" 1 "$(echo "$OWN / 1" | bc -l)"
printf '%-58s %9.3fs %7ss %9.2fx\n' "detect, $GEN_N generated resources" "$GEN" 5 "$(echo "$GEN / 5" | bc -l)"
printf '%-58s %9.3fs %8s %10s\n' "reconcile creating them (one receipt each)" "$CREATE" "-" "-"
printf '%s\n' "${LAT[@]}" | awk -v iv="$INTERVAL" '{s+=$1; if ($1>m) m=$1} END {printf "%-58s %9.3fs %8s %10s\n", "change -> detected by watch --interval " iv " (mean of " NR ")", s/NR, "-", "-"; printf "%-58s %9.3fs %8s %10s\n", "change -> detected (max)", m, "-", "-"}'
echo "(at --interval 5m: at most 300 s plus one detect; on average half that)"
