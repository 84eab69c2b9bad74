"""Round trip of a trivial execute_request through the parallax kernel versus straight to ipykernel.

One sample = send `execute_request('pass')` with jupyter_client's BlockingKernelClient and wait until
both its execute_reply (shell) and its idle status (iopub) have arrived. Both kernels run side by side;
after a warm-up, rounds alternate between them (and alternate which goes first) so that drift in the
machine's load hits both equally. The difference of the medians is what parallax adds.

Prints a table and rewrites this bench's section of docs/benchmarks.md (between the
`<!-- bench:kernel-roundtrip -->` markers; the rest of the file is kept).

    .venv/bin/python bench/kernel_roundtrip.py [--rounds 5] [--requests 200] [--warmup 200]
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
from pathlib import Path

import zmq
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

from bench_report import PARALLAX_BIN, REPO, environment_lines, publish

TARGET_MS = 0.3
SECTION = "kernel-roundtrip"


def isolated_env(root: Path, install_parallax: bool) -> None:
    """Point Jupyter, IPython and parallax at temporary folders; install the parallax kernelspec."""
    for name in (
        "JUPYTER_DATA_DIR",
        "JUPYTER_RUNTIME_DIR",
        "JUPYTER_CONFIG_DIR",
        "PARALLAX_DIR",
        "IPYTHONDIR",
    ):
        path = root / name.lower()
        path.mkdir()
        os.environ[name] = str(path)
    prefix = root / "prefix"
    os.environ["JUPYTER_PATH"] = str(prefix / "share" / "jupyter")
    if install_parallax:
        cmd = [str(PARALLAX_BIN), "kernel", "install", "--prefix", str(prefix), "--python", sys.executable]
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)


def round_trip(kc: BlockingKernelClient, timeout: float = 30.0) -> float:
    """Seconds from sending execute_request('pass') until both the reply and idle have arrived."""
    start = time.perf_counter()
    msg_id = kc.execute("pass")
    got_reply = got_idle = False
    deadline = start + timeout
    while not (got_reply and got_idle):
        left = deadline - time.perf_counter()
        if left <= 0:
            raise TimeoutError(f"no reply/idle for {msg_id} within {timeout} s")
        if not got_reply and kc.shell_channel.msg_ready():
            msg = kc.shell_channel.get_msg(timeout=0)
            got_reply = msg["parent_header"].get("msg_id") == msg_id
            continue
        if not got_idle and kc.iopub_channel.msg_ready():
            msg = kc.iopub_channel.get_msg(timeout=0)
            got_idle = (
                msg["parent_header"].get("msg_id") == msg_id
                and msg["msg_type"] == "status"
                and msg["content"]["execution_state"] == "idle"
            )
            continue
        # Block on whichever sockets we still wait for.
        poller = zmq.Poller()
        if not got_reply:
            poller.register(kc.shell_channel.socket, zmq.POLLIN)
        if not got_idle:
            poller.register(kc.iopub_channel.socket, zmq.POLLIN)
        poller.poll(int(left * 1000) + 1)
    return time.perf_counter() - start


def quantile(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[round(q * 100) - 1]


def summarize(samples: list[float]) -> dict[str, float]:
    ms = [s * 1e3 for s in samples]
    return {
        "n": len(ms),
        "median": statistics.median(ms),
        "p10": quantile(ms, 0.10),
        "p90": quantile(ms, 0.90),
    }


def render(kernels: dict[str, str], stats: dict[str, dict[str, float]], args: argparse.Namespace) -> str:
    base, proxied = stats["ipykernel"], stats["parallax"]
    added = proxied["median"] - base["median"]
    verdict = "meets" if added < TARGET_MS else "misses"
    lines = [
        "## Kernel round trip",
        "",
        "`execute_request('pass')` from `jupyter_client.BlockingKernelClient` until both `execute_reply` and",
        "the `idle` status have arrived: through the parallax kernel (which relays to its local ipykernel)",
        f"versus straight to ipykernel; {args.rounds} alternating rounds of {args.requests} requests per",
        f"kernel after {args.warmup} warm-up requests each. `scripts/bench.sh` refreshes this section.",
        "",
        "| path | kernelspec | n | median (ms) | p10 (ms) | p90 (ms) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for label in ("ipykernel", "parallax"):
        s = stats[label]
        figures = " | ".join(f"{s[key]:.3f}" for key in ("median", "p10", "p90"))
        lines.append(f"| {label} | `{kernels[label]}` | {s['n']:.0f} | {figures} |")
    lines += [
        "",
        f"**Added latency (parallax median − ipykernel median): {added:.3f} ms** — {verdict} the target of "
        f"under {TARGET_MS} ms.",
        "",
        *environment_lines(),
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200, help="requests per kernel per round")
    parser.add_argument("--warmup", type=int, default=200, help="untimed requests per kernel first")
    parser.add_argument("--parallax-kernel", default="parallax", help="kernelspec of the proxied path")
    parser.add_argument("--ipykernel-kernel", default="python3", help="kernelspec of the direct path")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = parser.parse_args()

    kernels = {"ipykernel": args.ipykernel_kernel, "parallax": args.parallax_kernel}
    root = Path(tempfile.mkdtemp(prefix="parallax-bench-"))
    started: list[tuple[KernelManager, BlockingKernelClient]] = []
    try:
        isolated_env(root, install_parallax=args.parallax_kernel == "parallax")
        clients: dict[str, BlockingKernelClient] = {}
        for label, name in kernels.items():
            km = KernelManager(kernel_name=name)
            km.start_kernel()
            kc = km.client()
            kc.start_channels()
            started.append((km, kc))
            kc.wait_for_ready(timeout=60)
            clients[label] = kc
        for kc in clients.values():
            for _ in range(args.warmup):
                round_trip(kc)

        samples: dict[str, list[float]] = {label: [] for label in kernels}
        order = list(kernels)
        for r in range(args.rounds):
            for label in order if r % 2 == 0 else reversed(order):
                samples[label] += [round_trip(clients[label]) for _ in range(args.requests)]
            print(
                f"round {r + 1}/{args.rounds}: "
                + ", ".join(f"{k} {statistics.median(v) * 1e3:.3f} ms" for k, v in samples.items()),
                file=sys.stderr,
            )
    finally:
        for km, kc in started:
            kc.stop_channels()
            km.shutdown_kernel(now=False)
        shutil.rmtree(root, ignore_errors=True)

    stats = {label: summarize(s) for label, s in samples.items()}
    publish(render(kernels, stats, args), SECTION, args.output, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
