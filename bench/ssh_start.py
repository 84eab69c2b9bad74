#!/usr/bin/env python3
"""Starting engines on other hosts over SSH, side by side: Parallax vs ipyparallel.

The hosts are network namespaces on one bridge (tests/python/netns.py): `head` runs the
controller and the client, `node1` and `node2` each run Debian's sshd (tests/python/sshd_hosts.py)
and half of the engines. For 2, 4 and 8 engines, each round times, from `head`, from "start"
until every engine has answered an `apply`:

- parallax: `parallax cluster start --engines ssh --hosts node1:K,node2:K --ip 0.0.0.0
  --daemonize` (it checks each host first, and returns once every engine is registered), then
  `rc[:].apply_sync(noop)`;
- ipyparallel 9: `Cluster(n=N, engines="ssh", controller_ip="0.0.0.0")` with
  `SSHEngineSetLauncher.engines = {"node1": K, "node2": K}`, `start_and_connect_sync()`,
  `wait_for_engines(N)`, then `rc[:].apply_sync(noop)`.

Both run the same Python and kernels on the hosts, through the same ssh configuration. Rounds
alternate which system goes first. Writes the `ssh-start` section of docs/benchmarks.md.

    .venv/bin/python bench/ssh_start.py [--rounds 2] [--engines 2 4 8] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "python"))
from bench_report import PARALLAX_BIN, REPO, environment_lines, publish  # noqa: E402

import netns  # noqa: E402
import sshd_hosts  # noqa: E402
from kernel_env import IsolatedEnv, assert_no_processes_left  # noqa: E402

TIMEOUT = 180.0

PARALLAX = """
import json, subprocess, sys, time
import parallax
n, binary, ssh_config = int(sys.argv[1]), sys.argv[2], sys.argv[3]
profile = f"ssh{n}"
start = [binary, "cluster", "start", "--profile", profile, "--daemonize", "--engines", "ssh",
         "--hosts", f"node1:{n // 2},node2:{n // 2}", "--ip", "0.0.0.0", f"--remote-parallax={binary}",
         "--ssh=ssh", "--ssh=-F", f"--ssh={ssh_config}"]
t0 = time.perf_counter()
subprocess.run(start, check=True, stdout=subprocess.DEVNULL)
rc = parallax.Client(profile=profile)
rc.wait_for_engines(n, timeout=60)
rc[:].apply_sync(lambda: None)
started = time.perf_counter() - t0
rc.close()
t1 = time.perf_counter()
subprocess.run([binary, "cluster", "stop", "--profile", profile], check=True, stdout=subprocess.DEVNULL)
print(json.dumps({"start": started, "stop": time.perf_counter() - t1}))
"""

IPYPARALLEL = """
import json, sys, time
import ipyparallel as ipp
from traitlets.config import Config
n, bin_dir = int(sys.argv[1]), sys.argv[2]
c = Config()
c.SSHEngineSetLauncher.engines = {"node1": n // 2, "node2": n // 2}
c.SSHLauncher.ssh_cmd = [f"{bin_dir}/ssh"]
c.SSHLauncher.scp_cmd = [f"{bin_dir}/scp"]
c.SSHLauncher.remote_python = sys.executable
t0 = time.perf_counter()
cluster = ipp.Cluster(n=n, engines="ssh", controller_ip="0.0.0.0", controller_location="10.77.0.1",
                      config=c, log_level=40)
rc = cluster.start_and_connect_sync()
rc.wait_for_engines(n, timeout=120)
rc[:].apply_sync(lambda: None)
started = time.perf_counter() - t0
rc.close()
t1 = time.perf_counter()
cluster.stop_cluster_sync()
print(json.dumps({"start": started, "stop": time.perf_counter() - t1}))
"""


def run_round(net: netns.Network, hosts: sshd_hosts.SshHosts, system: str, n: int, env: dict[str, str]) -> dict:
    if system == "parallax":
        argv = [sys.executable, "-c", PARALLAX, str(n), str(PARALLAX_BIN), str(hosts.ssh_config)]
    else:
        argv = [sys.executable, "-c", IPYPARALLEL, str(n), str(hosts.bin_dir)]
    proc = net.run("head", argv, timeout=TIMEOUT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{system}, {n} engines, failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    for node in ("node1", "node2"):
        if hosts.processes(node):
            raise RuntimeError(f"{system} left processes on {node}: {hosts.processes(node)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def figure(values: list[float]) -> str:
    spread = f" ({min(values):.2f}–{max(values):.2f})" if len(values) > 1 else ""
    return f"{statistics.median(values):.2f}{spread}"


def render(results: dict[int, dict[str, dict[str, list[float]]]], args: argparse.Namespace) -> str:
    about = (
        "Engines on two other hosts over SSH: network namespaces `node1` and `node2` (each with its "
        "own sshd) and `head` (controller and client) on one bridge of this machine, so the figures "
        "are the launchers' own costs, not a network's. Time from start until every engine has "
        "answered an `apply` (parallax: `cluster start --engines ssh --daemonize`, which first checks "
        "each host's version and kernel; ipyparallel: `Cluster(engines=\"ssh\")` with "
        "`SSHEngineSetLauncher`), and the stop; half of the engines on each host. Medians (min–max) "
        f"of {args.rounds} alternating rounds, seconds. `bench/ssh_start.py` refreshes this section."
    )
    lines = [
        "## Engines over SSH: start and stop",
        "",
        textwrap.fill(about, width=100, break_long_words=False, break_on_hyphens=False),
        "",
        "| engines | ipyparallel start | parallax start | ratio | ipyparallel stop | parallax stop |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n, by_system in sorted(results.items()):
        ipp, px = by_system["ipyparallel"], by_system["parallax"]
        ratio = statistics.median(px["start"]) / statistics.median(ipp["start"])
        lines.append(
            f"| {n} | {figure(ipp['start'])} | {figure(px['start'])} | {ratio:.2f}× | "
            f"{figure(ipp['stop'])} | {figure(px['stop'])} |"
        )
    lines += ["", *environment_lines(extra={"ipyparallel": _version("ipyparallel")})]
    return "\n".join(lines)


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--engines", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if any(n % 2 for n in args.engines):
        parser.error("engine counts must be even (half on each host)")
    isolated = IsolatedEnv()
    env = {**isolated.environ(), "PARALLAX_PYTHON": sys.executable}
    env.pop("PYTEST_CURRENT_TEST", None)
    remote = {k: v for k, v in env.items() if k.startswith(("JUPYTER", "IPYTHON", "MPLCONFIG"))}
    remote |= {"PATH": f"{os.path.dirname(sys.executable)}:/usr/local/bin:/usr/bin:/bin", "PARALLAX_PYTHON": sys.executable}
    results: dict[int, dict[str, dict[str, list[float]]]] = {}
    try:
        with netns.Network(["head", "node1", "node2"]) as net, sshd_hosts.SshHosts(
            net, ["node1", "node2"], env=remote
        ) as hosts:
            for r in range(args.rounds):
                for n in args.engines:
                    order = ["parallax", "ipyparallel"] if r % 2 == 0 else ["ipyparallel", "parallax"]
                    for system in order:
                        figures = run_round(net, hosts, system, n, env)
                        for key, value in figures.items():
                            results.setdefault(n, {}).setdefault(system, {}).setdefault(key, []).append(value)
                        print(f"round {r + 1}, {n} engines, {system}: {figures}", file=sys.stderr)
    finally:
        assert_no_processes_left(env["PARALLAX_DIR"])
        isolated.cleanup()
    publish(render(results, args), "ssh-start", REPO / "docs" / "benchmarks.md", write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
