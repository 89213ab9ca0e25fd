#!/usr/bin/env bash
# The governed API under load, against its floor and its alternative, in one run.
#
# GET /collections/<id>/items?limit=100 for ks-places (bundled sample, CC BY:
# attribution obligation) and us-counties (bench/data, 3,231 polygons), with
# wrk on 127.0.0.1, against:
#   kfm serve   policy decision, obligations, audit record in the ledger
#               for every request (anonymous: public reads, batched records)
#   nginx       the same response bytes as static files (the floor)
#   pygeoapi    the OGC API server a GIS user would otherwise pick, serving
#               the same features.geojson (GeoJSON provider, gunicorn)
# then a longer run against kfm alone, sampling its RSS (memory must stay
# flat), and `kfm ledger verify` afterwards (every audited request is there).
#
# Each row: requests/s, p99 latency, and the server's CPU microseconds per
# request (user + system, from /proc, over the run).
#
# Usage: bench/api.sh [SECONDS_PER_RUN] [SOAK_SECONDS]   (defaults 10, 60)
#        KFM_BIN=/path/to/kfm bench/api.sh …   times that binary instead
# Goals (issue #6): kfm >= 0.5x nginx throughput with p99 < 10 ms;
# >= 20x pygeoapi's throughput; flat memory over the soak.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
SOAK=${2:-60}
CONNS=${CONNS:-32}
for tool in wrk nginx curl gzip python3; do
  command -v "$tool" >/dev/null || { echo "bench/api.sh needs $tool (apt-get install wrk nginx curl gzip)" >&2; exit 2; }
done
if ! python3 -c 'import pygeoapi, gunicorn' 2>/dev/null; then
  echo "bench/api.sh: installing pygeoapi and gunicorn from PyPI..." >&2
  python3 -m pip install --quiet --disable-pip-version-check pygeoapi==0.21.0 gunicorn==23.0.0 >&2
fi

cargo build --release -p kfm -q
# KFM_BIN: time another build (an earlier commit's) under the same load.
KFM=${KFM_BIN:-$PWD/target/release/kfm}
S=$PWD/target/bench-api
rm -rf "$S"; mkdir -p "$S"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 200); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer from $1" >&2; exit 2; }

# --- the workspace: bundled samples + us-counties -------------------------
(cd "$S" && "$KFM" up --dir ws --no-serve >/dev/null)
W=$S/ws
gzip -dc bench/data/us-counties.geojson.gz > "$W/datasets/us-counties.geojson"
cp bench/data/us-counties.yaml "$W/datasets/us-counties.yaml"
"$KFM" --workspace "$W" ingest "$W/datasets/us-counties.yaml" >/dev/null
"$KFM" --workspace "$W" promote us-counties >/dev/null

# --- servers ---------------------------------------------------------------
KP=$(free_port); NP=$(free_port); PP=$(free_port)
"$KFM" --workspace "$W" serve --listen "127.0.0.1:$KP" > "$S/kfm.log" 2>&1 &
KPID=$!; PIDS+=("$KPID")
wait_http "http://127.0.0.1:$KP/readyz"

mkdir -p "$S/www"
for ds in ks-places us-counties; do
  curl -sf "http://127.0.0.1:$KP/collections/$ds/items?limit=100" > "$S/www/$ds.json"
done
cat > "$S/nginx.conf" <<EOF
worker_processes auto;
pid $S/nginx.pid;
error_log $S/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  keepalive_requests 1000000;
  types { application/geo+json json; }
  client_body_temp_path $S/tmp; proxy_temp_path $S/tmp; fastcgi_temp_path $S/tmp; uwsgi_temp_path $S/tmp; scgi_temp_path $S/tmp;
  server {
    listen 127.0.0.1:$NP;
    location /collections/ks-places/items { alias $S/www/ks-places.json; }
    location /collections/us-counties/items { alias $S/www/us-counties.json; }
  }
}
EOF
mkdir -p "$S/tmp"
nginx -c "$S/nginx.conf" -g 'daemon off;' 2>>"$S/nginx-error.log" &
NGPID=$!; PIDS+=("$NGPID")
wait_http "http://127.0.0.1:$NP/collections/ks-places/items"

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
  license: {name: CC-BY 4.0, url: "https://creativecommons.org/licenses/by/4.0/"}
  provider: {name: bench, url: "https://example.org"}
  contact: {name: bench, position: bench, address: bench, city: bench, stateorprovince: bench, postalcode: "0", country: bench, email: bench@example.org, url: "https://example.org", hours: bench, instructions: bench, role: pointOfContact}
resources:
EOF
for ds in ks-places us-counties; do
  cat >> "$S/pygeoapi.yml" <<EOF
  $ds:
    type: collection
    title: $ds
    description: $ds
    keywords: [$ds]
    extents: {spatial: {bbox: [-180, -90, 180, 90], crs: "http://www.opengis.net/def/crs/OGC/1.3/CRS84"}}
    providers:
      - {type: feature, name: GeoJSON, data: $W/store/processed/$ds/v1/features.geojson, id_field: id}
EOF
done
export PYGEOAPI_CONFIG=$S/pygeoapi.yml PYGEOAPI_OPENAPI=$S/pygeoapi-openapi.yml
pygeoapi openapi generate "$PYGEOAPI_CONFIG" --output-file "$PYGEOAPI_OPENAPI" >/dev/null 2>&1
python3 -m gunicorn --workers 2 --bind "127.0.0.1:$PP" --log-level error pygeoapi.flask_app:APP > "$S/pygeoapi.log" 2>&1 &
PYPID=$!; PIDS+=("$PYPID")
wait_http "http://127.0.0.1:$PP/collections/ks-places/items?limit=100&f=json"

# --- load --------------------------------------------------------------------
# CPU seconds (user + system) used so far by a process and its children's
# threads (nginx: master and workers; gunicorn: its workers). Throughput on
# two cores shared with wrk moves with the machine; CPU per request is what
# one answer costs the server, and moves much less.
cpu() { local t=0 p; for p in "$1" $(pgrep -P "$1"); do t=$(awk -v t="$t" '{printf "%.2f", t + ($14 + $15) / 100}' "/proc/$p/stat" 2>/dev/null || echo "$t"); done; echo "$t"; }
# wrk prints "Requests/sec: N" and, with --latency, "99% Xms|us|s".
measure() { # url pid -> "rps p99_ms cpu_us_per_request"
  local c0; c0=$(cpu "$2")
  local out; out=$(wrk -t2 -c"$CONNS" -d"${SECS}s" --latency "$1")
  local c1; c1=$(cpu "$2")
  local rps; rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  local p99; p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; print v}' <<<"$out")
  local errs; errs=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  [ -n "$errs" ] && echo "  warning: $errs non-2xx answers from $1" >&2
  local reqs; reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  echo "$rps $p99 $(bc -l <<<"($c1 - $c0) * 1000000 / $reqs")"
}
printf '\n%-12s %-9s %12s %9s %8s\n' dataset server req_per_s p99_ms cpu_us
declare -A R
for ds in ks-places us-counties; do
  for srv in kfm:$KP:$KPID nginx:$NP:$NGPID pygeoapi:$PP:$PYPID; do
    IFS=: read -r name port pid <<<"$srv"
    url="http://127.0.0.1:$port/collections/$ds/items?limit=100"
    [ "$name" = pygeoapi ] && url="$url&f=json"
    read -r rps p99 cus < <(measure "$url" "$pid")
    R[$ds-$name]=$rps
    printf '%-12s %-9s %12.0f %9.2f %8.1f\n' "$ds" "$name" "$rps" "$p99" "$cus"
  done
  printf '%-12s kfm/nginx = %.2fx   kfm/pygeoapi = %.1fx\n' "$ds" \
    "$(bc -l <<<"${R[$ds-kfm]} / ${R[$ds-nginx]}")" "$(bc -l <<<"${R[$ds-kfm]} / ${R[$ds-pygeoapi]}")"
done

# --- soak: memory over a longer run --------------------------------------------
# RSS is sampled every 2 s. Under load it moves in a band (each second the
# ledger writes the last second's entries as tiles, and the allocator keeps
# and returns memory as it pleases), so the figure is the median of the
# first half against the median of the second; then the RSS settled after
# the load against before it, divided by the entries the load appended:
# what every audited request leaves behind. "Settled" means 10 s of light
# traffic (a /healthz every 50 ms): mimalloc returns freed pages to the OS
# only when its threads run, so a fully idle process keeps showing the peak.
rss() { awk '/VmRSS/ {print $2}' "/proc/$KPID/status"; }
appends() { curl -s "http://127.0.0.1:$KP/metrics" | awk '/^kfm_audit_appends_total/ {s += $2} END {print s + 0}'; }
echo
echo "soak: ${SOAK}s of ks-places items against kfm, RSS (KiB) every 2 s"
settle() { for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$KP/healthz"; sleep 0.05; done; }
settle
idle_before=$(rss); appends_before=$(appends)
wrk -t2 -c"$CONNS" -d"${SOAK}s" "http://127.0.0.1:$KP/collections/ks-places/items?limit=100" > "$S/soak.txt" &
WRK=$!
samples=()
while kill -0 "$WRK" 2>/dev/null; do samples+=("$(rss)"); sleep 2; done
echo "  RSS samples: ${samples[*]}"
half=$(( ${#samples[@]} / 2 ))
med() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
m1=$(med "${samples[@]:1:$((half - 1))}"); m2=$(med "${samples[@]:$half}")
echo "  under load: median $m1 KiB in the first half, $m2 KiB in the second ($(bc -l <<<"scale=1; ($m2 - $m1) * 100 / $m1")%)"
settle
idle_after=$(rss); appended=$(( $(appends) - appends_before - 201 ))
echo "  settled: $idle_before KiB before, $idle_after KiB after; $appended audited requests; $(bc -l <<<"scale=1; ($idle_after - $idle_before) * 1024 / $appended") bytes kept per request"
awk '/Requests\/sec/ {print "  " $0}' "$S/soak.txt"

kill -TERM "$KPID"; wait "$KPID" 2>/dev/null || true
echo
"$KFM" --workspace "$W" ledger verify | tail -1
