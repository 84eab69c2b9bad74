#!/usr/bin/env bash
# Set the project up, then execute the demo notebooks unattended on the parallax kernel, the way a
# batch job would. Executed copies (with their figures) land in build/notebooks/.
#
# The notebooks that use the Python client run against a 2-engine cluster this script starts on
# its own profile (`notebooks`, so a cluster of yours on `default` is left alone) and stops at the
# end, whatever happens. px_magics.ipynb starts and stops its own cluster with %cluster.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# Notebooks to execute, in order: one line each. The kernel manages its own cluster in these:
KERNEL_NOTEBOOKS=(
    notebooks/kernel_demo.ipynb
    notebooks/px_magics.ipynb
)
# ... and these connect to the cluster started below (full size):
CLIENT_NOTEBOOKS=(
    notebooks/parallel_computing.ipynb
    notebooks/monte_carlo_pi.ipynb
    notebooks/photoz_cross_validation.ipynb
    notebooks/linear_periods.ipynb
)

scripts/setup.sh

OUT="$ROOT/build/notebooks"
mkdir -p "$OUT"
# Each notebook is copied to $OUT and executed there, so files it writes stay out of the sources.
execute() {
    local copy
    copy="$OUT/$(basename "$1")"
    echo "==> executing $1"
    cp "$1" "$copy"
    .venv/bin/jupyter nbconvert --to notebook --execute --inplace \
        --ExecutePreprocessor.kernel_name=parallax \
        --ExecutePreprocessor.timeout=1800 "$copy"
    echo "    executed notebook: $copy"
}

for nb in "${KERNEL_NOTEBOOKS[@]}"; do
    execute "$nb"
done

export PARALLAX_PROFILE=notebooks
PARALLAX=target/release/parallax
"$PARALLAX" cluster stop --profile "$PARALLAX_PROFILE" >/dev/null 2>&1 || true
echo "==> starting a 2-engine cluster (profile $PARALLAX_PROFILE)"
"$PARALLAX" cluster start -n 2 --daemonize --profile "$PARALLAX_PROFILE"
trap '"$PARALLAX" cluster stop --profile "$PARALLAX_PROFILE"' EXIT
for nb in "${CLIENT_NOTEBOOKS[@]}"; do
    execute "$nb"
done
