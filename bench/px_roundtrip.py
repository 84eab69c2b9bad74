"""Round trip of `%px a=1` on 2 engines: through the parallax kernel versus ipyparallel's `%px` in IPython.

- parallax: a 2-engine cluster (`parallax cluster start -n 2 --daemonize`) and the parallax kernel on
  its profile; one sample = `execute_request('%px a=1')` from jupyter_client's BlockingKernelClient
  until both its execute_reply and its idle status have arrived (what a notebook waits for).
- ipyparallel: `ipp.Cluster(n=2).start_and_connect_sync()`, `rc.activate()`, and IPython's own
  `%px` magic run in this process (`get_ipython().run_line_magic('px', 'a=1')` on the shell of
  `IPython.testing.globalipapp`); one sample = that call, which returns once both engines replied.

The ipyparallel path has no kernel hop (the magic runs where it is timed); the parallax path has one.
After a warm-up, rounds alternate between the two (and alternate which goes first), so drift in the
machine's load hits both equally. Prints a table and rewrites the `px-roundtrip` section of
docs/benchmarks.md (the rest of the file is kept).

    .venv/bin/python bench/px_roundtrip.py [--rounds 5] [--requests 100] [--warmup 50]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import zmq
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

from bench_report import PARALLAX_BIN, REPO, environment_lines, publish
from kernel_roundtrip import isolated_env, summarize

SECTION = "px-roundtrip"
TARGET_RATIO = 0.6
CODE = "a=1"
ENGINES = 2
PROFILE = "bench-px"


def kernel_round_trip(kc: BlockingKernelClient, code: str, timeout: float = 30.0) -> float:
    """Seconds from sending execute_request(code) until both its reply and its idle have arrived;
    fails if the cell failed."""
    start = time.perf_counter()
    msg_id = kc.execute(code)
    reply = None
    idle = False
    deadline = start + timeout
    poller = zmq.Poller()
    poller.register(kc.shell_channel.socket, zmq.POLLIN)
    poller.register(kc.iopub_channel.socket, zmq.POLLIN)
    while reply is None or not idle:
        left = deadline - time.perf_counter()
        if left <= 0:
            raise TimeoutError(f"no reply/idle for {code!r} within {timeout} s")
        if reply is None and kc.shell_channel.msg_ready():
            msg = kc.shell_channel.get_msg(timeout=0)
            if msg["parent_header"].get("msg_id") == msg_id:
                reply = msg
            continue
        if not idle and kc.iopub_channel.msg_ready():
            msg = kc.iopub_channel.get_msg(timeout=0)
            idle = (
                msg["parent_header"].get("msg_id") == msg_id
                and msg["msg_type"] == "status"
                and msg["content"]["execution_state"] == "idle"
            )
            continue
        poller.poll(int(left * 1000) + 1)
    elapsed = time.perf_counter() - start
    if reply["content"]["status"] != "ok":
        raise RuntimeError(f"{code!r} failed: {reply['content']}")
    return elapsed


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def start_parallax_cluster() -> dict[str, str]:
    env = dict(os.environ, PARALLAX_PYTHON=sys.executable)
    cmd = [str(PARALLAX_BIN), "cluster", "start", "-n", str(ENGINES), "--daemonize", "--profile", PROFILE]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, timeout=120)
    return env


def stop_parallax_cluster(env: dict[str, str]) -> None:
    cmd = [str(PARALLAX_BIN), "cluster", "stop", "--profile", PROFILE]
    subprocess.run(cmd, env=env, check=False, stdout=subprocess.DEVNULL, timeout=60)


def render(stats: dict[str, dict[str, float]], args: argparse.Namespace) -> str:
    ratio = stats["parallax"]["median"] / stats["ipyparallel"]["median"]
    verdict = "meets" if ratio <= TARGET_RATIO else "misses"
    lines = [
        "## %px round trip",
        "",
        f"`%px {CODE}` on {ENGINES} engines. Parallax: `execute_request('%px {CODE}')` from",
        "`jupyter_client.BlockingKernelClient` to the parallax kernel until both `execute_reply` and the",
        "`idle` status have arrived. ipyparallel: its `%px` magic in IPython, in process",
        f"(`rc.activate()`, then `get_ipython().run_line_magic('px', '{CODE}')`), which has no kernel hop.",
        f"{args.rounds} alternating rounds of {args.requests} requests per path after {args.warmup} warm-up",
        "requests each, in one run. `scripts/bench.sh` refreshes this section.",
        "",
        "| path | n | median (ms) | p10 (ms) | p90 (ms) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, path in (
        ("ipyparallel", "ipyparallel `%px` in IPython"),
        ("parallax", "parallax kernel `%px`"),
    ):
        s = stats[label]
        figures = " | ".join(f"{s[key]:.3f}" for key in ("median", "p10", "p90"))
        lines.append(f"| {path} | {s['n']:.0f} | {figures} |")
    lines += [
        "",
        f"**Parallax median / ipyparallel median: {ratio:.2f}×** — {verdict} the target of at most "
        f"{TARGET_RATIO}× ipyparallel's.",
        "",
        *environment_lines(extra={"ipyparallel": version("ipyparallel"), "IPython": version("ipython")}),
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=100, help="requests per path per round")
    parser.add_argument("--warmup", type=int, default=50, help="untimed requests per path first")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="parallax-bench-"))
    km = kc = cluster_env = cluster = rc = None
    try:
        # Temporary JUPYTER_*, PARALLAX_DIR and IPYTHONDIR (ipyparallel keeps its profiles there).
        isolated_env(root, install_parallax=True)
        cluster_env = start_parallax_cluster()
        os.environ["PARALLAX_PROFILE"] = PROFILE
        km = KernelManager(kernel_name="parallax")
        km.start_kernel()
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)

        import ipyparallel as ipp
        from IPython.testing.globalipapp import start_ipython

        shell = start_ipython()
        cluster = ipp.Cluster(n=ENGINES, log_level=40)
        rc = cluster.start_and_connect_sync()
        rc.wait_for_engines(ENGINES, timeout=60)
        rc.activate()  # registers %px on the shell, with a blocking view of all engines

        paths: dict[str, Callable[[], float]] = {
            "parallax": lambda: kernel_round_trip(kc, f"%px {CODE}"),
            "ipyparallel": lambda: timed(lambda: shell.run_line_magic("px", CODE)),
        }
        for sample in paths.values():
            for _ in range(args.warmup):
                sample()

        samples: dict[str, list[float]] = {label: [] for label in paths}
        order = list(paths)
        for r in range(args.rounds):
            for label in order if r % 2 == 0 else reversed(order):
                samples[label] += [paths[label]() for _ in range(args.requests)]
            print(
                f"round {r + 1}/{args.rounds}: "
                + ", ".join(f"{k} {statistics.median(v) * 1e3:.3f} ms" for k, v in samples.items()),
                file=sys.stderr,
            )
    finally:
        if rc is not None:
            rc.close()
        if cluster is not None:
            cluster.stop_cluster_sync()
        if kc is not None:
            kc.stop_channels()
        if km is not None:
            km.shutdown_kernel(now=False)
        if cluster_env is not None:
            stop_parallax_cluster(cluster_env)
        shutil.rmtree(root, ignore_errors=True)

    stats = {label: summarize(s) for label, s in samples.items()}
    publish(render(stats, args), SECTION, args.output, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
