"""What encryption costs: one Parallax cluster with plain links beside one with CURVE (`--curve`).

A controller that listens beyond loopback encrypts its links (CurveZMQ); on loopback it does not.
This bench starts two 2-engine clusters on this machine at once, one plain and one with `--curve`
(the same links a cross-host cluster has), and times on each, alternating which goes first:

- `apply_sync` latency on one engine (mean of `--calls` calls);
- a load-balanced `map_sync` of 2,000 trivial tasks;
- 100 MB (a float64 array) sent through the controller by a load-balanced `apply_sync` that returns
  its size (load-balanced requests never use shared memory, so every byte crosses two links each
  way it travels: client → controller → engine).

Medians (min–max) of `--rounds` rounds. Rewrites the `encryption` section of docs/benchmarks.md.

    .venv/bin/python bench/encryption.py [--rounds 3] [--calls 200] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from bench_report import PARALLAX_BIN, REPO, environment_lines, publish

ENGINES = 2
MAP_TASKS = 2000
TRANSFER_BYTES = 100_000_000
SYSTEMS = {"plain": [], "CURVE": ["--curve"]}


def cli(args: list[str]) -> None:
    proc = subprocess.run([str(PARALLAX_BIN), *args], capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"parallax {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")


def start(name: str, extra: list[str], cleanup: ExitStack) -> Any:
    import parallax

    profile = f"bench-{name.lower()}"
    cleanup.callback(cli, ["cluster", "stop", "--profile", profile])
    cli(["cluster", "start", "-n", str(ENGINES), "--daemonize", "--profile", profile, *extra])
    rc = parallax.Client(profile=profile)
    cleanup.callback(rc.close)
    rc.wait_for_engines(ENGINES, timeout=60)
    assert rc.encrypted == bool(extra), f"{name}: encrypted is {rc.encrypted}"
    return rc


def measure(rc: Any, arr: np.ndarray, calls: int) -> dict[str, float]:
    one, balanced = rc[0], rc.load_balanced_view()
    started = time.perf_counter()
    for _ in range(calls):
        one.apply_sync(int)
    latency = (time.perf_counter() - started) / calls
    started = time.perf_counter()
    balanced.map_sync(int, range(MAP_TASKS))
    mapped = time.perf_counter() - started
    started = time.perf_counter()
    size = balanced.apply_sync(lambda a: a.nbytes, arr)
    moved = time.perf_counter() - started
    assert size == arr.nbytes
    return {"apply_ms": latency * 1e3, "map_s": mapped, "transfer_mb_s": arr.nbytes / moved / 1e6}


ROWS = [
    ("apply_ms", "`apply_sync` latency, one engine", "ms", 3),
    ("map_s", f"load-balanced `map_sync`, {MAP_TASKS:,} tasks", "s", 3),
    ("transfer_mb_s", "100 MB through the controller (load-balanced apply)", "MB/s", 0),
]


def figure(values: list[float], decimals: int) -> str:
    spread = f" ({min(values):,.{decimals}f}–{max(values):,.{decimals}f})" if len(values) > 1 else ""
    return f"{statistics.median(values):,.{decimals}f}{spread}"


def render(samples: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> str:
    about = (
        f"Two {ENGINES}-engine Parallax clusters on this machine at once, one with plain links (as on "
        "loopback) and one with `--curve` (CurveZMQ on every link, as when the controller listens beyond "
        f"loopback). Medians (min–max) of {args.rounds} rounds, alternating which cluster goes first; a "
        f"latency sample is the mean of {args.calls} calls. The ratio is CURVE / plain. "
        "`bench/encryption.py` refreshes this section."
    )
    lines = [
        "## Encryption (CURVE) cost",
        "",
        textwrap.fill(about, width=100, break_long_words=False, break_on_hyphens=False),
        "",
        "| workload | unit | plain | CURVE | ratio |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for key, label, unit, decimals in ROWS:
        plain, curve = samples["plain"][key], samples["CURVE"][key]
        ratio = statistics.median(curve) / statistics.median(plain)
        lines.append(f"| {label} | {unit} | {figure(plain, decimals)} | {figure(curve, decimals)} | {ratio:.2f}× |")
    lines += ["", *environment_lines()]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    with ExitStack() as cleanup:
        root = Path(tempfile.mkdtemp(prefix="parallax-bench-"))
        cleanup.callback(shutil.rmtree, root, ignore_errors=True)
        os.environ["PARALLAX_DIR"] = str(root)
        os.environ["PARALLAX_PYTHON"] = sys.executable
        clients = {name: start(name, extra, cleanup) for name, extra in SYSTEMS.items()}
        arr = np.random.default_rng(0).random(TRANSFER_BYTES // 8)
        for rc in clients.values():
            measure(rc, arr[: len(arr) // 100], 20)  # warm-up
        samples: dict[str, dict[str, list[float]]] = {name: {} for name in clients}
        for r in range(args.rounds):
            order = list(clients) if r % 2 == 0 else list(clients)[::-1]
            for name in order:
                for key, value in measure(clients[name], arr, args.calls).items():
                    samples[name].setdefault(key, []).append(value)
        publish(render(samples, args), "encryption", REPO / "docs" / "benchmarks.md", write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
