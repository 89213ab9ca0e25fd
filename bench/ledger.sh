#!/usr/bin/env bash
# Ledger figures (issue #3), ours and the anchor in the same run:
#   durable appends/s from 64 concurrent appenders vs SQLite (WAL, FULL),
#   verify over 1,000,000 entries, inclusion-proof p50/p99.
# Usage: bench/ledger.sh   (KFM_BENCH_ENTRIES, KFM_BENCH_SECONDS, KFM_BENCH_ROUNDS to change sizes)
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench -p kfm-ledger --bench ledger
