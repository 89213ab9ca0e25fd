#!/usr/bin/env bash
# How long judging a damaged ledger journal takes, against an intact one
# (issue #19: "recovery in linear time"; goal: within 2x of intact).
#
# One workspace whose last entries live only in the journal (a writer
# killed before its tiles were written), in four copies:
#   intact     the journal as the writer left it
#   damaged    one byte flipped in the last record (acknowledged, so the
#              judgement is a refusal naming it)
#   middle     one byte flipped in a record in the middle (an intact one
#              follows: refused as damage)
#   random     the journal replaced by 64 MiB of random bytes
# and for each, the median of RUNS runs of
#   verify     kfm ledger verify
#   open       kfm ledger append (a writer opening the ledger)
# printing seconds and the ratio to intact. Damaged copies exit 1 (that is
# the judgement being timed); intact ones exit 0.
#
# Usage: bench/journal.sh [ENTRIES] [RUNS]   (defaults 200000, 5)
set -euo pipefail
cd "$(dirname "$0")/.."
ENTRIES=${1:-200000}
RUNS=${2:-5}
cargo build --release -p kfm -q
KFM=$PWD/target/release/kfm
S=$PWD/target/bench-journal
rm -rf "$S"; mkdir -p "$S"

kfm() { "$KFM" --workspace "$1" "${@:2}"; }

# --- a busy journal -----------------------------------------------------
(cd "$S" && "$KFM" init base >/dev/null)
B=$S/base
seq 1 20000 | sed 's/^/{"warmup":/; s/$/}/' | kfm "$B" ledger append --lines >/dev/null
python3 - "$KFM" "$B" "$ENTRIES" <<'PY'
import os, subprocess, sys, threading
kfm, ws, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
env = dict(os.environ, KFM_LEDGER_TILE_INTERVAL_MS="3600000")
p = subprocess.Popen([kfm, "--workspace", ws, "--format", "json", "ledger", "append", "--lines"],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
def feed():
    for i in range(n):
        p.stdin.write(b'{"event":"access","n":%d,"route":"/collections/{id}/items"}\n' % i)
    p.stdin.flush()
t = threading.Thread(target=feed); t.start()
for _ in range(n):
    if not p.stdout.readline():
        sys.exit("the writer stopped early")
p.kill(); p.wait(); t.join()
PY
J=store/.kfm-journal/audit.journal
ls -l "$B/$J" | awk '{print "journal file: " $5 " bytes"}'

# Where the journal's records are (writes start at 4 KiB boundaries).
python3 - "$B/$J" > "$S/records.txt" <<'PY'
import struct, sys
b = open(sys.argv[1], "rb").read()
pos, recs = 0, []
while pos + 4 <= len(b):
    n = struct.unpack(">I", b[pos:pos+4])[0]
    if n == 0:
        nxt = (pos + 4 + 4095) // 4096 * 4096
        if nxt + 52 > len(b) or struct.unpack(">I", b[nxt:nxt+4])[0] == 0:
            break
        old = struct.unpack(">Q", b[nxt+36:nxt+44])[0]
        if recs and old < recs[-1][1]:
            break
        pos = nxt
        continue
    old, cnt = struct.unpack(">QI", b[pos+36:pos+48])
    recs.append((pos, old + cnt))
    pos += 36 + n
print(len(recs), recs[len(recs)//2][0], recs[-1][0])
PY
read -r NREC MID LAST < "$S/records.txt"
echo "records in the journal: $NREC (middle one at byte $MID, last at byte $LAST)"

for c in intact damaged middle random; do cp -a "$B" "$S/$c"; done
flip() { python3 -c "import sys; p,o=sys.argv[1],int(sys.argv[2]); f=open(p,'r+b'); f.seek(o); b=f.read(1); f.seek(o); f.write(bytes([b[0]^4]))" "$1" "$2"; }
flip "$S/damaged/$J" $((LAST + 45))
flip "$S/middle/$J" $((MID + 45))
head -c $((64 << 20)) /dev/urandom > "$S/random/$J"

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
timed() { # runs "$@" RUNS times (on a fresh copy each), prints the median seconds
  local ws=$1; shift
  for _ in $(seq "$RUNS"); do
    rm -rf "$ws.run"; cp -a "$ws" "$ws.run"
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    local t0 t1; t0=$(date +%s%N)
    "$@" "$ws.run" >/dev/null 2>&1 || true
    t1=$(date +%s%N)
    echo "scale=4; ($t1 - $t0) / 1000000000" | bc
  done | median
}
do_verify() { kfm "$1" ledger verify; }
do_open() { echo '{"bench":"open"}' | kfm "$1" ledger append; }

printf '\n%-8s %12s %8s %12s %8s\n' case verify_s ratio open_s ratio
declare -A V O
for c in intact damaged middle random; do
  V[$c]=$(timed "$S/$c" do_verify)
  O[$c]=$(timed "$S/$c" do_open)
done
for c in intact damaged middle random; do
  printf '%-8s %12s %8s %12s %8s\n' "$c" "${V[$c]}" "$(echo "scale=2; ${V[$c]} / ${V[intact]}" | bc)x" \
    "${O[$c]}" "$(echo "scale=2; ${O[$c]} / ${O[intact]}" | bc)x"
done
echo
echo "what each judged (the damaged copies must be refused, naming the cause):"
for c in damaged middle random; do
  rm -rf "$S/$c.run"; cp -a "$S/$c" "$S/$c.run"
  printf '  %-8s ' "$c"; kfm "$S/$c.run" ledger verify 2>&1 | head -c 300; echo
done
