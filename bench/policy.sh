#!/usr/bin/env bash
# Policy decision figures (issue #4): decisions/s and p50/p99 of the default
# bundle on 1 and 2 threads, and the ratio to a fresh engine per call (the
# naive anchor), all in one run. Criterion compares the engine strategies.
# Usage: bench/policy.sh   (KFM_BENCH_DECISIONS to change the run length)
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench -p kfm-policy --bench policy -- "$@"
