"""The SSH launcher, for real: three hosts (network namespaces, see netns.py), `head` running the
cluster's supervisor and controller, `node1` and `node2` each running Debian's sshd
(sshd_hosts.py). `parallax cluster start --engines ssh --hosts node1:2,node2:2 --ip 0.0.0.0`
from head must:

- check each host first (a wrong remote version is refused, naming the host);
- start 4 engines, 2 per host, that dial head's address on the bridge (found by the launcher,
  not given), over encrypted links; each engine's address shows which host it runs on;
- show the launcher and the engines per host in `cluster list`;
- survive a host dropping off the network: its engines are declared dead, and load-balanced tasks
  with retries finish on the other host;
- leave no process on any host after `cluster stop`, and none after its supervisor is killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import netns
import sshd_hosts
from kernel_env import PARALLAX_BIN, IsolatedEnv, assert_no_processes_left

pytestmark = [
    pytest.mark.parallax_only,
    pytest.mark.xdist_group("ssh_launcher"),
    pytest.mark.skipif(netns.available() is not None, reason=str(netns.available())),
    pytest.mark.skipif(sshd_hosts.available() is not None, reason=str(sshd_hosts.available())),
]

DEADLINE = 90.0
NODES = ["node1", "node2"]


@dataclass
class Hosts:
    net: netns.Network
    ssh: sshd_hosts.SshHosts
    env: dict[str, str]
    parallax_dir: Path

    def head(self, argv: list[str], timeout: float = DEADLINE) -> subprocess.CompletedProcess[str]:
        return self.net.run("head", argv, timeout=timeout, env=self.env)

    def parallax(self, *args: str, timeout: float = DEADLINE) -> subprocess.CompletedProcess[str]:
        return self.head([str(PARALLAX_BIN), *args], timeout=timeout)

    def ssh_flags(self) -> list[str]:
        return ["--ssh=ssh", "--ssh=-F", f"--ssh={self.ssh.ssh_config}"]

    def python(self, code: str) -> dict:
        """Run `code` on head with `rc` connected to the `ssh` profile; returns its last line as JSON."""
        script = "import json, parallax\nrc = parallax.Client(profile='ssh', timeout=20)\n" + textwrap.dedent(code)
        proc = self.head([sys.executable, "-c", script])
        assert proc.returncode == 0, f"client failed:\n{proc.stdout}\n{proc.stderr}\n{self.logs()}"
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def logs(self) -> str:
        parts = []
        for log in sorted((self.parallax_dir / "profile_ssh" / "log").glob("*.log")):
            parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def left_on_nodes(self) -> dict[str, dict[int, str]]:
        return {node: procs for node in NODES if (procs := self.ssh.processes(node))}


def wait_for(what: str, check, timeout: float = DEADLINE, logs=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{logs()}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def hosts() -> Iterator[Hosts]:
    isolated = IsolatedEnv()
    venv_bin = str(Path(sys.executable).parent)
    env = {"RUST_LOG": "info", **isolated.environ(), "PARALLAX_PYTHON": sys.executable}
    env.pop("PYTEST_CURRENT_TEST", None)
    # What every ssh session on the nodes gets: the venv's Python and Jupyter, this test's
    # Jupyter folders (the nodes share this machine's filesystem).
    remote = {name: env[name] for name in env if name.startswith(("JUPYTER", "IPYTHON", "MPLCONFIG"))}
    remote |= {"PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin", "PARALLAX_PYTHON": sys.executable}
    net = netns.Network(["head", *NODES])
    try:
        with sshd_hosts.SshHosts(net, NODES, env=remote) as ssh:
            yield Hosts(net, ssh, env, Path(env["PARALLAX_DIR"]))
    finally:
        net.close()
        assert_no_processes_left(env["PARALLAX_DIR"])
        isolated.cleanup()


def start(hosts: Hosts, *extra: str) -> subprocess.CompletedProcess[str]:
    return hosts.parallax(
        "cluster", "start", "--profile", "ssh", "--daemonize", "--engines", "ssh",
        "--hosts", "node1:2,node2:2", "--ip", "0.0.0.0",
        f"--remote-parallax={PARALLAX_BIN}", *hosts.ssh_flags(), *extra,
    )  # fmt: skip


def engine_addresses(hosts: Hosts) -> dict[str, str]:
    """Engine id -> the address its kernel's traffic to head leaves from."""
    return hosts.python(
        """
        def address():
            import socket
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.connect(("10.77.0.1", 9))
            return s.getsockname()[0]
        view = rc[:]
        print(json.dumps(dict(zip(map(str, view.targets), view.apply_sync(address)))))
        """
    )


def test_a_wrong_remote_version_is_refused_naming_the_host(hosts: Hosts, tmp_path: Path) -> None:
    fake = tmp_path / "old-parallax"
    fake.write_text("#!/bin/sh\necho 'parallax 0.0.1'\n")
    fake.chmod(0o755)
    proc = hosts.parallax(
        "cluster", "start", "--profile", "old", "--daemonize", "--engines", "ssh", "--hosts", "node1:1",
        "--ip", "0.0.0.0", f"--remote-parallax={fake}", *hosts.ssh_flags(), timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "host node1: it runs parallax 0.0.1, this machine parallax " in proc.stderr, proc.stderr
    assert hosts.left_on_nodes() == {}


def test_a_loopback_controller_is_refused_for_engines_on_other_hosts(hosts: Hosts) -> None:
    proc = hosts.parallax("cluster", "start", "--profile", "lo", "--engines", "ssh", "--hosts", "node1", timeout=30)
    assert proc.returncode != 0
    assert "cannot reach a controller listening on 127.0.0.1: add --ip 0.0.0.0" in proc.stderr, proc.stderr


def test_engines_on_two_hosts_work_and_a_host_that_drops_off_loses_only_its_engines(hosts: Hosts) -> None:
    started = start(hosts)
    assert started.returncode == 0, f"{started.stdout}\n{started.stderr}\n{hosts.logs()}"
    try:
        engine_file = json.loads((hosts.parallax_dir / "profile_ssh" / "security" / "controller-engine.json").read_text())
        assert engine_file["url"].startswith("tcp://10.77.0.1:"), engine_file["url"]
        assert engine_file.get("curve_serverkey"), "links off this host must be encrypted"

        addresses = engine_addresses(hosts)
        node1, node2 = hosts.net.address("node1"), hosts.net.address("node2")
        assert sorted(addresses.values()) == [node1, node1, node2, node2], addresses
        listed = json.loads(hosts.parallax("cluster", "list", "--json").stdout)
        ours = next(c for c in listed if c["profile"] == "ssh")
        assert (ours["launcher"], ours["hosts"], ours["engines"]) == ("ssh", {"node1": 2, "node2": 2}, 4), ours

        lost = sorted(int(i) for i, address in addresses.items() if address == node2)
        subprocess.run(["ip", "-n", hosts.net.namespace("node2"), "link", "set", "eth0", "down"], check=True)
        result = hosts.python(
            f"""
            import time
            lview = rc.load_balanced_view()
            lview.retries = 5
            def slow(x):
                import time
                time.sleep(0.5)
                return x * x
            ar = lview.map_async(slow, range(16))
            squares = ar.get(timeout=120)
            deadline = time.monotonic() + 60
            while set({lost}) & set(rc.ids) and time.monotonic() < deadline:
                time.sleep(0.2)
            print(json.dumps({{"squares": squares, "ids": rc.ids}}))
            """
        )
        assert result["squares"] == [x * x for x in range(16)], result
        assert not set(lost) & set(result["ids"]), f"engines {lost} of the dropped host are still listed: {result}"
    finally:
        subprocess.run(["ip", "-n", hosts.net.namespace("node2"), "link", "set", "eth0", "up"], check=False)
        stopped = hosts.parallax("cluster", "stop", "--profile", "ssh")
        assert stopped.returncode == 0, stopped.stderr
    # node2 was cut off: its engines end when they miss the controller (or sshd drops the session).
    wait_for("no process left on the nodes", lambda: not hosts.left_on_nodes(), timeout=60, logs=lambda: str(hosts.left_on_nodes()))


def test_a_killed_supervisor_leaves_nothing_running_on_the_hosts(hosts: Hosts) -> None:
    started = start(hosts)
    assert started.returncode == 0, f"{started.stdout}\n{started.stderr}\n{hosts.logs()}"
    state = json.loads((hosts.parallax_dir / "profile_ssh" / "cluster.json").read_text())
    assert len(hosts.ssh.processes("node1")) >= 2, hosts.ssh.processes("node1")
    os.kill(int(state["supervisor_pid"]), signal.SIGKILL)
    # The ssh clients are the supervisor's children, in their own process groups: they live on,
    # but their standard input (held by the supervisor) is closed, so each engine stops.
    wait_for(
        "the engines on the nodes to stop",
        lambda: not hosts.left_on_nodes(),
        timeout=30,
        logs=lambda: f"{hosts.left_on_nodes()}\n{hosts.logs()}",
    )
    # What is left here (the controller) belongs to a stale cluster: stop cleans it up.
    hosts.parallax("cluster", "stop", "--profile", "ssh")
    assert hosts.left_on_nodes() == {}


@pytest.mark.timeout(300)
def test_the_lecture_notebook_runs_unchanged_on_engines_over_ssh(hosts: Hosts, tmp_path: Path) -> None:
    """The lecture (notebooks/parallel_computing.ipynb), executed by nbconvert in the parallax
    kernel on head, against a 2-host SSH cluster of the default profile (which the lecture uses): the same
    outputs as on a local cluster."""
    import nbformat

    from test_lecture_notebook import NOTEBOOK, assert_expected_outputs

    started = hosts.parallax(
        "cluster", "start", "--profile", "default", "--daemonize", "--engines", "ssh", "--hosts", "node1:1,node2:1",
        "--ip", "0.0.0.0", f"--remote-parallax={PARALLAX_BIN}", *hosts.ssh_flags(),
    )  # fmt: skip
    assert started.returncode == 0, f"{started.stdout}\n{started.stderr}\n{hosts.logs()}"
    try:
        env = {key: value for key, value in hosts.env.items() if key != "PARALLAX_PROFILE"}
        # The kernel runs where the notebook is, and the lecture writes a file there.
        source = tmp_path / NOTEBOOK.name
        source.write_bytes(NOTEBOOK.read_bytes())
        cmd = [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
               "--ExecutePreprocessor.kernel_name=parallax", "--ExecutePreprocessor.timeout=60",
               "--output-dir", str(tmp_path / "out"), str(source)]  # fmt: skip
        proc = hosts.net.run("head", cmd, timeout=240, env=env)
        assert proc.returncode == 0, f"nbconvert failed:\n{proc.stderr[-4000:]}\n{hosts.logs()}"
        assert_expected_outputs(nbformat.read(tmp_path / "out" / NOTEBOOK.name, as_version=4))
        assert (tmp_path / "myscript.py").is_file()
    finally:
        hosts.parallax("cluster", "stop", "--profile", "default")
    wait_for("no process left on the nodes", lambda: not hosts.left_on_nodes(), timeout=30)


@pytest.mark.timeout(240)
def test_restarted_engines_keep_their_ids_and_an_unreachable_host_is_retried_with_backoff(hosts: Hosts) -> None:
    """--restart-engines over SSH: an engine killed on its host comes back under its id; while a
    host is unreachable its engine is started again with growing waits, not in a tight loop, and
    comes back under its id once the host is reachable again."""
    started = hosts.parallax(
        "cluster", "start", "--profile", "ssh", "--daemonize", "--engines", "ssh", "--hosts", "node1:1,node2:1",
        "--ip", "0.0.0.0", "--restart-engines", f"--remote-parallax={PARALLAX_BIN}", *hosts.ssh_flags(),
    )  # fmt: skip
    assert started.returncode == 0, f"{started.stdout}\n{started.stderr}\n{hosts.logs()}"
    cluster_log = hosts.parallax_dir / "profile_ssh" / "log" / "cluster.log"
    try:
        addresses = engine_addresses(hosts)
        on_node1 = next(int(i) for i, a in addresses.items() if a == hosts.net.address("node1"))
        engine_pid = hosts.python(f"import os\nprint(json.dumps(rc[{on_node1}].apply_sync(os.getppid)))")
        os.kill(engine_pid, signal.SIGKILL)
        back = hosts.python(
            f"""
            import os, time
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    pid = rc[{on_node1}].apply_sync(os.getppid)
                    if pid != {engine_pid}:
                        break
                except Exception:
                    pass
                time.sleep(0.2)
            print(json.dumps(pid))
            """
        )
        assert back != engine_pid, "the killed engine came back under its id"

        node2 = hosts.net.namespace("node2")
        subprocess.run(["ip", "-n", node2, "link", "set", "eth0", "down"], check=True)
        wait_for(
            "restarts to back off",
            lambda: "keeps exiting soon after it starts" in cluster_log.read_text(errors="replace"),
            timeout=120,
            logs=hosts.logs,
        )
        subprocess.run(["ip", "-n", node2, "link", "set", "eth0", "up"], check=True)
        on_node2 = next(int(i) for i, a in addresses.items() if a == hosts.net.address("node2"))
        ids = hosts.python(
            f"""
            import time
            deadline = time.monotonic() + 120
            while {on_node2} not in rc.ids and time.monotonic() < deadline:
                time.sleep(0.2)
            print(json.dumps(sorted(rc.ids)))
            """
        )
        assert ids == [0, 1], f"{ids}\n{hosts.logs()}"
    finally:
        subprocess.run(["ip", "-n", hosts.net.namespace("node2"), "link", "set", "eth0", "up"], check=False)
        hosts.parallax("cluster", "stop", "--profile", "ssh")
    wait_for("no process left on the nodes", lambda: not hosts.left_on_nodes(), timeout=60)


@pytest.mark.timeout(300)
def test_the_px_magics_notebook_starts_an_ssh_cluster_from_cluster_toml(hosts: Hosts, tmp_path: Path) -> None:
    """notebooks/px_magics.ipynb, unchanged: its `%cluster start -n 2` starts the profile's
    cluster as its `cluster.toml` says (ssh, two hosts), and every cell shows what it shows on a
    local cluster."""
    import nbformat

    from test_px_magics import EXPECTED, NOTEBOOK, simplify

    profile_dir = hosts.parallax_dir / "profile_default"
    profile_dir.mkdir(parents=True, exist_ok=True)
    (profile_dir / "cluster.toml").write_text(
        textwrap.dedent(
            f"""\
            engines = "ssh"
            ip = "0.0.0.0"
            [ssh]
            hosts = ["node1:1", "node2:1"]
            parallax = "{PARALLAX_BIN}"
            ssh = ["ssh", "-F", "{hosts.ssh.ssh_config}"]
            """
        )
    )
    try:
        env = {key: value for key, value in hosts.env.items() if key != "PARALLAX_PROFILE"}
        cmd = [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
               "--ExecutePreprocessor.kernel_name=parallax", "--ExecutePreprocessor.timeout=120",
               "--output-dir", str(tmp_path), str(NOTEBOOK)]  # fmt: skip
        proc = hosts.net.run("head", cmd, timeout=240, env=env)
        assert proc.returncode == 0, f"nbconvert failed:\n{proc.stderr[-4000:]}"
        cells = {c.id: c for c in nbformat.read(tmp_path / NOTEBOOK.name, as_version=4).cells if c.cell_type == "code"}
        wrong = {
            cid: [simplify(o) for o in cells[cid].outputs]
            for cid, expect in EXPECTED.items()
            if [simplify(o) for o in cells[cid].outputs] != expect.outputs
        }
        assert not wrong, f"cells whose outputs differ on the SSH cluster: {wrong}"
        # The engines ran on the hosts, dialling the address the launcher found.
        log = (profile_dir / "log" / "cluster.log").read_text(errors="replace")
        assert "engines will dial the interface facing their hosts" in log, log[-3000:]
    finally:
        (profile_dir / "cluster.toml").unlink()
        hosts.parallax("cluster", "stop", "--profile", "default")
    wait_for("no process left on the nodes", lambda: not hosts.left_on_nodes(), timeout=30)


@pytest.mark.timeout(180)
def test_mpi_ranks_on_two_hosts_are_engines_of_one_cluster(hosts: Hosts, tmp_path: Path) -> None:
    """MPICH's mpiexec on head starts its ranks on node1 and node2 over ssh (its own launcher);
    each rank is an engine that dials head: rank equals id, each rank runs on its own host, and an
    allreduce across the hosts gives the sum. Stopping the cluster leaves nothing on the hosts."""
    mpich = Path("/usr/lib/x86_64-linux-gnu/libmpich.so.12")
    if not mpich.exists() or subprocess.run(["which", "mpiexec.mpich"], capture_output=True).returncode:
        pytest.skip("Debian's mpich is not installed")
    lib = tmp_path / "mpich-lib"
    lib.mkdir()
    (lib / "libmpi.so.12").symlink_to(mpich)
    mpi_args = ["-launcher", "ssh", "-launcher-exec", f"{hosts.ssh.bin_dir}/ssh", "-iface", "eth0", "-hosts", "node1,node2"]
    started = hosts.parallax(
        "cluster", "start", "--profile", "mpi2", "--daemonize", "--engines", "mpi", "-n", "2",
        "--ip", "0.0.0.0", "--location", hosts.net.address("head"), "--mpiexec", "mpiexec.mpich",
        *[f"--mpi-args={arg}" for arg in mpi_args], "--env", f"LD_LIBRARY_PATH={lib}",
    )  # fmt: skip
    logs = hosts.parallax_dir / "profile_mpi2" / "log"
    assert started.returncode == 0, f"{started.stdout}\n{started.stderr}"
    try:
        proc = hosts.head(
            [sys.executable, "-c", textwrap.dedent(
                """
                import json, parallax
                rc = parallax.Client(profile="mpi2", timeout=20)
                rc.wait_for_engines(2, timeout=60)
                def about():
                    import socket
                    from mpi4py import MPI
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    s.connect(("10.77.0.1", 9))
                    comm = MPI.COMM_WORLD
                    return [comm.Get_rank(), comm.Get_size(), s.getsockname()[0], comm.allreduce(comm.Get_rank() + 1)]
                view = rc[:]
                print(json.dumps(dict(zip(map(str, view.targets), view.apply_sync(about)))))
                """
            )]  # fmt: skip
        )
        assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n" + "\n".join(
            p.read_text(errors="replace")[-2000:] for p in sorted(logs.glob("*.log"))
        )
        about = json.loads(proc.stdout.strip().splitlines()[-1])
        assert {i: (rank, size, total) for i, (rank, size, _, total) in about.items()} == {
            "0": (0, 2, 3),
            "1": (1, 2, 3),
        }, about
        assert sorted(address for _, _, address, _ in about.values()) == [
            hosts.net.address("node1"),
            hosts.net.address("node2"),
        ], about
    finally:
        hosts.parallax("cluster", "stop", "--profile", "mpi2")
    wait_for("no process left on the nodes", lambda: not hosts.left_on_nodes(), timeout=30, logs=lambda: str(hosts.left_on_nodes()))
