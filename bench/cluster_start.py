#!/usr/bin/env python3
"""Cluster start-up, side by side: Parallax vs ipyparallel, in one run, alternating.

For each engine count, each round times from "start" until every engine has answered a request:

- parallax: `parallax cluster start -n N --daemonize` (returns once every engine is registered and
  its kernel ready), then one `execute_request('pass')` per engine through the controller, until
  every reply is back;
- ipyparallel: `Cluster(n=N).start_and_connect_sync()`, then `rc[:].apply_sync(noop)`, as in
  shared/baseline.md.

Then it times each cluster's stop. Writes the `cluster-start` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import zmq
from jupyter_client.session import Session

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_report import environment_lines, publish  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BIN = ROOT / "target" / "release" / "parallax"


def noop() -> None:
    return None


def execute_on_every_engine(profile_dir: Path, n: int, timeout: float = 30.0) -> None:
    """One execute_request per engine through the controller's client protocol; waits for all
    replies."""
    info = json.loads((profile_dir / "security" / "controller-client.json").read_text())
    session = Session(key=info["key"].encode(), signature_scheme="hmac-sha256", username="bench")
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(info["url"])
    try:
        pending = set()
        for engine in range(n):
            msg = session.send(
                sock,
                "execute_request",
                {
                    "code": "pass",
                    "silent": False,
                    "store_history": False,
                    "user_expressions": {},
                    "allow_stdin": False,
                    "stop_on_error": False,
                },
                metadata={"engine": engine},
            )
            pending.add(msg["header"]["msg_id"])
        deadline = time.monotonic() + timeout
        while pending:
            if not sock.poll(max(0, deadline - time.monotonic()) * 1000):
                raise TimeoutError(f"no reply from engines for {sorted(pending)}")
            _, msg = session.recv(sock, mode=0)
            if msg["msg_type"] == "execute_reply":
                if msg["content"].get("status") != "ok":
                    raise RuntimeError(f"engine replied {msg['content']}")
                pending.discard(msg["parent_header"].get("msg_id"))
    finally:
        sock.close()


def parallax_round(binary: Path, n: int, env: dict[str, str], parallax_dir: Path) -> tuple[float, float]:
    profile = f"bench{n}"
    t0 = time.perf_counter()
    subprocess.run(
        [str(binary), "cluster", "start", "--daemonize", "-n", str(n), "--profile", profile],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    execute_on_every_engine(parallax_dir / f"profile_{profile}", n)
    started = time.perf_counter() - t0
    t1 = time.perf_counter()
    subprocess.run(
        [str(binary), "cluster", "stop", "--profile", profile], env=env, check=True, stdout=subprocess.DEVNULL
    )
    stopped = time.perf_counter() - t1
    return started, stopped


def ipyparallel_round(n: int) -> tuple[float, float]:
    import ipyparallel as ipp

    t0 = time.perf_counter()
    cluster = ipp.Cluster(n=n, log_level=40)
    rc = cluster.start_and_connect_sync()
    rc.wait_for_engines(n, timeout=60)
    rc[:].apply_sync(noop)
    started = time.perf_counter() - t0
    rc.close()
    t1 = time.perf_counter()
    cluster.stop_cluster_sync()
    stopped = time.perf_counter() - t1
    return started, stopped


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def render(results: dict, args: argparse.Namespace) -> str:
    lines = [
        "## Cluster start",
        "",
        'Wall time from "start" until every engine has answered a request, and the time to stop,',
        f"medians of {args.rounds} alternating rounds (min–max). Parallax: `parallax cluster start",
        "--daemonize` then one `execute_request` per engine through the controller; ipyparallel:",
        "`Cluster(n=N).start_and_connect_sync()` then `rc[:].apply_sync(noop)`.",
        "`scripts/bench.sh` refreshes this section.",
        "",
        "| engines | parallax start (s) | ipyparallel start (s) | ratio | parallax stop (s) | ipyparallel stop (s) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    verdicts = []
    for n, r in sorted(results.items()):
        ps, pst = r["parallax"]["start"], r["parallax"]["stop"]
        qs, qst = r["ipyparallel"]["start"], r["ipyparallel"]["stop"]
        ratio = median(ps) / median(qs)
        lines.append(
            f"| {n} | {median(ps):.2f} ({min(ps):.2f}–{max(ps):.2f}) | {median(qs):.2f} ({min(qs):.2f}–{max(qs):.2f})"
            f" | {ratio:.2f}× | {median(pst):.2f} | {median(qst):.2f} |"
        )
        verdicts.append(
            f"- {n} engines: parallax takes {ratio:.2f}× ipyparallel's time "
            f"({'meets' if ratio < 0.2 else 'misses'} the target of under 0.2×)."
        )
    lines += ["", *verdicts, "", *environment_lines(extra={"ipyparallel": version("ipyparallel")})]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engines", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--binary", type=Path, default=Path(os.environ.get("PARALLAX_BIN", DEFAULT_BIN)))
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="parallax-bench-") as tmp:
        tmp = Path(tmp)
        parallax_dir = tmp / "parallax"
        env = dict(os.environ, PARALLAX_DIR=str(parallax_dir), PARALLAX_PYTHON=sys.executable)
        env.pop("VIRTUAL_ENV", None)
        # ipyparallel keeps its profiles under IPYTHONDIR: keep them out of the user's home.
        os.environ["IPYTHONDIR"] = str(tmp / "ipython")
        results: dict[int, dict] = {}
        for n in args.engines:
            results[n] = {k: {"start": [], "stop": []} for k in ("parallax", "ipyparallel")}
            for r in range(args.rounds):
                for name in ("parallax", "ipyparallel"):
                    start, stop = (
                        parallax_round(args.binary, n, env, parallax_dir)
                        if name == "parallax"
                        else ipyparallel_round(n)
                    )
                    results[n][name]["start"].append(start)
                    results[n][name]["stop"].append(stop)
                    print(f"n={n} round {r + 1} {name}: start {start:.3f} s, stop {stop:.3f} s", flush=True)
    publish(render(results, args), "cluster-start", ROOT / "docs" / "benchmarks.md", write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
