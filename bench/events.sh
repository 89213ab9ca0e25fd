#!/usr/bin/env bash
# The distributed write path (NATS JetStream), against the broker's own
# ceiling and against the embedded path, in one run on this machine's NATS.
#
#   1. durable appends/s through JetStream, 64 producers, 512-byte entries,
#      against a raw async-nats publish loop on a stream declared the same
#      way (the ceiling), and the sequencer's integration rate
#      (crates/kfm-events/examples/events_bench.rs)
#   2. GET /collections/ks-places/items?limit=100 with wrk: kfm serve on the
#      embedded ledger, then on the event backbone (a sequencer running),
#      with the CPU seconds each process used during the run (kfm serve,
#      the sequencer, nats-server), per request: on one machine the event
#      path's broker and sequencer share the cores with the API
#   3. failover: SIGKILL of the active sequencer under load, 20 rounds, time
#      until the standby reports itself active and integrating (the CLI test
#      killing_the_active_sequencer_loses_and_duplicates_nothing, which also
#      checks that nothing was lost or duplicated)
#
# Usage: bench/events.sh [ENTRIES] [SECONDS]   (defaults 200000, 10)
# Goals (platform-events issue): kfm >= 0.5x the ceiling; API on events
# >= 0.8x embedded; failover max <= 5 s.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200000}
SECS=${2:-10}
URL=${KFM_BENCH_NATS_URL:-nats://127.0.0.1:4222}
for tool in wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "bench/events.sh needs $tool (apt-get install wrk curl)" >&2; exit 2; }
done

echo "== 1. write path ($N entries)"
cargo run --release -q -p kfm-events --example events_bench -- "$N"

echo
echo "== 2. the API, embedded vs events (${SECS}s each, wrk -t2 -c32)"
cargo build --release -q -p kfm
KFM=$PWD/target/release/kfm
S=$PWD/target/bench-events
rm -rf "$S"; mkdir -p "$S"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 200); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer from $1" >&2; exit 2; }
(cd "$S" && "$KFM" up --dir ws --no-serve >/dev/null)
W=$S/ws
rps() { wrk -t2 -c32 -d"${SECS}s" --latency "$1" | awk '/Requests\/sec/ {r=$2} /^ +99%/ {p=$2} END {print r " req/s p99=" p}'; }
# CPU seconds (user + system) a process has used so far.
cpu() { awk '{printf "%.2f", ($14 + $15) / 100}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# Microseconds of CPU per request: used since $2, over $3 requests/s.
per_req() { python3 -c "import sys; print(f'{(float(sys.argv[1]) - float(sys.argv[2])) * 1e6 / (float(sys.argv[3]) * $SECS):.0f}')" "$(cpu "$1")" "$2" "$3"; }
NATS_PID=$(pgrep -x nats-server | head -1 || true)

P=$(free_port)
"$KFM" --workspace "$W" serve --listen "127.0.0.1:$P" > "$S/embedded.log" 2>&1 &
PID=$!; PIDS+=("$PID")
wait_http "http://127.0.0.1:$P/readyz"
C0=$(cpu "$PID")
EMB=$(rps "http://127.0.0.1:$P/collections/ks-places/items?limit=100")
EMB_CPU=$(per_req "$PID" "$C0" "${EMB%% *}")
kill -TERM "$PID"; wait "$PID" || true
echo "embedded: $EMB  (CPU per request: kfm serve ${EMB_CPU} us)"

PREFIX="bench$(date +%s)"
export KFM_EVENTS_URL=$URL KFM_EVENTS_PREFIX=$PREFIX
"$KFM" --workspace "$W" events ensure >/dev/null
"$KFM" --workspace "$W" ledger sequencer > "$S/sequencer.log" 2>&1 &
SPID=$!; PIDS+=("$SPID")
P=$(free_port)
"$KFM" --workspace "$W" serve --listen "127.0.0.1:$P" > "$S/events.log" 2>&1 &
PID=$!; PIDS+=("$PID")
wait_http "http://127.0.0.1:$P/readyz"
C0=$(cpu "$PID"); S0=$(cpu "$SPID"); N0=$([ -n "$NATS_PID" ] && cpu "$NATS_PID" || echo 0)
EVT=$(rps "http://127.0.0.1:$P/collections/ks-places/items?limit=100")
R=${EVT%% *}
EVT_CPU="kfm serve $(per_req "$PID" "$C0" "$R") us, sequencer $(per_req "$SPID" "$S0" "$R") us"
[ -n "$NATS_PID" ] && EVT_CPU="$EVT_CPU, nats-server $(per_req "$NATS_PID" "$N0" "$R") us"
kill -TERM "$PID"; wait "$PID" || true
sleep 2
kill -TERM "$SPID"; wait "$SPID" || true
echo "events:   $EVT  (CPU per request: $EVT_CPU)"
python3 - "$EMB" "$EVT" <<'PY'
import sys
num = lambda t: float(t.split()[0])
e = num(sys.argv[1]); v = num(sys.argv[2])
print(f"ratio events/embedded: {v/e:.2f}x")
PY
"$KFM" --workspace "$W" ledger verify | tail -1
unset KFM_EVENTS_URL KFM_EVENTS_PREFIX

echo
echo "== 3. failover (20 rounds of SIGKILL under load)"
KFM_TEST_SEQUENCER_ROUNDS=20 cargo test -q -p kfm --test events_cli killing_the_active_sequencer -- --nocapture 2>&1 \
  | grep -E "takeovers|test result"
