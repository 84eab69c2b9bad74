#!/usr/bin/env bash
# Set up, then run the side-by-side benchmarks; each rewrites its own section of docs/benchmarks.md.
# Extra arguments go to every bench (e.g. --no-write, --rounds 3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# Benches to run, in order: one line each.
BENCHES=(
    bench/kernel_roundtrip.py
    bench/cluster_start.py
    bench/px_roundtrip.py
    bench/client_bench.py
    bench/encryption.py
    bench/ssh_start.py
)

scripts/setup.sh

for bench in "${BENCHES[@]}"; do
    echo "==> bench: $bench"
    .venv/bin/python "$bench" "$@"
done
echo "==> results: docs/benchmarks.md"
