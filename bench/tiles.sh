#!/usr/bin/env bash
# Governed vector tiles: `kfm serve` (PostGIS backend, policy and audit on)
# against martin serving the same PostGIS tables, in one run.
#
#   bench/tiles.sh [SECS]
#
# Datasets (bench/data/, see SOURCES.md): us-counties (3,231 polygons) and
# world-places (171,075 points), promoted and projected into a scratch
# database. For each: up to 100,000 distinct z10-z14 tiles holding its features,
# each asked for once in list order by wrk (uncached: the first request of
# a tile is drawn by the database), then 100 of them over and over
# (cached: kfm's tile cache; martin's own cache at its default size).
# Prints tiles/s and p99 for both and the ratios.
# Goals: cached >= martin; uncached latency <= 1.5x martin's.
#
# Needs wrk, psql, python3, curl; installs martin 1.14.0 with `cargo install`
# the first time (several minutes on two cores).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-postgres}
export PGOPTIONS='-c client_min_messages=warning'
for tool in wrk psql python3 curl gzip; do
  command -v "$tool" >/dev/null || { echo "bench/tiles.sh needs $tool" >&2; exit 2; }
done
if ! command -v martin >/dev/null; then
  # Pinned: the newest martin that builds with this machine's Rust (1.95);
  # PostgreSQL tiles only (its default "rendering" clones maplibre-native
  # from GitHub at build time, which this machine cannot reach).
  echo "bench/tiles.sh: installing martin 1.14.0 (cargo install --locked martin)..." >&2
  cargo install --locked martin --version 1.14.0 --no-default-features --features postgres >&2
fi
cargo build --release -p kfm -q
KFM=$PWD/target/release/kfm
S=$PWD/target/bench-tiles
DB=kfm_tiles_$$
rm -rf "$S"; mkdir -p "$S"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql -q -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" || true
  rm -rf "$S"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 600); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer from $1" >&2; exit 2; }

psql -q -d postgres -c "CREATE DATABASE $DB"
export KFM_POSTGRES_URL="postgres://$PGUSER@$PGHOST:$PGPORT/$DB"
"$KFM" init "$S/ws" >/dev/null
D=$S/ws/datasets
gzip -dc bench/data/us-counties.geojson.gz > "$D/us-counties.geojson"
gzip -dc bench/data/world-places.csv.gz > "$D/world-places.csv"
cp bench/data/us-counties.yaml bench/data/world-places.yaml "$D/"
for ds in us-counties world-places; do
  "$KFM" --workspace "$S/ws" ingest "$D/$ds.yaml" >/dev/null
  "$KFM" --workspace "$S/ws" promote "$ds" >/dev/null
done
"$KFM" --workspace "$S/ws" projection run --once >/dev/null

KP=$(free_port); MP=$(free_port)
KFM_SERVE_BACKEND=postgis "$KFM" --workspace "$S/ws" serve --listen "127.0.0.1:$KP" > "$S/kfm.log" 2>&1 &
PIDS+=("$!")
martin --listen-addresses "127.0.0.1:$MP" --workers 2 "$KFM_POSTGRES_URL" > "$S/martin.log" 2>&1 &
PIDS+=("$!")
wait_http "http://127.0.0.1:$KP/readyz"
wait_http "http://127.0.0.1:$MP/catalog"

# Tile lists: the same tiles for both servers.
python3 - "$S" "$KP" "$MP" <<'PY'
import gzip, json, math, os, random, subprocess, sys, urllib.request
s, kp, mp = sys.argv[1], sys.argv[2], sys.argv[3]
db = os.environ["KFM_POSTGRES_URL"].rsplit("/", 1)[1]
cat = json.load(urllib.request.urlopen(f"http://127.0.0.1:{mp}/catalog"))
tables = {}
for ds in ("us-counties", "world-places"):
    t = subprocess.run(["psql", "-d", db, "-Atc",
        f"SELECT table_name FROM kfm.layers WHERE dataset = '{ds}' AND layer = 'precise'"], capture_output=True, text=True).stdout.strip()
    src = [k for k in cat["tiles"] if k == t or k.endswith(t)]
    if not src:
        sys.exit(f"martin does not serve {t}: {list(cat['tiles'])[:10]}")
    tables[ds] = src[0]
def tile(lon, lat, z):
    n = 2 ** z
    r = math.radians(max(-85.0, min(85.0, lat)))
    return z, int((lon + 180) / 360 * n), int((1 - math.log(math.tan(r) + 1 / math.cos(r)) / math.pi) / 2 * n)
rnd = random.Random(7)
pts = {"world-places": [], "us-counties": []}
import csv, io
for row in csv.DictReader(io.TextIOWrapper(gzip.open("bench/data/world-places.csv.gz"), encoding="utf-8")):
    try:
        pts["world-places"].append((float(row["lng"]), float(row["lat"])))
    except (KeyError, ValueError):
        pass
for f in json.load(gzip.open("bench/data/us-counties.geojson.gz"))["features"]:
    cs = []
    def walk(c):
        if isinstance(c[0], (int, float)): cs.append(c)
        else:
            for x in c: walk(x)
    walk(f["geometry"]["coordinates"])
    pts["us-counties"].extend(rnd.sample(cs, min(20, len(cs))))
for ds, ps in pts.items():
    if not ps:
        sys.exit(f"no positions read for {ds}")
    seen, order = set(), []
    for _ in range(2000000):
        if len(order) >= 100000:
            break
        lon, lat = rnd.choice(ps)
        t = tile(lon, lat, rnd.randint(10, 14))
        if t not in seen:
            seen.add(t); order.append(t)
    for who, fmt in (("kfm", f"/collections/{ds}/tiles/WebMercatorQuad/{{z}}/{{y}}/{{x}}"),
                     ("martin", f"/{tables[ds]}/{{z}}/{{x}}/{{y}}")):
        with open(f"{s}/{ds}.{who}.txt", "w") as out:
            for z, x, y in order:
                out.write(fmt.format(z=z, x=x, y=y) + "\n")
PY

cat > "$S/walk.lua" <<'LUA'
-- Each thread walks its share of the list once, in order (then wraps).
local paths, i = {}, 0
function setup(thread) thread:set("id", #_G.threads_seen or 0) end
function init(args)
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
  local tid = tonumber(args[2]) or 0
  i = tid * math.floor(#paths / 2)
end
function request()
  i = i + 1
  if i > #paths then i = 1 end
  return wrk.format("GET", paths[i])
end
LUA
sed -i '/^function setup/d' "$S/walk.lua"
run() { # url listfile -> "req/s p99ms requests non2xx"
  wrk -t1 -c16 -d"${SECS}s" --latency -s "$S/walk.lua" "$1" -- "$2" 0 2>/dev/null |
    awk '/Requests\/sec/ {r=$2} /requests in/ {n=$1} /Non-2xx/ {e=$NF} /^ +99%/ {v=$2; if (v ~ /us$/) p=v/1000; else if (v ~ /ms$/) p=v+0; else if (v ~ /s$/) p=v*1000} END {printf "%d %.1f %d %d", r, p, n, e}'
}
# Both servers must answer the lists with tiles, not errors.
for ds in us-counties world-places; do
  for who in kfm martin; do
    port=$KP; [[ $who == martin ]] && port=$MP
    codes=$(head -200 "$S/$ds.$who.txt" | while read -r p; do curl -s -o /dev/null -w '%{http_code}\n' "http://127.0.0.1:$port$p"; done | sort | uniq -c | tr '\n' ' ')
    echo "$ds $who, the first 200 tiles: $codes"
  done
done
printf '%-13s %-9s %12s %9s %12s %9s %8s %8s\n' dataset mode kfm_tiles/s kfm_p99 martin_t/s mart_p99 tput_x p99_x
for ds in us-counties world-places; do
  for mode in uncached cached; do
    kl=$S/$ds.kfm.txt; ml=$S/$ds.martin.txt
    if [[ $mode == cached ]]; then
      head -100 "$kl" > "$S/k100"; head -100 "$ml" > "$S/m100"; kl=$S/k100; ml=$S/m100
      run "http://127.0.0.1:$KP" "$kl" >/dev/null; run "http://127.0.0.1:$MP" "$ml" >/dev/null
    fi
    read -r kr kp99 kn ke <<<"$(run "http://127.0.0.1:$KP" "$kl")"
    read -r mr mp99 mn me <<<"$(run "http://127.0.0.1:$MP" "$ml")"
    if [[ $mode == uncached ]] && (( kn > $(wc -l < "$kl") || mn > $(wc -l < "$ml") )); then
      echo "($ds: the list wrapped: kfm $kn, martin $mn requests for $(wc -l < "$kl") tiles; later requests were cached)"
    fi
    (( ke + me == 0 )) || echo "($ds $mode: non-2xx answers: kfm $ke, martin $me)"
    printf '%-13s %-9s %12s %9s %12s %9s %8s %8s\n' "$ds" "$mode" "$kr" "${kp99}ms" "$mr" "${mp99}ms" \
      "$(python3 -c "print(f'{$kr/max($mr,1):.2f}x')")" "$(python3 -c "print(f'{$kp99/max($mp99,0.001):.2f}x')")"
  done
done
echo "(uncached: $(wc -l < "$S/us-counties.kfm.txt") distinct tiles per dataset, each asked for once; kfm with policy and audit on)"
