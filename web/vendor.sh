#!/usr/bin/env bash
# Copies the MapLibre GL JS build KFM bundles into its binary from the npm
# package pinned in package-lock.json, and records the files' SHA-256 (a
# unit test in kfm-api checks the bundled bytes against SHA256SUMS).
#
# Run after changing maplibre-gl's version in package.json:
#   cd web && npm install --package-lock-only && ./vendor.sh
# MapLibre GL JS is BSD-3-Clause; its LICENSE.txt is copied beside it.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --ignore-scripts --no-audit --no-fund >/dev/null
out=../crates/kfm-api/assets/maplibre-gl
mkdir -p "${out}"
for f in maplibre-gl-csp.js maplibre-gl-csp-worker.js maplibre-gl.css; do
  cp "node_modules/maplibre-gl/dist/${f}" "${out}/${f}"
done
cp node_modules/maplibre-gl/LICENSE.txt "${out}/LICENSE.txt"
(cd "${out}" && sha256sum maplibre-gl-csp.js maplibre-gl-csp-worker.js maplibre-gl.css > SHA256SUMS)
echo "vendored maplibre-gl $(node -p 'require("./node_modules/maplibre-gl/package.json").version') into ${out}"
