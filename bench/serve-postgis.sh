#!/usr/bin/env bash
# `kfm serve` with the PostGIS backend on a projected dataset, against tipg
# and pygeoapi's PostgreSQL provider serving the same table from the same
# server, in one run. Called by bench/projection.sh with its generated
# dataset (KFM, WS, DB, GEN set); runnable alone on a workspace whose
# `generated` dataset is projected into database DB.
#
#   items?limit=100 at page 1 and at page 1,000: one URL repeated (the page
#   cache answers), and 1,000 distinct pages near the start and 1,000 at
#   half the dataset (the database answers; keyset cursors as the `next`
#   links give them). tipg and pygeoapi page by offset (offset=99900 for
#   page 1,000); both run 2 workers, as kfm uses the 2 cores.
#   The RSS of `kfm serve` after start and after the load.
#
# Needs wrk, curl, python3 with pip (tipg, uvicorn, pygeoapi, gunicorn,
# SQLAlchemy, psycopg2-binary, GeoAlchemy2 are installed if missing).
# Goals: >= 10x the others' throughput; page 1,000 within 1.5x of page 1;
# RSS < 256 MiB with 10,000,000 features published.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${KFM:?}" "${WS:?}" "${DB:?}" "${GEN:?}"
SECS=${SECS:-10}
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-postgres}
for tool in wrk curl python3 psql; do
  command -v "$tool" >/dev/null || { echo "bench/serve-postgis.sh needs $tool" >&2; exit 2; }
done
if ! python3 -c 'import tipg, uvicorn, pygeoapi, gunicorn, sqlalchemy, psycopg2, geoalchemy2' 2>/dev/null; then
  echo "bench/serve-postgis.sh: installing tipg, uvicorn, pygeoapi, gunicorn, SQLAlchemy, psycopg2-binary, GeoAlchemy2 from PyPI..." >&2
  python3 -m pip install --quiet --disable-pip-version-check tipg uvicorn pygeoapi==0.21.0 gunicorn SQLAlchemy psycopg2-binary GeoAlchemy2 >&2
fi
S=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$S"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 600); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer from $1" >&2; exit 2; }

KP=$(free_port); TP=$(free_port); PP=$(free_port)
KFM_SERVE_BACKEND=postgis KFM_POSTGRES_URL="postgres://$PGUSER@$PGHOST:$PGPORT/$DB" \
  "$KFM" --workspace "$WS" serve --listen "127.0.0.1:$KP" > "$S/kfm.log" 2>&1 &
KPID=$!; PIDS+=("$KPID")
wait_http "http://127.0.0.1:$KP/readyz"
rss() { awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$KPID/status"; }
rss_start=$(rss)
TABLE=$(psql -d "$DB" -Atc "SELECT table_name FROM kfm.layers WHERE dataset = 'generated' AND layer = 'precise'")
[[ -n "$TABLE" ]] || { echo "dataset 'generated' is not projected in $DB" >&2; exit 2; }

DATABASE_URL="postgresql://$PGUSER@$PGHOST:$PGPORT/$DB" TIPG_DB_SCHEMAS='["kfm_data"]' TIPG_MAX_FEATURES_PER_QUERY=10000 \
  python3 -m uvicorn tipg.main:app --host 127.0.0.1 --port "$TP" --workers 2 --log-level error > "$S/tipg.log" 2>&1 &
PIDS+=("$!")
cat > "$S/pygeoapi.yml" <<EOF
server:
  bind: {host: 127.0.0.1, port: $PP}
  url: http://127.0.0.1:$PP
  mimetype: application/json; charset=UTF-8
  encoding: utf-8
  language: en-US
  pretty_print: false
  limits: {default_items: 10, max_items: 10000}
  map: {url: "https://tile.openstreetmap.org/{z}/{x}/{y}.png", attribution: OpenStreetMap}
logging: {level: ERROR}
metadata:
  identification: {title: bench, description: bench, keywords: [bench], keywords_type: theme, terms_of_service: "https://example.org", url: "https://example.org"}
  license: {name: CC0, url: "https://creativecommons.org/publicdomain/zero/1.0/"}
  provider: {name: bench, url: "https://example.org"}
  contact: {name: bench, position: bench, address: bench, city: bench, stateorprovince: bench, postalcode: "0", country: bench, email: bench@example.org, url: "https://example.org", hours: bench, instructions: bench, role: pointOfContact}
resources:
  generated:
    type: collection
    title: generated
    description: generated
    keywords: [generated]
    extents: {spatial: {bbox: [-180, -90, 180, 90], crs: "http://www.opengis.net/def/crs/OGC/1.3/CRS84"}}
    providers:
      - type: feature
        name: PostgreSQL
        data: {host: $PGHOST, port: $PGPORT, dbname: $DB, user: $PGUSER, search_path: [kfm_data, public]}
        id_field: fid
        table: $TABLE
        geom_field: geom
EOF
export PYGEOAPI_CONFIG=$S/pygeoapi.yml PYGEOAPI_OPENAPI=$S/pygeoapi-openapi.yml
pygeoapi openapi generate "$PYGEOAPI_CONFIG" --output-file "$PYGEOAPI_OPENAPI" >/dev/null 2>&1
python3 -m gunicorn --workers 2 --bind "127.0.0.1:$PP" --log-level error pygeoapi.flask_app:APP > "$S/pygeoapi.log" 2>&1 &
PIDS+=("$!")
wait_http "http://127.0.0.1:$TP/collections/kfm_data.$TABLE/items?limit=1"
wait_http "http://127.0.0.1:$PP/collections/generated/items?limit=1&f=json"

# Page k (1-based) of 100 starts after position (k-1)*100 - 1: the cursor
# the server's own next links carry (checked against page 1's).
cursor() { python3 -c 'import base64,sys; print(base64.urlsafe_b64encode(("[%d]" % int(sys.argv[1])).encode()).decode().rstrip("="))' "$1"; }
K=http://127.0.0.1:$KP/collections/generated/items
given=$(curl -sf "$K?limit=100" | python3 -c 'import json,sys; print([l["href"] for l in json.load(sys.stdin)["links"] if l["rel"]=="next"][0].split("cursor=")[1])')
[[ "$given" == "$(cursor 99)" ]] || { echo "page 1's next cursor is $given, expected $(cursor 99)" >&2; exit 2; }
python3 - "$S" "$GEN" <<'PY'
import base64, sys
d, n = sys.argv[1], int(sys.argv[2])
cur = lambda p: base64.urlsafe_b64encode(b"[%d]" % p).decode().rstrip("=")
with open(f"{d}/shallow.txt", "w") as f:
    for k in range(2, 1002):
        f.write(f"/collections/generated/items?limit=100&cursor={cur((k - 1) * 100 - 1)}\n")
with open(f"{d}/deep.txt", "w") as f:
    base = (n // 200) * 100
    for k in range(1000):
        f.write(f"/collections/generated/items?limit=100&cursor={cur(base + k * 100 - 1)}\n")
PY
cat > "$S/paths.lua" <<'LUA'
local paths = {}
init = function(args) for l in io.lines(args[1]) do paths[#paths + 1] = l end end
request = function() return wrk.format("GET", paths[math.random(#paths)]) end
LUA
measure() { # url [paths-file] -> "rps p99_ms"
  local out
  if [[ -n "${2:-}" ]]; then
    out=$(wrk -t2 -c32 -d"${SECS}s" --timeout 60s --latency -s "$S/paths.lua" "$1" -- "$2")
  else
    out=$(wrk -t2 -c32 -d"${SECS}s" --timeout 60s --latency "$1")
  fi
  local rps; rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  local p99; p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; print v}' <<<"$out")
  local errs; errs=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  [ -n "$errs" ] && echo "  warning: $errs non-2xx answers from $1" >&2
  echo "$rps $p99"
}
echo
echo "items?limit=100 on $GEN features (wrk -t2 -c32 --timeout 60s, ${SECS}s each; all on this machine's 2 cores)"
printf '%-48s %10s %9s\n' server/page req_per_s p99_ms
declare -A R P
row() {
  local name=$1; shift
  read -r R[$name] P[$name] < <(measure "$@")
  printf '%-48s %10.0f %9.2f\n' "$name" "${R[$name]}" "${P[$name]}"
}
row k1 "$K?limit=100"
row k1000 "$K?limit=100&cursor=$(cursor 99899)"
row kshallow "http://127.0.0.1:$KP" "$S/shallow.txt"
row kdeep "http://127.0.0.1:$KP" "$S/deep.txt"
row t1 "http://127.0.0.1:$TP/collections/kfm_data.$TABLE/items?limit=100"
row t1000 "http://127.0.0.1:$TP/collections/kfm_data.$TABLE/items?limit=100&offset=99900"
row p1 "http://127.0.0.1:$PP/collections/generated/items?limit=100&f=json"
row p1000 "http://127.0.0.1:$PP/collections/generated/items?limit=100&offset=99900&f=json"
echo "  k1/k1000: kfm page 1 / page 1,000, one URL each (the page cache answers)"
echo "  kshallow/kdeep: kfm, 1,000 distinct pages from page 2 on / at half the dataset (the database answers)"
echo "  t: tipg, p: pygeoapi (PostgreSQL provider); page 1,000 by offset=99900"
r() { python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); print('%.2f' % (a / b) if b > 0 else 'inf (the other answered nothing)')" "$1" "$2"; }
# One request at a time, for the latency a user of each server sees.
once() { curl -s -o /dev/null -w '%{time_total}' "$1"; }
echo "one request at a time (seconds): kfm page 1 $(once "$K?limit=100&cursor=$(cursor 12345)"), page 1,000 $(once "$K?limit=100&cursor=$(cursor 99799)");" \
  "tipg page 1 $(once "http://127.0.0.1:$TP/collections/kfm_data.$TABLE/items?limit=100"), page 1,000 $(once "http://127.0.0.1:$TP/collections/kfm_data.$TABLE/items?limit=100&offset=99800");" \
  "pygeoapi page 1 $(once "http://127.0.0.1:$PP/collections/generated/items?limit=100&f=json"), page 1,000 $(once "http://127.0.0.1:$PP/collections/generated/items?limit=100&offset=99800&f=json")"
best1=$(python3 -c "print(max(${R[t1]}, ${R[p1]}))")
best1000=$(python3 -c "print(max(${R[t1000]}, ${R[p1000]}))")
echo "kfm / the faster of tipg and pygeoapi, page 1: $(r "${R[k1]}" "$best1")x cached, $(r "${R[kshallow]}" "$best1")x from the database (goal >= 10x)"
echo "kfm / the faster of tipg and pygeoapi, page 1,000: $(r "${R[k1000]}" "$best1000")x cached, $(r "${R[kdeep]}" "$best1000")x from the database"
echo "kfm from the database, deep / shallow: p99 $(r "${P[kdeep]}" "${P[kshallow]}")x, req/s $(r "${R[kdeep]}" "${R[kshallow]}")x (goal: p99 within 1.5x)"
echo "kfm serve RSS: $rss_start MiB after start, $(rss) MiB after the load, $GEN features published (goal < 256 MiB)"
