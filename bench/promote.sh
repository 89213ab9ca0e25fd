#!/usr/bin/env bash
# Promotion wall time and peak memory, against the floor of hashing the same
# bytes, in one run.
#
# Two real datasets (bench/data/, see bench/data/SOURCES.md):
#   us-counties.geojson   3,231 county polygons (3.2 MB)
#   world-places.csv      171,075 places (6.7 MB)
# Each is ingested once into a fresh workspace, then `kfm promote` is timed
# RUNS times (each run publishes a new version through gates A-G: two
# normalisations for the determinism check, FlatGeobuf, catalog triplet with
# STAC schema validation, QA, signed receipt and manifest in the ledger,
# pointer CAS). `openssl dgst -sha256` of the same source bytes is timed in the
# same run. Median wall time; peak RSS is the largest seen (GNU time).
#
# Usage: bench/promote.sh [RUNS]     (default 5)
# Goal (issue #5): world-places promoted in < 3 s here, peak RSS < 512 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
for tool in openssl bc gzip /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "bench/promote.sh needs $tool (apt-get install openssl bc gzip time)" >&2; exit 2; }
done

cargo build --release -p kfm -q
KFM=$PWD/target/release/kfm
SCRATCH=$PWD/target/bench-promote
rm -rf "$SCRATCH"; mkdir -p "$SCRATCH"
trap 'rm -rf "$SCRATCH"' EXIT

"$KFM" init "$SCRATCH/ws" >/dev/null
D=$SCRATCH/ws/datasets
gzip -dc bench/data/us-counties.geojson.gz > "$D/us-counties.geojson"
gzip -dc bench/data/world-places.csv.gz > "$D/world-places.csv"
cp bench/data/us-counties.yaml "$D/us-counties.yaml"
cp bench/data/world-places.yaml "$D/world-places.yaml"
for ds in us-counties world-places; do
  "$KFM" --workspace "$SCRATCH/ws" ingest "$D/$ds.yaml" >/dev/null
done

run_timed() { # prints "<wall_s> <max_rss_kib> <exit>"
  local out; out=$(mktemp)
  set +e; /usr/bin/time -f '%e %M' -o "$out" "$@" >/dev/null 2>"$SCRATCH/stderr"; local rc=$?; set -e
  echo "$(cat "$out") $rc"; rm -f "$out"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

printf '%-14s %9s %10s %10s %14s %8s\n' dataset bytes kfm_s openssl_s peak_rss_MiB ratio
for pair in us-counties:geojson world-places:csv; do
  ds=${pair%%:*}; src=$D/$ds.${pair##*:}
  walls=(); ossl=(); rss=0
  for i in $(seq "$RUNS"); do
    read -r w r rc < <(run_timed "$KFM" --workspace "$SCRATCH/ws" promote "$ds")
    if [[ $rc != 0 ]]; then echo "kfm promote $ds exited $rc:" >&2; cat "$SCRATCH/stderr" >&2; exit 1; fi
    walls+=("$w"); (( r > rss )) && rss=$r
    read -r o _ _ < <(run_timed openssl dgst -sha256 "$src")
    ossl+=("$o")
  done
  kw=$(printf '%s\n' "${walls[@]}" | median)
  ow=$(printf '%s\n' "${ossl[@]}" | median)
  # openssl on a few MB is ~0.01 s: floor the divisor at the clock's 0.01 s.
  ratio=$(awk -v k="$kw" -v o="$ow" 'BEGIN { if (o < 0.01) o = 0.01; print k / o }')
  printf '%-14s %9s %10s %10s %14.1f %8.0f\n' "$ds" "$(stat -c %s "$src")" "$kw" "$ow" "$(echo "$rss / 1024" | bc -l)" "$ratio"
done
echo
echo "median of $RUNS promotions each (each publishes a new version through gates A-G); goal: world-places < 3 s, peak RSS < 512 MiB"
"$KFM" --workspace "$SCRATCH/ws" ledger verify >/dev/null && echo "ledger verifies after the runs"
