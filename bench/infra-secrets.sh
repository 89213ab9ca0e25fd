#!/usr/bin/env bash
# Secret-scanning throughput of `kfm infra check`, against detect-secrets
# (PyPI) and ripgrep searching the same pattern set, on the same generated
# text, in one run.
#
# The tree: SIZE_MB of mixed text (env files, shell, Python, prose) in 1 MB
# files, about one line in a thousand carrying a secret of a kind all three
# look for. No YAML: kfm also parses every YAML file (fail closed), which is a
# different job from secret scanning; YAML_MB more of YAML (default 10) are
# timed separately to show that cost. Each tool is run RUNS times after a warm-up (page cache warm); the
# median wall time is reported.
#   kfm infra check   built-in rules, keyword prefilter, entropy; JSON to /dev/null
#   detect-secrets    `detect-secrets scan --all-files` (its default plugins)
#   ripgrep           `rg -c -f patterns` with kfm's own regexes (the floor for
#                     running that pattern set over the bytes)
# ripgrep is installed with `cargo install ripgrep` and detect-secrets with pip
# if missing.
#
# Usage: bench/infra-secrets.sh [SIZE_MB] [RUNS]     (defaults: 50 3)
# Goal (issue #7): >= 50x faster than detect-secrets, within 3x of ripgrep.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${1:-50}
RUNS=${2:-3}
YAML_MB=${YAML_MB:-10}
command -v rg >/dev/null || cargo install --locked ripgrep --version 14.1.1 >&2
command -v detect-secrets >/dev/null || python3 -m pip install --quiet detect-secrets==1.5.0 >&2
cargo build --release -p kfm -q
KFM=$PWD/target/release/kfm
SCRATCH=$PWD/target/bench-infra
rm -rf "$SCRATCH"; mkdir -p "$SCRATCH/tree"
trap 'rm -rf "$SCRATCH"' EXIT

YAML_MB=$YAML_MB python3 - "$SCRATCH/tree" "$SIZE_MB" <<'PY'
import random, sys, os
root, mb = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
words = "kfm dataset policy ledger gate promote catalog stac prov dcat county place kansas river prairie sensor value config".split()
def secret():
    return rng.choice([
        "AKIA%s" % "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16)),
        "ghp_%s" % "".join(rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789") for _ in range(36)),
        "-----BEGIN RSA PRIVATE KEY-----",
    ])
def text(n):
    return " ".join(rng.choice(words) for _ in range(n))
def line(yaml, n):
    # YAML files stay valid YAML (the gate fails closed on anything else).
    if rng.random() < 0.001:
        return ('k%d: "%s"' % (n, secret())) if yaml else ("value = %s" % secret())
    if yaml:
        return "k%d: %s" % (n, text(rng.randint(1, 8)))
    return text(rng.randint(4, 14)) if rng.random() < 0.5 else "%s = %s(%s)" % (rng.choice(words), rng.choice(words), text(3))
yaml_mb = int(os.environ.get("YAML_MB", "10"))
for i in range(mb + yaml_mb):
    if i >= mb:
        root2 = root + "-yaml"
        os.makedirs(root2, exist_ok=True)
        with open(os.path.join(root2, "f%04d.yaml" % i), "w") as f:
            n = 0; k = 0
            while n < 1 << 20:
                l = line(True, k) + "\n"; f.write(l); n += len(l); k += 1
        continue
    d = os.path.join(root, "d%02d" % (i % 20))
    os.makedirs(d, exist_ok=True)
    ext = [".env", ".sh", ".py", ".txt"][i % 4]
    with open(os.path.join(d, "f%04d%s" % (i, ext)), "w") as f:
        n = 0; k = 0
        while n < 1 << 20:
            l = line(ext == ".yaml", k) + "\n"; f.write(l); n += len(l); k += 1
PY
"$KFM" infra check /dev/null --format json | python3 -c '
import json, sys
for r in json.load(sys.stdin)["rules"]:
    if r.get("pattern"): print(r["pattern"])' > "$SCRATCH/patterns"

set +e; "$KFM" infra check "$SCRATCH/tree" >/dev/null 2>"$SCRATCH/err"; rc=$?; set -e
if [[ $rc == 2 ]]; then echo "kfm infra check could not evaluate the tree:" >&2; cat "$SCRATCH/err" >&2; exit 1; fi

run_timed() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1 || true; e=$(date +%s.%N); echo "$e - $s" | bc -l; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
measure() { local name=$1; shift; "$@" >/dev/null 2>&1 || true
  local t=(); for _ in $(seq "$RUNS"); do t+=("$(run_timed "$@")"); done
  printf '%s %s\n' "$name" "$(printf '%s\n' "${t[@]}" | median)"; }

results=$( {
  measure kfm "$KFM" infra check "$SCRATCH/tree" --format json
  measure ripgrep rg -c -f "$SCRATCH/patterns" "$SCRATCH/tree"
  measure detect-secrets detect-secrets scan --all-files "$SCRATCH/tree"
  measure kfm-yaml "$KFM" infra check "$SCRATCH/tree-yaml" --format json
} )
kfm_found=$("$KFM" infra check "$SCRATCH/tree" --format json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["findings"]))' || true)
echo
echo "tree: ${SIZE_MB} MB of mixed text; median of ${RUNS} runs; kfm findings: ${kfm_found}"
printf '%-15s %9s %9s\n' tool wall_s MB_per_s
while read -r name w; do
  mb=$SIZE_MB; [[ $name == kfm-yaml ]] && mb=$YAML_MB
  printf '%-15s %9.3f %9.1f\n' "$name" "$w" "$(echo "$mb / $w" | bc -l)"
done <<< "$results"
echo "(kfm-yaml: ${YAML_MB} MB of YAML, every file parsed as well as scanned)"
k=$(awk '$1=="kfm"{print $2}' <<< "$results"); r=$(awk '$1=="ripgrep"{print $2}' <<< "$results"); d=$(awk '$1=="detect-secrets"{print $2}' <<< "$results")
printf 'detect-secrets / kfm = %.0fx   (goal >= 50x)\n' "$(echo "$d / $k" | bc -l)"
printf 'kfm / ripgrep        = %.2fx  (goal <= 3x)\n' "$(echo "$k / $r" | bc -l)"
