#!/usr/bin/env bash
# Set the project up, then execute the demo notebooks unattended on the parallax kernel, the way a
# batch job would. Executed copies (with their figures) land in build/notebooks/.
#
# The notebooks that use the Python client connect to the `default` profile (the lecture names
# it): this script starts a 2-engine cluster there and stops it at the end, whatever happens; if
# one of yours is already running there, they use it and it is left running. px_magics.ipynb
# starts and stops its own cluster with %cluster first.
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

# The engines' kernels run the venv's Python (ipykernel, numpy, the parallax package), as the
# kernelspec's own cluster does.
export PARALLAX_PYTHON="$ROOT/.venv/bin/python"
PARALLAX=target/release/parallax
CLIENT_FILE="${PARALLAX_DIR:-$HOME/.parallax}/profile_default/security/controller-client.json"
echo "==> starting a 2-engine cluster (profile default)"
if "$PARALLAX" cluster start -n 2 --daemonize; then
    trap '"$PARALLAX" cluster stop' EXIT
elif [[ -f $CLIENT_FILE ]]; then
    echo "    a cluster is already running on profile default: using it (and leaving it running)"
else
    exit 1
fi
for nb in "${CLIENT_NOTEBOOKS[@]}"; do
    execute "$nb"
done
