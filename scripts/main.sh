#!/usr/bin/env bash
# Set the project up, then execute the demo notebooks unattended on the parallax kernel, the way a
# batch job would. Executed copies land in build/notebooks/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# Notebooks to execute, in order: one line each.
NOTEBOOKS=(
    notebooks/kernel_demo.ipynb
    notebooks/px_magics.ipynb
)

scripts/setup.sh

OUT="$ROOT/build/notebooks"
mkdir -p "$OUT"
for nb in "${NOTEBOOKS[@]}"; do
    echo "==> executing $nb"
    .venv/bin/jupyter nbconvert --to notebook --execute \
        --ExecutePreprocessor.kernel_name=parallax \
        --output-dir "$OUT" "$nb"
    echo "    executed notebook: $OUT/$(basename "$nb")"
done
