"""Transport, side by side: the same parallax program built on zmq.rs and on libzmq, in one run.

The `net` crate holds every ZeroMQ socket of the Rust processes (the parallax kernel's front-end
channels and its link to its local ipykernel, the controller's client and engine ROUTERs, the engine
process's link to the controller). Two builds of the same program differ only there: BEFORE
(`--before`, the pure-Rust `zeromq` crate, "zmq.rs") and AFTER (`--after`, the `zmq` crate over
libzmq). The Python side (the `parallax` client and the engine support inside the engines' kernels,
both over pyzmq) is the same for both.

Each build runs as `<its temporary folder>/bin/parallax` (a hard link or copy: `cluster stop` signals
only processes whose argv[0] ends in `parallax`, see `stage`) and gets its own temporary JUPYTER_* /
IPYTHONDIR / PARALLAX_DIR folders, the parallax kernelspec installed from that binary, a 2-engine
cluster (`<bin> cluster start -n 2 --daemonize --profile bench-transport`, with PARALLAX_BIN set to
that binary), a parallax kernel on that cluster (jupyter_client) and a `parallax.Client` on it. Both
sides are up at once; then, for each round, every workload runs once per side, alternating which
side goes first (A B, B A, ...), so drift in the machine's load hits both; before each one the bench
waits until both sides are idle (`settle`). After the last round, the RSS of each main cluster's
controller is read too.

Workloads (after one small untimed warm-up pass of each):
- relay: `execute_request('pass')` through the parallax kernel until its reply and its idle status
  have arrived (the kernel relays to its local ipykernel); per-call samples.
- `%px pass` on the 2 engines through the parallax kernel, the same way; per-call samples.
- `rc[0].apply_sync(noop)`: per-call samples; and 2,000 load-balanced `lview.apply_async(noop)`,
  then get each: tasks/s.
- `rc[0].push` / `rc[0].pull` of 100 MB of float64, by the path the client takes by default (on this
  host: shared memory between client and engine, so the 100 MB do not cross the sockets), and again
  with the client's shared memory turned off (`rc._shm_offer = None`), so they travel as frames
  through the controller: MB/s. The pulled array is checked for equality outside the timing.
- 1,000 peers, on a fresh cluster of the build started for it each round and stopped after (so its
  controller's memory is not that left by rounds of 100 MB transfers, and a controller that does
  not survive costs no other workload its figures), with a Client connected: 1,000 pyzmq DEALER
  sockets connect to the controller's client ROUTER (url and key from the profile's
  controller-client.json), each sends one signed `queue_request`; the figure is the time from the
  first connect until all 1,000 `queue_reply`s arrived. Then the controller must still answer the
  Client (`rc.queue_status()` and `rc[0].apply_sync(noop)`, timed), and the controller's RSS
  (/proc/PID/status, PID from cluster.json) is read before, with the 1,000 peers connected, and
  after they closed (and the Client call).

Latencies are reported as median and p90 of all per-call samples over all rounds; the other figures
(one per round) as median (min–max). Every workload runs under a deadline (SIGALRM). A workload that
fails on one side is recorded with its reason and the run goes on: one that failed by an error runs
again next round, one that hung (deadline) does not. At the end every kernel and cluster is stopped,
failure or not, and no process started in either side's environment is left (leftovers are killed by
pid and reported).

Prints a table and rewrites the `transport` section of docs/benchmarks.md (the rest is kept). If the
BEFORE binary does not exist (it is a frozen build, not part of the tree), the bench says so and
skips, successfully.

    .venv/bin/python bench/transport.py [--before BIN] [--after BIN] [--rounds 3] [--timeout 120]
        [--requests 200] [--calls 200] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
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
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager
from jupyter_client.session import Session

import bench_report
from bench_report import REPO, environment_lines, publish
from client_bench import deadline, settle  # also puts tests/python on sys.path
from kernel_env import assert_no_processes_left, describe, process_tree, wait_gone
from kernel_roundtrip import isolated_env
from px_roundtrip import kernel_round_trip

SECTION = "transport"
DEFAULT_BEFORE = Path("/tmp/parallax-zmqrs")
ENGINES = 2
PROFILE = "bench-transport"
TASKS = 2000
TRANSFER_BYTES = 100_000_000
PEERS = 1000
PEERS_PROFILE = "bench-transport-peers"
MB = 1e6
START_TIMEOUT = 120.0


def noop() -> None:
    """Shipped to the engines (by value: this is __main__)."""
    return None


# --- the two sides ---------------------------------------------------------------------------------


@dataclass
class Side:
    """One build and everything started from it, in its own temporary folders."""

    label: str  # "zmq.rs" or "libzmq"
    source: Path  # the build as given
    binary: Path  # the same file, linked (or copied) as <root>/bin/parallax: see `stage`
    root: Path
    vars: dict[str, str] = field(default_factory=dict)  # environment of everything this side starts
    kc: BlockingKernelClient | None = None
    rc: Any = None  # parallax.Client
    engine0: Any = None  # rc[0]
    lview: Any = None  # rc.load_balanced_view()
    controller_pid: int | None = None
    cluster_pids: set[int] = field(default_factory=set)
    down: dict[str, str] = field(default_factory=dict)  # "kernel" / "cluster" → why it is not up
    push_path: str = "not measured"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, **self.vars}

    @property
    def parallax_dir(self) -> Path:
        return Path(self.vars["PARALLAX_DIR"])

    def profile_dir(self, profile: str = PROFILE) -> Path:
        return self.parallax_dir / f"profile_{profile}"


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """`values` in os.environ for the block (jupyter_client finds kernelspecs, runtime folder and the
    kernel's environment there), then os.environ as it was."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def make_side(label: str, binary: Path, parent: Path) -> Side:
    """Temporary folders for one side (`isolated_env`, whose variables are kept in the Side rather
    than left in os.environ) and the parallax kernelspec installed from `binary` into them."""
    root = parent / label.replace(".", "")
    root.mkdir()
    before = dict(os.environ)
    try:
        isolated_env(root, install_parallax=False)
        values = {key: value for key, value in os.environ.items() if before.get(key) != value}
    finally:
        os.environ.clear()
        os.environ.update(before)
    staged = stage(binary, root / "bin")
    values.update(PARALLAX_BIN=str(staged), PARALLAX_PYTHON=sys.executable, PARALLAX_PROFILE=PROFILE)
    side = Side(label, binary, staged, root, values)
    prefix = root / "prefix"
    try:
        run_binary(side, ["kernel", "install", "--prefix", str(prefix), "--python", sys.executable], timeout=60)
    except Exception as exc:  # noqa: BLE001 - recorded: the kernel workloads will say why they did not run
        side.down["kernel"] = f"`kernel install` failed: {reason(exc)}"
    return side


def stage(binary: Path, folder: Path) -> Path:
    """`binary` as `folder/parallax`: a hard link, else a copy. `cluster stop` signals only processes
    whose argv[0] ends in `parallax` (a guard against recycled pids), so a cluster run from a build
    named otherwise (`/tmp/parallax-zmqrs`) is reported stopped but keeps running."""
    folder.mkdir()
    staged = folder / "parallax"
    try:
        os.link(binary, staged)
    except OSError:
        shutil.copy2(binary, staged)
    return staged


def run_binary(side: Side, args: list[str], timeout: float = START_TIMEOUT) -> None:
    cmd = [str(side.binary), *args]
    proc = subprocess.run(cmd, env=side.env, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed ({proc.returncode}): {(proc.stdout + proc.stderr).strip()}")


def cluster_start(side: Side, profile: str) -> tuple[int | None, set[int]]:
    """`<bin> cluster start -n 2 --daemonize --profile PROFILE`: returns once every engine is ready,
    with the controller's pid and every process of the cluster (from cluster.json)."""
    run_binary(side, ["cluster", "start", "-n", str(ENGINES), "--daemonize", "--profile", profile])
    record = json.loads((side.profile_dir(profile) / "cluster.json").read_text())
    return record.get("controller_pid"), process_tree(int(record["supervisor_pid"]))


def cluster_stop(side: Side, profile: str) -> None:
    if (side.profile_dir(profile) / "cluster.json").exists():  # else never started: the leftover
        run_binary(side, ["cluster", "stop", "--profile", profile])  # check ends what a failed start left


def connect(side: Side, profile: str) -> Any:
    """A parallax.Client on the side's cluster of `profile`, once its engines are there."""
    import parallax

    with environment(side.vars):
        rc = parallax.Client(profile_dir=side.profile_dir(profile))
    try:
        rc.wait_for_engines(ENGINES, timeout=60)
    except BaseException:
        rc.close()
        raise
    return rc


def start_cluster(side: Side, cleanup: ExitStack, problems: list[str]) -> None:
    """The side's cluster and a Client on it; on failure, `side.down['cluster']` says why."""
    cleanup.callback(guarded, problems, f"{side.label}: stopping the cluster", lambda: cluster_stop(side, PROFILE))
    try:
        with deadline(START_TIMEOUT, f"{side.label}: starting the cluster"):
            side.controller_pid, side.cluster_pids = cluster_start(side, PROFILE)
            side.rc = connect(side, PROFILE)
        cleanup.callback(guarded, problems, f"{side.label}: closing the Client", side.rc.close)
        side.engine0 = side.rc[0]
        side.lview = side.rc.load_balanced_view()
    except Exception as exc:  # noqa: BLE001 - recorded; the other side and other workloads go on
        side.down["cluster"] = reason(exc)
        print(f"{side.label}: the cluster did not come up: {reason(exc)}", file=sys.stderr, flush=True)


def start_kernel(side: Side, cleanup: ExitStack, problems: list[str]) -> None:
    """The parallax kernel of the side's kernelspec, on its cluster's profile (PARALLAX_PROFILE)."""
    if "kernel" in side.down:
        return
    try:
        with environment(side.vars), deadline(START_TIMEOUT, f"{side.label}: starting the parallax kernel"):
            km = KernelManager(kernel_name="parallax")
            km.start_kernel()
            cleanup.callback(guarded, problems, f"{side.label}: shutting the kernel down",
                             lambda: km.shutdown_kernel(now=False))
            kc = km.client()
            kc.start_channels()
            cleanup.callback(guarded, problems, f"{side.label}: closing the kernel's channels", kc.stop_channels)
            kc.wait_for_ready(timeout=60)
        side.kc = kc
    except Exception as exc:  # noqa: BLE001
        side.down["kernel"] = reason(exc)
        print(f"{side.label}: the kernel did not come up: {reason(exc)}", file=sys.stderr, flush=True)


def guarded(problems: list[str], what: str, step: Callable[[], object]) -> None:
    """Run a clean-up step; a failure is recorded (and reported) instead of skipping the others."""
    try:
        step()
    except Exception as exc:  # noqa: BLE001
        problems.append(f"{what}: {reason(exc)}")
        print(f"clean-up problem: {what}: {reason(exc)}", file=sys.stderr, flush=True)


def reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}{'…' if len(text) > 300 else ''}"


def raise_fd_limit(needed: int) -> None:
    """1,000 DEALERs take about 2,000 descriptors here and 1,000 in the controller, which inherits
    this process's limit when the cluster starts: raise the soft limit (up to the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        new = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


# --- workloads -------------------------------------------------------------------------------------


def relay(side: Side, requests: int) -> dict[str, list[float]]:
    return {"relay": [kernel_round_trip(side.kc, "pass") for _ in range(requests)]}


def px(side: Side, requests: int) -> dict[str, list[float]]:
    return {"px": [kernel_round_trip(side.kc, "%px pass") for _ in range(requests)]}


def apply_latency(side: Side, calls: int) -> dict[str, list[float]]:
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        side.engine0.apply_sync(noop)
        samples.append(time.perf_counter() - start)
    return {"apply": samples}


def load_balanced(side: Side, tasks: int) -> dict[str, list[float]]:
    start = time.perf_counter()
    results = [side.lview.apply_async(noop) for _ in range(tasks)]
    for ar in results:
        ar.get()
    return {"lb": [tasks / (time.perf_counter() - start)]}


def push_pull(side: Side, arr: np.ndarray, prefix: str) -> dict[str, list[float]]:
    start = time.perf_counter()
    side.engine0.push({"a": arr}, block=True)
    pushed = time.perf_counter()
    pulled = side.engine0.pull("a", block=True)
    done = time.perf_counter()
    if not np.array_equal(pulled, arr):
        raise AssertionError("the pulled array differs from the pushed one")
    del pulled
    side.engine0.execute("del a", block=True)
    return {f"{prefix}_push": [arr.nbytes / MB / (pushed - start)], f"{prefix}_pull": [arr.nbytes / MB / (done - pushed)]}


def push_pull_default(side: Side, arr: np.ndarray) -> dict[str, list[float]]:
    figures = push_pull(side, arr, "default")
    rc = side.rc
    side.push_path = (
        "shared memory (only names cross the sockets)"
        if rc._shm_offer is not None and rc._shares_memory(0)
        else "frames through the controller"
    )
    return figures


def push_pull_frames(side: Side, arr: np.ndarray) -> dict[str, list[float]]:
    with shared_memory_off(side.rc):
        return push_pull(side, arr, "frames")


@contextmanager
def shared_memory_off(rc: Any) -> Iterator[None]:
    """The client neither writes shared memory nor offers it for replies (a private switch: the
    bench wants the 100 MB on the sockets)."""
    saved = rc._shm_offer
    rc._shm_offer = None
    try:
        yield
    finally:
        rc._shm_offer = saved


def rss_mb(pid: int | None) -> float:
    if pid is None:
        raise RuntimeError("cluster.json names no controller process")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / MB
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def many_peers(side: Side, peers: int, problems: list[str]) -> dict[str, list[float]]:
    """`peers_on` a fresh cluster of the side's build, started for it and stopped after: its
    controller's memory is not that of the main cluster after rounds of 100 MB transfers, and if it
    does not survive, the other workloads are unaffected."""
    pids: set[int] = set()
    rc = None
    try:
        controller_pid, pids = cluster_start(side, PEERS_PROFILE)
        rc = connect(side, PEERS_PROFILE)
        rc[0].apply_sync(noop)
        return peers_on(side, rc, controller_pid, peers)
    finally:
        if rc is not None:
            rc.close()
        try:
            cluster_stop(side, PEERS_PROFILE)
        finally:
            left = wait_gone(pids, 10.0)
            if left:
                problems.append(f"{side.label}: processes of the {PEERS:,}-peer cluster left after its stop, "
                                f"killed: {describe(left)}")
                for pid in left:
                    os.kill(pid, signal.SIGKILL)


def peers_on(side: Side, rc: Any, controller_pid: int | None, peers: int) -> dict[str, list[float]]:
    """`peers` DEALERs to the controller's client ROUTER, one signed queue_request each; the time
    until every one has its queue_reply. Then a normal Client call must still work."""
    info = json.loads((side.profile_dir(PEERS_PROFILE) / "security" / "controller-client.json").read_text())
    session = Session(key=info["key"].encode(), signature_scheme="hmac-sha256", username="bench-peers")
    rss_before = rss_mb(controller_pid)
    ctx = zmq.Context()
    ctx.max_sockets = peers + 64
    sockets: list[zmq.Socket] = []
    try:
        start = time.perf_counter()
        for _ in range(peers):
            sock = ctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.connect(info["url"])
            sockets.append(sock)
            session.send(sock, "queue_request", {})
        poller = zmq.Poller()
        for sock in sockets:
            poller.register(sock, zmq.POLLIN)
        waiting = len(sockets)
        while waiting:
            for sock, _ in poller.poll(1000):
                _, msg = session.recv(sock, mode=zmq.NOBLOCK)
                if msg is None:
                    continue
                if msg["msg_type"] != "queue_reply" or msg["content"].get("status") != "ok":
                    raise AssertionError(f"a peer got {msg['msg_type']} {msg['content']}")
                poller.unregister(sock)
                waiting -= 1
        elapsed = time.perf_counter() - start
        rss_peers = rss_mb(controller_pid)
    finally:
        for sock in sockets:
            sock.close(linger=0)
        ctx.term()
    start = time.perf_counter()
    rc.queue_status()
    rc[0].apply_sync(noop)
    check = time.perf_counter() - start
    return {
        "peers": [elapsed * 1e3],
        "peers_check": [check * 1e3],
        "rss_before": [rss_before],
        "rss_peers": [rss_peers],
        "rss_after": [rss_mb(controller_pid)],
    }


@dataclass(frozen=True)
class Workload:
    name: str
    needs: tuple[str, ...]  # "kernel", "cluster"
    run: Callable[[Side], dict[str, list[float]]]
    warm_up: Callable[[Side], object] | None  # untimed, small


def workloads(args: argparse.Namespace, arr: np.ndarray, problems: list[str]) -> list[Workload]:
    small = arr[: (4 << 20) // 8]  # above the client's 1 MiB shared-memory threshold
    return [
        Workload("relay", ("kernel",), lambda s: relay(s, args.requests), lambda s: relay(s, 50)),
        Workload("%px", ("kernel", "cluster"), lambda s: px(s, args.requests // 2), lambda s: px(s, 20)),
        Workload("apply latency", ("cluster",), lambda s: apply_latency(s, args.calls),
                 lambda s: apply_latency(s, 20)),
        Workload("load-balanced apply", ("cluster",), lambda s: load_balanced(s, TASKS),
                 lambda s: load_balanced(s, 100)),
        Workload("push/pull, default path", ("cluster",), lambda s: push_pull_default(s, arr),
                 lambda s: push_pull_default(s, small)),
        Workload("push/pull through the controller", ("cluster",), lambda s: push_pull_frames(s, arr),
                 lambda s: push_pull_frames(s, small)),
        Workload(f"{PEERS:,} peers", (), lambda s: many_peers(s, PEERS, problems), None),
    ]


# --- running ---------------------------------------------------------------------------------------


@dataclass
class Results:
    samples: dict[str, dict[str, list[float]]]  # side → row key → samples
    failures: dict[str, dict[str, list[str]]]  # side → workload → "round r: reason"
    hung: dict[str, set[str]]  # side → workloads not run again after hitting the deadline


def attempt(side: Side, workload: Workload, when: str, timeout: float, results: Results,
            call: Callable[[Side], object]) -> object | None:
    """Run one workload on one side under the deadline; a failure is recorded, not raised."""
    failed = results.failures[side.label]
    if workload.name in results.hung[side.label]:
        return None
    missing = [part for part in workload.needs if part in side.down]
    if missing:
        failed[workload.name] = [f"not run: no {' and no '.join(missing)} (see above)"]
        return None
    try:
        with deadline(timeout, f"{side.label}: {workload.name} ({when})"):
            return call(side)
    except Exception as exc:  # noqa: BLE001 - a finding, recorded with its reason
        failed.setdefault(workload.name, []).append(f"{when}: {reason(exc)}")
        if isinstance(exc, TimeoutError):
            results.hung[side.label].add(workload.name)
        print(f"{side.label}: {workload.name} failed ({when}): {reason(exc)}", file=sys.stderr, flush=True)
        return None


def measure(sides: list[Side], args: argparse.Namespace, parent: Path, problems: list[str]) -> Results:
    arr = np.random.default_rng(0).random(TRANSFER_BYTES // 8)
    labels = [s.label for s in sides]
    results = Results({l: {} for l in labels}, {l: {} for l in labels}, {l: set() for l in labels})
    runs = workloads(args, arr, problems)
    for side in sides:
        for workload in runs:
            if workload.warm_up is not None:
                attempt(side, workload, "warm-up", args.timeout, results, workload.warm_up)
    for r in range(args.rounds):
        order = sides if r % 2 == 0 else sides[::-1]
        for workload in runs:
            for side in order:
                settle(str(parent))
                figures = attempt(side, workload, f"round {r + 1}", args.timeout, results, workload.run)
                for key, values in (figures or {}).items():
                    results.samples[side.label].setdefault(key, []).extend(values)
        print(f"round {r + 1}/{args.rounds} done: " + progress(results), file=sys.stderr, flush=True)
    for side in sides:
        try:
            results.samples[side.label]["rss_main"] = [rss_mb(side.controller_pid)]
        except (OSError, RuntimeError) as exc:
            results.failures[side.label]["main controller"] = [f"after the rounds: {reason(exc)}"]
    return results


# --- report ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One line of the table. `per_call` rows hold per-call latencies in seconds (shown in ms as
    median and p90); the others one figure per round (shown as median and min–max)."""

    key: str
    workload: str  # the Workload whose failures this row shows
    label: str
    decimals: int
    per_call: bool = False


ROWS = (
    Row("relay", "relay", "relay: `execute_request('pass')` through the parallax kernel, reply + idle (ms)", 3,
        per_call=True),
    Row("px", "%px", f"`%px pass` on {ENGINES} engines through the parallax kernel, reply + idle (ms)", 3,
        per_call=True),
    Row("apply", "apply latency", "`rc[0].apply_sync(noop)` (ms)", 3, per_call=True),
    Row("lb", "load-balanced apply", f"{TASKS:,} × `lview.apply_async(noop)`, then get each (tasks/s)", 0),
    Row("default_push", "push/pull, default path",
        f"`rc[0].push` of {TRANSFER_BYTES / MB:.0f} MB float64, default path (MB/s)", 0),
    Row("default_pull", "push/pull, default path",
        f"`rc[0].pull` of {TRANSFER_BYTES / MB:.0f} MB float64, default path (MB/s)", 0),
    Row("frames_push", "push/pull through the controller",
        f"`rc[0].push` of {TRANSFER_BYTES / MB:.0f} MB float64 through the controller (MB/s)", 0),
    Row("frames_pull", "push/pull through the controller",
        f"`rc[0].pull` of {TRANSFER_BYTES / MB:.0f} MB float64 through the controller (MB/s)", 0),
    Row("peers", f"{PEERS:,} peers",
        f"{PEERS:,} DEALERs connect, one `queue_request` each, until all replies (ms)", 1),
    Row("peers_check", f"{PEERS:,} peers", "then `rc.queue_status()` + `rc[0].apply_sync(noop)` (ms)", 1),
    Row("rss_before", f"{PEERS:,} peers", "controller RSS before the peers, a Client connected (MB)", 1),
    Row("rss_peers", f"{PEERS:,} peers", f"controller RSS with {PEERS:,} peers connected (MB)", 1),
    Row("rss_after", f"{PEERS:,} peers", "controller RSS after they closed and the Client call (MB)", 1),
    Row("rss_main", "main controller", "main cluster's controller RSS after all rounds (MB)", 1),
)


def quantile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def centre(row: Row, values: list[float]) -> float:
    return statistics.median(values) * (1e3 if row.per_call else 1)


def cell(row: Row, values: list[float], failed: bool) -> str:
    mark = " †" if failed else ""
    if not values:
        return "failed †" if failed else "—"
    d = row.decimals
    if row.per_call:
        ms = [v * 1e3 for v in values]
        return f"{statistics.median(ms):,.{d}f} (p90 {quantile(ms, 0.9):,.{d}f}){mark}"
    spread = f" ({min(values):,.{d}f}–{max(values):,.{d}f})" if len(values) > 1 else ""
    return f"{statistics.median(values):,.{d}f}{spread}{mark}"


def progress(results: Results) -> str:
    parts = []
    for label, rows in results.samples.items():
        shown = []
        for row in ROWS[:6]:
            if rows.get(row.key):
                shown.append(f"{row.key} {centre(row, rows[row.key]):,.{row.decimals}f}")
        parts.append(f"{label} " + ", ".join(shown))
    return "; ".join(parts)


def binary_line(side: Side, role: str) -> str:
    try:
        out = subprocess.run([str(side.source), "--version"], capture_output=True, text=True, timeout=10)
        ver = out.stdout.strip() or f"--version failed ({out.returncode})"
    except (OSError, subprocess.TimeoutExpired) as exc:
        ver = f"--version failed ({exc})"
    st = side.source.stat()
    built = dt.datetime.fromtimestamp(st.st_mtime, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"- {side.label} build ({role}): `{side.source}`, `{ver}`, {st.st_size / MB:.1f} MB, " \
           f"modified {built}, {libzmq_linkage(side.source)}"


def libzmq_linkage(binary: Path) -> str:
    if not shutil.which("ldd"):
        return "linkage unknown (no ldd)"
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, timeout=10, check=False).stdout
    libs = [line.split("=>")[0].strip() for line in out.splitlines() if "libzmq" in line]
    if not libs:
        return "links no libzmq"
    pkg = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "libzmq5"], capture_output=True, text=True,
                         check=False) if shutil.which("dpkg-query") else None
    deb = f" (Debian libzmq5 {pkg.stdout.strip()})" if pkg is not None and pkg.returncode == 0 else ""
    return f"links {', '.join(libs)}{deb}"


def render(sides: list[Side], results: Results, problems: list[str], args: argparse.Namespace,
           wall: float) -> str:
    before, after = sides
    paths = {s.label: s.push_path for s in sides}
    path_text = (
        paths[before.label] if paths[before.label] == paths[after.label]
        else "; ".join(f"{label}: {path}" for label, path in paths.items())
    )
    about = (
        "The same parallax program built on the pure-Rust `zeromq` crate (zmq.rs) and on libzmq (the `zmq` "
        "crate): only the `net` crate differs, the Python client and engine support (pyzmq) are the same. "
        f"Each build runs its own {ENGINES}-engine cluster, parallax kernel and `parallax.Client`, in its own "
        "temporary folders, both up at once. "
        f"{args.rounds} rounds, each running every workload once per build, alternating which build goes "
        "first, after one untimed warm-up pass; before each workload the bench waits until both are idle. "
        f"Latencies (ms): median (p90) of all calls, {args.requests} relay requests, {args.requests // 2} `%px` "
        f"and {args.calls} `apply_sync` calls per round; other figures: median (min–max) over rounds. "
        f"The default path of `push`/`pull` on this host is {path_text}; the rows \"through the controller\" "
        "turn the client's shared memory off, so the 100 MB travel as frames client → controller → engine "
        f"and back. {PEERS:,} peers: on a fresh cluster of the build (started for it each round, a Client "
        "connected), pyzmq DEALERs connect to the controller's client ROUTER and each sends one signed "
        "`queue_request`, timed from the first connect to the last reply; the controller's RSS is read "
        "before, with the peers connected, and after they closed and the Client made a call. The ratio is libzmq / "
        "zmq.rs of the medians: below 1 is better for times and memory, above 1 for rates. "
        "`bench/transport.py --before ZMQRS_BUILD` writes this section; the zmq.rs build is revision 94b0fea (the last before the switch), built in a worktree of its own. It is a one-off comparison that chose the transport, not part of `scripts/bench.sh`."
    )
    lines = [
        "## Transport: zmq.rs versus libzmq",
        "",
        textwrap.fill(about, width=100, break_long_words=False, break_on_hyphens=False),
        "",
        "| workload | zmq.rs | libzmq | ratio (libzmq/zmq.rs) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for row in ROWS:
        values = {s.label: results.samples[s.label].get(row.key, []) for s in sides}
        failed = {s.label: row.workload in results.failures[s.label] for s in sides}
        ratio = "—"
        if values[before.label] and values[after.label]:
            ratio = f"{centre(row, values[after.label]) / centre(row, values[before.label]):.2f}×"
        cells = " | ".join(cell(row, values[s.label], failed[s.label]) for s in sides)
        lines.append(f"| {row.label} | {cells} | {ratio} |")
    failures = [
        f"- {label}, {workload}: " + "; ".join(reasons)
        for label, by_workload in results.failures.items()
        for workload, reasons in by_workload.items()
    ]
    down = [f"- {s.label}: the {part} did not start: {why}" for s in sides for part, why in s.down.items()]
    lines += ["", "† failed at least once:" if failures or down else "No workload failed on either build."]
    lines += down + failures
    if problems:
        lines += ["", "Clean-up problems:", *(f"- {p}" for p in problems)]
    lines += ["", f"Wall time of the run: {wall / 60:.1f} min.", ""]
    lines += environment_lines(extra={"numpy": version("numpy"), "cloudpickle": version("cloudpickle")})
    lines += [binary_line(before, "before"), binary_line(after, "after")]
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, default=DEFAULT_BEFORE, help="the zmq.rs build")
    parser.add_argument("--after", type=Path, default=bench_report.PARALLAX_BIN, help="the libzmq build")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200, help="relay requests per round (half as many %%px)")
    parser.add_argument("--calls", type=int, default=200, help="apply_sync calls per round")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a workload may take")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if not args.before.is_file():
        print(f"transport.py: skipped: no zmq.rs build at {args.before} (pass --before BIN to compare "
              "with one); docs/benchmarks.md is left as it is", file=sys.stderr)
        return 0
    if not args.after.is_file():
        print(f"transport.py: no libzmq build at {args.after}: build it or pass --after BIN", file=sys.stderr)
        return 2
    raise_fd_limit(3 * PEERS + 1024)
    # environment_lines() names the parallax build it reports by bench_report.PARALLAX_BIN.
    bench_report.PARALLAX_BIN = args.after.resolve()

    started = time.monotonic()
    problems: list[str] = []
    # Every step that starts something registers its undoing; they run in reverse order, each even
    # if an earlier one failed (`guarded`): clients closed, kernels shut down, clusters stopped, then
    # no process of either side left (leftovers killed by pid and reported), temporary folders removed.
    with ExitStack() as cleanup:
        parent = Path(tempfile.mkdtemp(prefix="parallax-transport-"))
        cleanup.callback(shutil.rmtree, parent, ignore_errors=True)
        sides = [make_side("zmq.rs", args.before.resolve(), parent),
                 make_side("libzmq", args.after.resolve(), parent)]
        for side in sides:
            cleanup.callback(guarded, problems, f"{side.label}: processes left behind",
                             lambda s=side: assert_no_processes_left(s.parallax_dir, s.cluster_pids))
        for side in sides:
            start_cluster(side, cleanup, problems)
            start_kernel(side, cleanup, problems)
        results = measure(sides, args, parent, problems)

    wall = time.monotonic() - started
    publish(render(sides, results, problems, args, wall), SECTION, args.output, write=not args.no_write)
    print(f"wall time: {wall:.0f} s", file=sys.stderr)
    failed = any(results.failures.values()) or bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
