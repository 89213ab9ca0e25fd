#!/usr/bin/env bash
# Ingest throughput and memory, against its floors, in one run.
#
# Builds a large CSV by repeating the bundled ks-places sample, then times on
# the same file and the same filesystem:
#   cp                 the floor for writing the bytes once (not durable)
#   cp+fsync           the same, then fsync: the floor for writing them durably
#   openssl dgst       the floor for hashing them (CPU SHA extensions)
#   sha256sum          coreutils hashing, for reference
#   kfm ingest         ours: read once, hash and store durably in the same pass
#                      (kfm fsyncs the raw object before publishing it; cp does not,
#                      so both ratios are printed)
# Each is run RUNS times after one warm-up (page cache warm for all); the
# median wall time is reported. Peak RSS of kfm ingest is measured at two
# sizes to show it does not grow with the file.
#
# Usage: bench/ingest.sh [SIZE_MIB] [RUNS]     (defaults: 1024 3)
# Goal (issue #2): ingest <= 1.2x the slower floor; peak RSS < 64 MiB, flat.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MIB=${1:-1024}
RUNS=${2:-3}
for tool in openssl bc python3 /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "bench/ingest.sh needs $tool (apt-get install openssl bc python3 time)" >&2; exit 2; }
done

cargo build --release -p kfm -q
KFM=$PWD/target/release/kfm

# Same filesystem as the store: a scratch directory under target/.
SCRATCH=$PWD/target/bench-ingest
rm -rf "$SCRATCH"; mkdir -p "$SCRATCH"
trap 'rm -rf "$SCRATCH"' EXIT

make_csv() { # make_csv FILE MIB
  python3 - "$1" "$2" <<'PY'
import sys
path, mib = sys.argv[1], int(sys.argv[2])
src = open("data/samples/ks-places/ks-places.csv", "rb").read()
header, body = src.split(b"\n", 1)
block = body * max(1, (4 << 20) // len(body))
with open(path, "wb") as f:
    f.write(header + b"\n")
    n = len(header) + 1
    while n < mib << 20:
        f.write(block); n += len(block)
PY
}

# run_timed CMD...: prints "<wall_seconds> <max_rss_kib>" (GNU time)
run_timed() {
  local out; out=$(mktemp)
  /usr/bin/time -f '%e %M' -o "$out" "$@" >/dev/null
  cat "$out"; rm -f "$out"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

new_workspace() { # new_workspace DIR SOURCE
  rm -rf "$1"
  "$KFM" init "$1" >/dev/null
  sed "s|uri: ks-places.csv|uri: $2|" data/samples/ks-places/dataset.yaml > "$1/datasets/big.yaml"
}

measure() { # measure NAME CMD... ; prints median wall and max rss
  local name=$1; shift
  local walls=() rss=0
  "$@" warmup >/dev/null
  for i in $(seq "$RUNS"); do
    read -r w r < <("$@" "$i")
    walls+=("$w"); (( r > rss )) && rss=$r
  done
  printf '%s %s %s\n' "$name" "$(printf '%s\n' "${walls[@]}" | median)" "$rss"
}

cp_run()      { rm -f "$SCRATCH/copy.csv"; run_timed cp "$SCRATCH/big.csv" "$SCRATCH/copy.csv"; }
cpsync_run()  { rm -f "$SCRATCH/copy.csv"; run_timed sh -c 'cp "$1" "$2" && sync "$2"' _ "$SCRATCH/big.csv" "$SCRATCH/copy.csv"; }
openssl_run() { run_timed openssl dgst -sha256 "$SCRATCH/big.csv"; }
sha256_run()  { run_timed sha256sum "$SCRATCH/big.csv"; }
kfm_run()     { new_workspace "$SCRATCH/ws" "$SCRATCH/big.csv"; sync; run_timed "$KFM" --workspace "$SCRATCH/ws" ingest "$SCRATCH/ws/datasets/big.yaml"; }

echo "building a ${SIZE_MIB} MiB CSV from data/samples/ks-places/ks-places.csv ..." >&2
make_csv "$SCRATCH/big.csv" "$SIZE_MIB"
BYTES=$(stat -c %s "$SCRATCH/big.csv")

results=$( {
  measure cp cp_run
  measure cp+fsync cpsync_run
  measure openssl openssl_run
  measure sha256sum sha256_run
  measure kfm-ingest kfm_run
} )
rm -f "$SCRATCH/copy.csv"

# Peak RSS at a quarter of the size, to show memory does not follow file size.
make_csv "$SCRATCH/small.csv" $(( SIZE_MIB / 4 > 0 ? SIZE_MIB / 4 : 1 ))
new_workspace "$SCRATCH/ws" "$SCRATCH/small.csv"
read -r _ rss_small < <(run_timed "$KFM" --workspace "$SCRATCH/ws" ingest "$SCRATCH/ws/datasets/big.yaml")

echo
echo "file: ${BYTES} bytes (${SIZE_MIB} MiB), median of ${RUNS} runs, warm page cache"
printf '%-12s %10s %12s %14s\n' tool wall_s MiB_per_s peak_rss_MiB
while read -r name wall rss; do
  printf '%-12s %10s %12.0f %14.1f\n' "$name" "$wall" "$(echo "$BYTES / 1048576 / $wall" | bc -l)" "$(echo "$rss / 1024" | bc -l)"
done <<< "$results"
cp_w=$(awk '$1=="cp"{print $2}' <<< "$results")
ossl_w=$(awk '$1=="openssl"{print $2}' <<< "$results")
kfm_w=$(awk '$1=="kfm-ingest"{print $2}' <<< "$results")
kfm_rss=$(awk '$1=="kfm-ingest"{print $3}' <<< "$results")
cps_w=$(awk '$1=="cp+fsync"{print $2}' <<< "$results")
floor=$(echo "if ($cp_w > $ossl_w) $cp_w else $ossl_w" | bc -l)
dfloor=$(echo "if ($cps_w > $ossl_w) $cps_w else $ossl_w" | bc -l)
echo
printf 'ratio kfm-ingest / max(cp, openssl)       = %.2f   (issue goal <= 1.20; cp is not durable, kfm is)\n' "$(echo "$kfm_w / $floor" | bc -l)"
printf 'ratio kfm-ingest / max(cp+fsync, openssl) = %.2f   (same work: durable copy + hash)\n' "$(echo "$kfm_w / $dfloor" | bc -l)"
printf 'peak RSS kfm-ingest: %.1f MiB at %s MiB, %.1f MiB at %s MiB   (goal < 64, flat)\n' \
  "$(echo "$kfm_rss / 1024" | bc -l)" "$SIZE_MIB" "$(echo "$rss_small / 1024" | bc -l)" $(( SIZE_MIB / 4 > 0 ? SIZE_MIB / 4 : 1 ))
