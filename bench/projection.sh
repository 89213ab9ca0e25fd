#!/usr/bin/env bash
# Projection load rate, against psql's \copy of the same rows into the same
# server, in one run.
#
# Datasets (bench/data/, see bench/data/SOURCES.md): world-places (171,075
# points) and us-counties (3,231 polygons), and optionally a generated point
# dataset of N rows (argument; the issue's figure is 10,000,000; 0 skips it).
# Each is promoted, then `kfm projection run --once` is timed while it loads
# that one dataset: verify the pointer, read and check the artifact, parse
# it, binary COPY, primary key + unique id + GiST indexes, grants and
# row-level security, ANALYZE, the catalog switch, the signed ledger record.
#
# The anchor: the rows the projector stored, exported as CSV, loaded by
# `psql -1 -c '\copy ...'` into a table of the same shape, with the same
# four indexes (primary key, unique id, GiST geometry, GIN search terms)
# and ANALYZE (the same server-side work; no parsing of GeoJSON, no terms
# to compute, no digest, no ledger). Ratio = kfm rows/s / psql rows/s;
# goal >= 0.7.
#
# With a generated dataset, then the serving side on it
# (bench/serve-postgis.sh, in the same run): `kfm serve` with the PostGIS
# backend against tipg and pygeoapi's PostgreSQL provider on the same
# table, and the RSS of `kfm serve`.
#
# Needs PostgreSQL with PostGIS at 127.0.0.1:5432 (trust auth, as on CI
# machines; PGHOST/PGPORT/PGUSER override), psql, gzip.
# Usage: bench/projection.sh [GENERATED_ROWS]    (default 0)
set -euo pipefail
cd "$(dirname "$0")/.."
GEN=${1:-0}
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-postgres}
export PGOPTIONS='-c client_min_messages=warning'
for tool in psql gzip python3 /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "bench/projection.sh needs $tool" >&2; exit 2; }
done

cargo build --release -p kfm -q
KFM=$PWD/target/release/kfm
SCRATCH=$PWD/target/bench-projection
DB=kfm_bench_$$
rm -rf "$SCRATCH"; mkdir -p "$SCRATCH"
psql -q -d postgres -c "CREATE DATABASE $DB"
cleanup() { psql -q -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" || true; rm -rf "$SCRATCH"; }
[[ -n "${KEEP:-}" ]] || trap cleanup EXIT
export KFM_POSTGRES_URL="postgres://$PGUSER@$PGHOST:$PGPORT/$DB"

"$KFM" init "$SCRATCH/ws" >/dev/null
D=$SCRATCH/ws/datasets
gzip -dc bench/data/us-counties.geojson.gz > "$D/us-counties.geojson"
gzip -dc bench/data/world-places.csv.gz > "$D/world-places.csv"
cp bench/data/us-counties.yaml "$D/us-counties.yaml"
cp bench/data/world-places.yaml "$D/world-places.yaml"
datasets=(world-places us-counties)
if (( GEN > 0 )); then
  python3 - "$D/generated.csv" "$GEN" <<'PY'
import sys, random
out, n = sys.argv[1], int(sys.argv[2])
r = random.Random(7)
with open(out, "w") as f:
    f.write("name,lat,lng,kind\n")
    for i in range(n):
        f.write(f"p{i},{r.uniform(-60, 70):.5f},{r.uniform(-180, 180):.5f},{'abc'[i % 3]}\n")
PY
  cat > "$D/generated.yaml" <<YAML
id: generated
title: Generated points
description: $GEN random points (bench/projection.sh).
publisher: {name: KFM project, url: "https://kfm.example.org/"}
contact: {name: KFM data stewards, email: stewards@kfm.example.org}
source: {uri: generated.csv, format: csv, lat_column: lat, lon_column: lng}
license: {spdx: CC0-1.0, rights_holder: KFM project}
sensitivity: {policy_label: public}
qa: {min_features: 1, geometry_valid: true, required_properties: [name]}
YAML
  datasets+=(generated)
fi

now() { date +%s.%N; }
printf '%-14s %10s %9s %12s %9s %12s %7s %9s\n' dataset rows kfm_s kfm_rows/s psql_s psql_rows/s ratio kfm_MiB
for ds in "${datasets[@]}"; do
  "$KFM" --workspace "$SCRATCH/ws" ingest "$D/$ds.yaml" >/dev/null
  "$KFM" --workspace "$SCRATCH/ws" promote "$ds" >/dev/null
  t0=$(now)
  /usr/bin/time -f '%M' -o "$SCRATCH/rss" "$KFM" --workspace "$SCRATCH/ws" --format json projection run --once > "$SCRATCH/pass.json"
  t1=$(now)
  table=$(python3 -c 'import json,sys; p=json.load(open(sys.argv[1])); print(p["loaded"][0]["layers"][0]["table"])' "$SCRATCH/pass.json")
  rows=$(psql -d "$DB" -Atc "SELECT count(*) FROM $table")
  # The anchor: the same rows, as CSV, into a table of the same shape.
  psql -d "$DB" -qAtc "\\copy (SELECT ord, fid, fid_numeric, encode(ST_AsEWKB(geom, 'NDR'), 'hex'), props, t, terms FROM $table ORDER BY ord) TO '$SCRATCH/rows.csv' (FORMAT csv)"
  psql -d "$DB" -qc "DROP TABLE IF EXISTS public.anchor; CREATE TABLE public.anchor (ord bigint NOT NULL, fid text NOT NULL, fid_numeric boolean NOT NULL, geom geometry(Geometry, 4326), props jsonb, t timestamptz, terms text[] COLLATE \"C\" NOT NULL)"
  a0=$(now)
  psql -d "$DB" -q -1 -v ON_ERROR_STOP=1 \
    -c "\\copy public.anchor FROM '$SCRATCH/rows.csv' (FORMAT csv)" \
    -c "ALTER TABLE public.anchor ADD PRIMARY KEY (ord)" \
    -c "CREATE UNIQUE INDEX ON public.anchor (fid)" \
    -c "CREATE INDEX ON public.anchor USING gist (geom)" \
    -c "CREATE INDEX ON public.anchor USING gin (terms)" \
    -c "ANALYZE public.anchor"
  a1=$(now)
  psql -d "$DB" -qc "DROP TABLE public.anchor"
  awk -v ds="$ds" -v n="$rows" -v k0="$t0" -v k1="$t1" -v a0="$a0" -v a1="$a1" -v rss="$(cat "$SCRATCH/rss")" 'BEGIN {
    k = k1 - k0; a = a1 - a0;
    printf "%-14s %10d %9.2f %12.0f %9.2f %12.0f %7.2f %9.0f\n", ds, n, k, n / k, a, n / a, a / k, rss / 1024 }'
done
echo
echo "kfm: a whole 'kfm projection run --once' loading that dataset (process start, pointer and artifact"
echo "verification, parse, search terms, binary COPY, 4 indexes, RLS, ANALYZE, catalog switch, ledger record)."
echo "psql: '\\copy' of the same rows as CSV + the same 4 indexes and ANALYZE, one transaction. Goal: ratio >= 0.7."
"$KFM" --workspace "$SCRATCH/ws" projection verify >/dev/null && echo "kfm projection verify: every table equals its artifact"
# The disaster-recovery drill over everything published above, into a
# scratch database: ledger verified offline, policy pin, every pointer,
# every projection rebuilt and proven, evidence sampled, receipt signed.
d0=$(now)
"$KFM" --workspace "$SCRATCH/ws" --format json dr drill > "$SCRATCH/drill.json"
d1=$(now)
python3 - "$SCRATCH/drill.json" "$d0" "$d1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["receipt"]
rows = sum(l["rows"] for l in r["layers"])
print(f"kfm dr drill: {r['outcome']}, RTO {r['rto_seconds']:.2f} s (command {float(sys.argv[3]) - float(sys.argv[2]):.2f} s), "
      f"{len(r['layers'])} tables / {rows} rows rebuilt, RPO ledger entry {r['rpo']['size']}")
PY

# The serving side, on the generated dataset just projected.
if (( GEN > 0 )); then
  KFM="$KFM" WS="$SCRATCH/ws" DB="$DB" GEN="$GEN" bench/serve-postgis.sh
fi
