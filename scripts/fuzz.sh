#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets/) on stable Rust, one after the other, then
# minimises each corpus. Not run by CI: CI runs the committed corpora through the same checks in
# `cargo nextest run --workspace` (the `fuzzing` modules of wire, magics and controller).
#
# Usage: scripts/fuzz.sh [TARGET ...]      (default: all six)
# Environment: RUNS (inputs per target, default 10000000), MAX_TIME (seconds per target, a safety
# net, default 3600), CARGO_TARGET_DIR (as for any cargo command). Crashes are left in
# fuzz/artifacts/TARGET/; each log's last lines give the `#N DONE` count and exec/s recorded in
# docs/benchmarks.md ("Fuzzing").
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT/fuzz"

RUNS=${RUNS:-10000000}
MAX_TIME=${MAX_TIME:-3600}
TARGETS=("$@")
if ((${#TARGETS[@]} == 0)); then
    TARGETS=(wire_decode pack_decode magics targets db_query connection_file)
fi

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# -s none: no sanitizer, so stable Rust builds it; -a: debug assertions and overflow checks on.
FLAGS=(-s none -a)
LOGS="$ROOT/fuzz/logs"
mkdir -p "$LOGS"

failed=()
for target in "${TARGETS[@]}"; do
    echo "==> fuzz $target: $RUNS inputs"
    if nice -n 15 cargo fuzz run "${FLAGS[@]}" "$target" -- \
        -runs="$RUNS" -max_total_time="$MAX_TIME" -print_final_stats=1 >"$LOGS/$target.log" 2>&1; then
        grep -E '^#[0-9]+[[:space:]]+DONE' "$LOGS/$target.log" | tail -n 1
        echo "==> minimise $target"
        # Set cover over edges alone (no hit counts): a few hundred files per target.
        nice -n 15 cargo fuzz cmin "${FLAGS[@]}" "$target" -- -set_cover_merge=1 -use_counters=0 \
            >"$LOGS/$target-cmin.log" 2>&1
        echo "    corpus: $(find "corpus/$target" -type f | wc -l) files," \
            "$(find "corpus/$target" -type f -printf "%s\n" | awk "{s += \$1} END {print s}") bytes"
    else
        echo "    FAILED: see $LOGS/$target.log and fuzz/artifacts/$target/"
        failed+=("$target")
    fi
done

# Minimising renames every file after its hash: write the named seeds again (fuzz/seed.py).
if [[ -x "$ROOT/.venv/bin/python" ]]; then
    "$ROOT/.venv/bin/python" seed.py
fi

if ((${#failed[@]})); then
    echo "==> FAILED: ${failed[*]}"
    exit 1
fi
echo "==> all targets ran $RUNS inputs without a failure"
