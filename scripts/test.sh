#!/usr/bin/env bash
# Everything CI checks: setup, then formatting, lints, Rust tests and the end-to-end Python suite.
# Every check runs even if an earlier one failed; the exit status is non-zero if any failed.
#
# Environment: PARALLAX_TEST_KERNEL (see tests/python/kernel_env.py), PYTEST_ARGS (extra pytest args).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

scripts/setup.sh

if ! command -v cargo-nextest >/dev/null 2>&1; then
    echo "==> installing cargo-nextest"
    cargo install cargo-nextest --locked
fi

failed=()
check() {
    local name=$1
    shift
    echo "==> $name"
    if "$@"; then
        echo "    ok: $name"
    else
        echo "    FAILED ($?): $name"
        failed+=("$name")
    fi
}

check "cargo fmt" cargo fmt --all --check
check "cargo clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
check "cargo nextest" cargo nextest run --workspace --locked
# -n 2: kernel tests mostly wait on other processes; two workers cut the wall time by a third on
# 2 cores. loadgroup keeps each conformance class (one kernel) on one worker. Exit status 5 (nothing
# collected) is non-zero, so it counts as a failure like any other.
# shellcheck disable=SC2086
check "pytest tests/python" .venv/bin/python -m pytest tests/python -n 2 --dist loadgroup ${PYTEST_ARGS:-}

if ((${#failed[@]})); then
    # What shared memory the machine had, for failures that depend on it.
    echo "==> /dev/shm: $(df -h --output=size,avail /dev/shm 2>/dev/null | tail -n 1 || echo unknown)"
    echo "==> FAILED: ${failed[*]}"
    exit 1
fi
echo "==> all checks passed"
