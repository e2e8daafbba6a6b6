#!/usr/bin/env bash
# Copy uPlot (the dashboard's charting library, MIT) from the npm registry into the package:
# its ES module, stylesheet and license. tests/ui/test_assets.py checks the committed copy
# against the registry's tarball with this script.
# Usage: bash scripts/vendor-uplot.sh [DEST]   (default: api/ui/vendor/uplot)
set -euo pipefail
VERSION=1.6.32
cd "$(dirname "$0")/.."
DEST=$(realpath -m "${1:-api/ui/vendor/uplot}")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
(cd "$WORK" && npm pack --silent "uplot@$VERSION" >/dev/null && tar xzf "uplot-$VERSION.tgz")
mkdir -p "$DEST"
cp "$WORK/package/dist/uPlot.esm.js" "$WORK/package/dist/uPlot.min.css" "$WORK/package/LICENSE" "$DEST/"
echo "uplot $VERSION -> $DEST"
