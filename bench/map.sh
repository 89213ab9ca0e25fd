#!/usr/bin/env bash
# Time to a drawn map in headless Chromium: `node web/tests/map.mjs` (the
# browser test's driver, which also checks what the map shows) against a
# release `kfm serve` on the samples, RUNS times. Each page is opened in a
# fresh browser context (no HTTP or code cache): a first visit every time.
#
#   bench/map.sh [RUNS]
#
# Prints, per page, the milliseconds from the start of navigation to the
# map's first idle frame with the features drawn (and when the map's
# script started, its answers arrived and MapLibre reported `load`), then
# the median and the worst. Goal: < 1000 ms.
#
# Needs node with web/node_modules (cd web && npm ci) and Debian's chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
for tool in node curl python3; do
  command -v "$tool" >/dev/null || { echo "bench/map.sh needs $tool" >&2; exit 2; }
done
[[ -d web/node_modules/playwright-core ]] || { echo "bench/map.sh needs web/node_modules (cd web && npm ci)" >&2; exit 2; }
cargo build --release -p kfm -q
KFM=$PWD/target/release/kfm
S=$(mktemp -d)
PID=
cleanup() { [[ -n "$PID" ]] && kill "$PID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$S"; }
trap cleanup EXIT
(cd "$S" && "$KFM" up --dir ws --no-serve >/dev/null)
R=$("$KFM" --workspace "$S/ws" token create --role researcher --approve ks-sites-synthetic)
ST=$("$KFM" --workspace "$S/ws" token create --role steward)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$KFM" --workspace "$S/ws" serve --listen "127.0.0.1:$PORT" >"$S/serve.log" 2>&1 &
PID=$!
for _ in $(seq 300); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/readyz" && break; sleep 0.1; done
for i in $(seq "$RUNS"); do
  node web/tests/map.mjs "http://127.0.0.1:$PORT" "$R" "$S/shots" "$ST" | tee -a "$S/runs.jsonl"
done
python3 - "$S/runs.jsonl" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
for page in ("anonymous", "researcher", "tiles"):
    ms = sorted(r[page]["ms"] for r in runs)
    print(f"{page:10s} first draw median {statistics.median(ms):6.0f} ms  worst {ms[-1]:6.0f} ms  (goal < 1000)")
PY
