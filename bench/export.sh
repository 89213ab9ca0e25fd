#!/usr/bin/env bash
# CSV export of wide datasets through the governed API, against writing the
# same CSV with Python's csv module from the same features, in one run
# (issue #19: "exports stream in time linear in their size").
#
# For each KEYS (distinct property names), a GeoJSON dataset of 10 features
# holding KEYS/10 properties each (so the CSV has KEYS columns and 10 rows)
# is promoted and served; `curl` takes /collections/wide/export?format=csv
# (streamed, audited durably before the first byte); the anchor reads the
# same features (the GeoJSON export) and writes the CSV with csv.DictWriter.
# Prints both times, bytes, and time per million cells (linear: about flat
# across sizes).
#
# Usage: bench/export.sh [KEYS...]   (default: 10000 100000 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=("$@"); [[ ${#KEYS[@]} -gt 0 ]] || KEYS=(10000 100000 1000000)
for tool in curl python3; do
  command -v "$tool" >/dev/null || { echo "bench/export.sh needs $tool" >&2; exit 2; }
done
cargo build --release -p kfm -q
KFM=$PWD/target/release/kfm
S=$PWD/target/bench-export
rm -rf "$S"; mkdir -p "$S"
PID=
trap '[[ -n $PID ]] && kill $PID 2>/dev/null; rm -rf "$S"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
now() { date +%s.%N; }

printf '%-9s %10s %12s %10s %12s %10s %16s\n' keys kfm_s kfm_bytes python_s python_bytes ratio kfm_s_per_Mcell
for k in "${KEYS[@]}"; do
  ws=$S/ws-$k
  "$KFM" init "$ws" >/dev/null
  python3 - "$ws/datasets/wide.geojson" "$k" <<'PY'
import json, sys
out, keys = sys.argv[1], int(sys.argv[2])
per = keys // 10
feats = []
for i in range(10):
    props = {f"k{i * per + j:07d}": f"v{j}" for j in range(per)}
    feats.append({"type": "Feature", "id": i + 1, "properties": props,
                  "geometry": {"type": "Point", "coordinates": [-98 + i * 0.1, 38.5]}})
json.dump({"type": "FeatureCollection", "features": feats}, open(out, "w"))
PY
  cat > "$ws/datasets/wide.yaml" <<'YAML'
id: wide
title: A wide dataset
description: Ten points with many distinct property names (generated for bench/export.sh).
publisher: {name: KFM, url: "https://kfm.example.org/"}
contact: {name: KFM data stewards, email: stewards@kfm.example.org}
source: {uri: wide.geojson, format: geojson}
license: {spdx: CC0-1.0, rights_holder: KFM}
sensitivity: {policy_label: public}
qa: {min_features: 10}
YAML
  "$KFM" --workspace "$ws" ingest "$ws/datasets/wide.yaml" >/dev/null
  "$KFM" --workspace "$ws" promote wide >/dev/null
  "$KFM" --workspace "$ws" serve --listen "127.0.0.1:$port" >"$S/serve.log" 2>&1 &
  PID=$!
  for _ in $(seq 300); do curl -sf -o /dev/null "http://127.0.0.1:$port/readyz" && break; sleep 0.1; done
  t0=$(now)
  curl -sf -o "$S/out.csv" "http://127.0.0.1:$port/collections/wide/export?format=csv"
  t1=$(now)
  curl -sf -o "$S/out.geojson" "http://127.0.0.1:$port/collections/wide/export"
  kill $PID; wait $PID 2>/dev/null || true; PID=
  t2=$(now)
  python3 - "$S/out.geojson" "$S/py.csv" <<'PY'
import csv, json, sys
fc = json.load(open(sys.argv[1]))
fields, seen = [], set()
for f in fc["features"]:
    for key in f["properties"]:
        if key not in seen:
            seen.add(key); fields.append(key)
with open(sys.argv[2], "w", newline="") as out:
    w = csv.DictWriter(out, ["id", "longitude", "latitude", "geometry"] + fields)
    w.writeheader()
    for f in fc["features"]:
        c = f["geometry"]["coordinates"]
        row = {"id": f["id"], "longitude": c[0], "latitude": c[1]}
        row.update(f["properties"])
        w.writerow(row)
PY
  t3=$(now)
  awk -v k="$k" -v a="$t0" -v b="$t1" -v c="$t2" -v d="$t3" -v kb="$(stat -c %s "$S/out.csv")" -v pb="$(stat -c %s "$S/py.csv")" 'BEGIN {
    kfm = b - a; py = d - c; cells = 10 * (k + 4) / 1e6;
    printf "%-9d %10.3f %12d %10.3f %12d %9.2fx %16.3f\n", k, kfm, kb, py, pb, py / kfm, kfm / cells
  }'
  rm -rf "$ws"
done
echo
echo "kfm: streamed through policy, obligations (attribution lines) and a durable audit record; python: csv.DictWriter over the same features"
