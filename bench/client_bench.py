"""The Python client API, side by side: parallax versus ipyparallel 9, the same code against both.

Both clusters have 2 engines and run at the same time, in one set of temporary PARALLAX_DIR /
IPYTHONDIR / Jupyter folders:

- parallax: `parallax cluster start -n 2 --daemonize --profile bench-client`, then
  `parallax.Client(profile='bench-client')`;
- ipyparallel: `ipyparallel.Cluster(n=2).start_and_connect_sync()`.

Then each workload below runs on both clients with identical calls (views are made once per client),
each once the machine is quiet (see `settle`):
apply latency on one engine and on both, `execute`, 2,000 load-balanced `apply_async`, load-balanced
`map_sync` of a trivial function and of 350 µs of busy work (against a serial loop timed in this
process), push / pull and scatter / gather of 100 MB of float64. Each round runs every workload once
per client, alternating which client goes first, so drift in the machine's load hits both equally;
the table shows medians over rounds. Transferred data is checked for equality outside the timing.
Every workload runs under a deadline (SIGALRM), so a hung call fails the bench instead of blocking it,
and both clusters are stopped at the end, failure or not, with no process of the run left behind.

Prints a table and rewrites the `client-api` section of docs/benchmarks.md (the rest is kept).

    .venv/bin/python bench/client_bench.py [--rounds 3] [--calls 200] [--timeout 300]
        [--only parallax|ipyparallel] [--no-write]
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from bench_report import PARALLAX_BIN, REPO, environment_lines, publish
from kernel_roundtrip import isolated_env

sys.path.insert(0, str(REPO / "tests" / "python"))
from kernel_env import assert_no_processes_left  # noqa: E402

SECTION = "client-api"
SYSTEMS = ("parallax", "ipyparallel")
ENGINES = 2
PROFILE = "bench-client"
TASKS = 2000
MAP_ITEMS = 5000
WORK_SECONDS = 350e-6
TRANSFER_BYTES = 100_000_000
MB = 1e6
START_TIMEOUT = 120.0


# --- functions shipped to the engines --------------------------------------------------------------
# ipyparallel runs a function defined in __main__ with the engine's namespace as its globals, so these
# use nothing from this module: `work` imports `time` itself and takes its duration as a default.


def noop():
    return None


def ident(x):
    return x


def work(x, seconds=WORK_SECONDS):
    """Busy-loops `seconds` of wall time (no sleep: it must occupy the engine's CPU), returns x."""
    import time

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return x


# --- the rows of the table -------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One figure of the table. `lower_is_better` figures (latencies) compare as parallax time /
    ipyparallel time, the others as parallax rate / ipyparallel rate. A target is met when that ratio
    is at most (latency) or at least (rate) `target_ratio`; `target_absolute` is a floor on parallax's
    own figure instead (the map of 350 µs tasks is judged against the serial loop)."""

    key: str
    label: str
    unit: str
    decimals: int
    lower_is_better: bool = False
    target_ratio: float | None = None
    target_absolute: float | None = None

    def target_text(self) -> str:
        if self.target_ratio is not None:
            sign = "≤" if self.lower_is_better else "≥"
            return f"{sign} {self.target_ratio:g}× ipyparallel"
        if self.target_absolute is not None:
            return f"≥ {self.target_absolute:g}× serial"
        return ""

    def verdict(self, parallax: float, ratio: float | None) -> str:
        """Returns "met", "missed", or "" when there is no target or nothing to judge it by."""
        if self.target_ratio is not None and ratio is not None:
            met = ratio <= self.target_ratio if self.lower_is_better else ratio >= self.target_ratio
        elif self.target_absolute is not None:
            met = parallax >= self.target_absolute
        else:
            return ""
        return "met" if met else "missed"


ROWS = (
    Row("apply_one", "`rc[0].apply_sync(noop)`", "ms per call", 3, lower_is_better=True, target_ratio=0.5),
    Row("apply_all", "`rc[:].apply_sync(noop)`", "ms per call", 3, lower_is_better=True, target_ratio=0.5),
    Row("execute", "`rc[:].execute('a=1', block=True)`", "ms per call", 3, lower_is_better=True),
    Row("lb_submit", f"{TASKS:,} × `lview.apply_async(noop)`: submission", "tasks/s", 0),
    Row("lb_total", f"{TASKS:,} × `lview.apply_async(noop)`, then get each", "tasks/s", 0, target_ratio=30),
    Row("map_ident", f"`lview.map_sync(ident, range({MAP_ITEMS}))`", "tasks/s", 0, target_ratio=30),
    Row(
        "map_work",
        f"`lview.map_sync(work, range({MAP_ITEMS}))`, {WORK_SECONDS * 1e6:.0f} µs each",
        "× serial loop",
        2,
        target_absolute=1.6,
    ),
    Row("push", f"`rc[0].push` of {TRANSFER_BYTES / MB:.0f} MB float64", "MB/s", 0, target_ratio=2),
    Row("pull", f"`rc[0].pull` of {TRANSFER_BYTES / MB:.0f} MB float64", "MB/s", 0, target_ratio=2),
    Row("scatter", f"`dview.scatter` of {TRANSFER_BYTES / MB:.0f} MB float64", "MB/s", 0, target_ratio=2),
    Row("gather", f"`dview.gather` of {TRANSFER_BYTES / MB:.0f} MB float64", "MB/s", 0, target_ratio=2),
)


# --- workloads -------------------------------------------------------------------------------------


@dataclass
class Views:
    """One system's client and the views every workload uses."""

    rc: Any
    engine0: Any  # rc[0]
    dview: Any  # rc[:]
    lview: Any  # rc.load_balanced_view()

    @classmethod
    def of(cls, rc: Any) -> Views:
        return cls(rc, rc[0], rc[:], rc.load_balanced_view())


def ms_per_call(call: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls * 1e3


def latency(views: Views, calls: int) -> dict[str, float]:
    return {
        "apply_one": ms_per_call(lambda: views.engine0.apply_sync(noop), calls),
        "apply_all": ms_per_call(lambda: views.dview.apply_sync(noop), calls),
        "execute": ms_per_call(lambda: views.dview.execute("a=1", block=True), calls),
    }


def load_balanced_apply(views: Views, tasks: int) -> dict[str, float]:
    start = time.perf_counter()
    results = [views.lview.apply_async(noop) for _ in range(tasks)]
    submitted = time.perf_counter()
    for ar in results:
        ar.get()
    done = time.perf_counter()
    return {"lb_submit": tasks / (submitted - start), "lb_total": tasks / (done - start)}


def map_ident(views: Views, items: int) -> dict[str, float]:
    start = time.perf_counter()
    out = views.lview.map_sync(ident, range(items))
    elapsed = time.perf_counter() - start
    check(list(out) == list(range(items)), f"map_sync(ident, range({items})) returned other values")
    return {"map_ident": items / elapsed}


def map_work(views: Views, items: int) -> dict[str, float]:
    """Speed-up over the serial loop, timed just before in this process."""
    start = time.perf_counter()
    [work(x) for x in range(items)]
    serial = time.perf_counter() - start
    start = time.perf_counter()
    out = views.lview.map_sync(work, range(items))
    parallel = time.perf_counter() - start
    check(list(out) == list(range(items)), f"map_sync(work, range({items})) returned other values")
    return {"map_work": serial / parallel, "serial_s": serial}


def push_pull(views: Views, arr: np.ndarray) -> dict[str, float]:
    start = time.perf_counter()
    views.engine0.push({"a": arr}, block=True)
    pushed = time.perf_counter()
    pulled = views.engine0.pull("a", block=True)
    done = time.perf_counter()
    check(np.array_equal(pulled, arr), "the pulled array differs from the pushed one")
    return {"push": arr.nbytes / MB / (pushed - start), "pull": arr.nbytes / MB / (done - pushed)}


def scatter_gather(views: Views, arr: np.ndarray) -> dict[str, float]:
    start = time.perf_counter()
    views.dview.scatter("x", arr, block=True)
    scattered = time.perf_counter()
    gathered = views.dview.gather("x", block=True)
    done = time.perf_counter()
    check(np.array_equal(gathered, arr), "the gathered array differs from the scattered one")
    return {"scatter": arr.nbytes / MB / (scattered - start), "gather": arr.nbytes / MB / (done - scattered)}


def busy_seconds(root: str) -> float:
    """CPU seconds used so far by this process and by every process of either cluster (they
    inherit the run's temporary folders in their environment)."""
    own = os.times()
    total = own.user + own.system
    tick = os.sysconf("SC_CLK_TCK")
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            if root.encode() not in Path(f"/proc/{pid}/environ").read_bytes():
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone, or not ours to read
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def settle(root: str, window: float = 0.1, quiet: float = 0.05, limit: float = 10.0) -> None:
    """Wait until this process and both clusters use under `quiet` of a core over `window`
    seconds (at most `limit` seconds): a system still busy after a workload (late output messages
    in its client's thread, its hub's bookkeeping) must not be timed in the next system's figure.
    First collects this process's garbage: both clients share it, and a full collection of one
    client's cyclic garbage (ipyparallel leaves hundreds of thousands of objects) landing in the
    other's workload costs that one 100 ms or more."""
    gc.collect()
    give_up = time.monotonic() + limit
    while time.monotonic() < give_up:
        before = busy_seconds(root)
        time.sleep(window)
        if busy_seconds(root) - before < quiet * window:
            return


def check(ok: bool, what: str) -> None:
    if not ok:
        raise AssertionError(what)


@contextmanager
def deadline(seconds: float, what: str) -> Iterator[None]:
    """Raise TimeoutError in this (the main) thread if the block takes longer than `seconds`: the
    client calls under test (apply_sync, map_sync, ...) have no timeout of their own."""

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"{what} took more than {seconds:g} s; raise --timeout if the machine is busy")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


Workload = tuple[str, Callable[[Views], dict[str, float]]]


def workloads(args: argparse.Namespace, arr: np.ndarray) -> list[Workload]:
    """(name, run) for each workload at full size."""
    runs = [
        ("latency", lambda v: latency(v, args.calls)),
        ("load-balanced apply", lambda v: load_balanced_apply(v, TASKS)),
        ("map ident", lambda v: map_ident(v, MAP_ITEMS)),
        ("map work", lambda v: map_work(v, MAP_ITEMS)),
        ("push/pull", lambda v: push_pull(v, arr)),
        ("scatter/gather", lambda v: scatter_gather(v, arr)),
    ]
    assert [name for name, _ in runs] == WORKLOAD_NAMES
    return runs


WORKLOAD_NAMES = ["latency", "load-balanced apply", "map ident", "map work", "push/pull", "scatter/gather"]


def warm_up(views: Views, arr: np.ndarray, timeout: float) -> None:
    """Every workload once at a small size, untimed: first calls pay for imports and connections."""
    small = arr[: len(arr) // 100]
    with deadline(timeout, "the warm-up"):
        latency(views, 20)
        load_balanced_apply(views, 100)
        map_ident(views, 100)
        map_work(views, 20)
        push_pull(views, small)
        scatter_gather(views, small)


# --- the two systems -------------------------------------------------------------------------------


def start_parallax(cleanup: ExitStack) -> Any:
    """Start the parallax cluster and connect a client; `cleanup` will close and stop them."""
    env = dict(os.environ, PARALLAX_PYTHON=sys.executable)
    run_cli(["cluster", "start", "-n", str(ENGINES), "--daemonize", "--profile", PROFILE], env)
    cleanup.callback(run_cli, ["cluster", "stop", "--profile", PROFILE], env)
    import parallax

    rc = parallax.Client(profile=PROFILE)
    cleanup.callback(rc.close)
    rc.wait_for_engines(ENGINES, timeout=60)
    return rc


def run_cli(args: list[str], env: dict[str, str]) -> None:
    cmd = [str(PARALLAX_BIN), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=START_TIMEOUT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")


def start_ipyparallel(cleanup: ExitStack) -> Any:
    """Start the ipyparallel cluster and connect a client; `cleanup` will close and stop them."""
    import ipyparallel as ipp

    cluster = ipp.Cluster(n=ENGINES, log_level=40)
    cleanup.callback(stop_ipyparallel, cluster)  # before starting: a half-started cluster is stopped too
    with deadline(START_TIMEOUT, "starting the ipyparallel cluster"):
        rc = cluster.start_and_connect_sync()
        cleanup.callback(rc.close)
        rc.wait_for_engines(ENGINES, timeout=60)
    return rc


def stop_ipyparallel(cluster: Any) -> None:
    with deadline(START_TIMEOUT, "stopping the ipyparallel cluster"):
        cluster.stop_cluster_sync()


# --- report ----------------------------------------------------------------------------------------


def figure(values: list[float], decimals: int) -> str:
    if not values:
        return "—"
    spread = f" ({min(values):,.{decimals}f}–{max(values):,.{decimals}f})" if len(values) > 1 else ""
    return f"{statistics.median(values):,.{decimals}f}{spread}"


def render(samples: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> str:
    ran = [s for s in SYSTEMS if s in samples]
    about = (
        f"The same calls through `parallax.Client` and `ipyparallel.Client`, {ENGINES} engines each, both "
        "clusters up at once; views are made once per client (`rc[0]`, `rc[:]`, `rc.load_balanced_view()`). "
        f"Medians (min–max) of {args.rounds} rounds, each running every workload once per client and "
        "alternating which client goes first, after one small warm-up pass; before each workload the bench "
        "collects the process's garbage and waits until both clusters and the process are idle (under 5% "
        "of a core for 0.1 s, at most 10 s), so neither system's trailing work is timed in the other's figure. A latency sample is the mean "
        f"of {args.calls} calls. `map_sync` runs with default arguments; the {WORK_SECONDS * 1e6:.0f} µs "
        f"busy loop is compared with `[work(x) for x in range({MAP_ITEMS})]` timed in the same process just "
        "before. Transferred arrays are checked for equality outside the timing. The ratio is parallax "
        "time / ipyparallel time for latencies (lower is better) and parallax rate / ipyparallel rate for "
        "the others (higher is better). `scripts/bench.sh` refreshes this section."
    )
    lines = [
        "## Python client API",
        "",
        textwrap.fill(about, width=100, break_long_words=False, break_on_hyphens=False),
        "",
        "| workload | unit | ipyparallel | parallax | ratio | target | verdict |",
        "| --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for row in ROWS:
        ipp_values = samples.get("ipyparallel", {}).get(row.key, [])
        px_values = samples.get("parallax", {}).get(row.key, [])
        ratio = verdict = None
        if px_values:
            if ipp_values:
                ratio = statistics.median(px_values) / statistics.median(ipp_values)
            verdict = row.verdict(statistics.median(px_values), ratio)
        ratio_text = "—" if ratio is None else f"{ratio:.2f}×"
        figures = f"{figure(ipp_values, row.decimals)} | {figure(px_values, row.decimals)}"
        lines.append(
            f"| {row.label} | {row.unit} | {figures} | {ratio_text} | {row.target_text()} | {verdict or ''} |"
        )
    serial = {s: statistics.median(samples[s]["serial_s"]) for s in ran if samples[s].get("serial_s")}
    if serial:
        lines += [
            "",
            "The serial loop took (median) " + ", ".join(f"{t:.2f} s beside {s}" for s, t in serial.items()) + ".",
        ]
    if len(ran) < len(SYSTEMS):
        lines += ["", f"Only {ran[0]} ran (`--only {ran[0]}`): no ratios, no verdicts on ratio targets."]
    versions = {name: version(name) for name in ("ipyparallel", "cloudpickle", "numpy")}
    lines += ["", *environment_lines(extra=versions)]
    return "\n".join(lines)


def progress(samples: dict[str, dict[str, list[float]]]) -> str:
    """One line per round: each system's latest figure of every row."""
    return "; ".join(
        f"{system} " + ", ".join(f"{row.key} {values[row.key][-1]:,.{row.decimals}f}" for row in ROWS
                                 if values.get(row.key))
        for system, values in samples.items()
    )


# --- main ------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=200, help="calls per latency sample")
    parser.add_argument("--only", choices=SYSTEMS, help="run one system (for debugging); default: both")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a workload may take")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--workload", action="append", choices=WORKLOAD_NAMES,
                        help="run only this workload (repeatable; for debugging, implies --no-write)")
    args = parser.parse_args()
    if args.workload:
        args.no_write = True
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    systems = [args.only] if args.only else list(SYSTEMS)

    # Every step that starts something registers its undoing; they run in reverse order, each even
    # if an earlier one failed: clients closed, clusters stopped, no process of the run left (any
    # leftover is killed and named), temporary folders removed.
    with ExitStack() as cleanup:
        root = Path(tempfile.mkdtemp(prefix="parallax-bench-"))
        cleanup.callback(shutil.rmtree, root, ignore_errors=True)
        # Temporary JUPYTER_*, PARALLAX_DIR and IPYTHONDIR; every process of either cluster inherits
        # them, which is how the check finds leftovers of both.
        isolated_env(root, install_parallax=False)
        cleanup.callback(assert_no_processes_left, os.environ["PARALLAX_DIR"])
        starters = {"parallax": start_parallax, "ipyparallel": start_ipyparallel}
        views = {s: Views.of(starters[s](cleanup)) for s in systems}

        arr = np.random.default_rng(0).random(TRANSFER_BYTES // 8)
        for system in systems:
            warm_up(views[system], arr, args.timeout)

        samples: dict[str, dict[str, list[float]]] = {s: {} for s in systems}
        for r in range(args.rounds):
            order = systems if r % 2 == 0 else systems[::-1]
            for name, run in workloads(args, arr):
                if args.workload and name not in args.workload:
                    continue
                for system in order:
                    settle(str(root))
                    with deadline(args.timeout, f"{system}: {name}"):
                        figures = run(views[system])
                    for key, value in figures.items():
                        samples[system].setdefault(key, []).append(value)
            print(f"round {r + 1}/{args.rounds}: " + progress(samples), file=sys.stderr, flush=True)

    publish(render(samples, args), SECTION, args.output, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
