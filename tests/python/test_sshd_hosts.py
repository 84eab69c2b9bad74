"""SSH test hosts (sshd_hosts.py): `head` reaches `node1` and `node2` over real ssh.

Checked: each host answers by name with its own address; the fixed environment (the venv's
PATH, PARALLAX_DIR) reaches every session, and a plain `ssh` on `hosts.env()`'s PATH uses the
config; a host whose link is down fails new and open connections within seconds; and what
survives a SIGKILLed ssh client on the remote side (module docstring of sshd_hosts.py): a pty
session's command ends, so does a command watching its stdin, while a command without a pty, or
one that left the session, keeps running. Closing leaves no process in any namespace.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import netns
import sshd_hosts
from sshd_hosts import SshHosts

pytestmark = [
    pytest.mark.xdist_group("sshd_hosts"),
    pytest.mark.skipif(sshd_hosts.available() is not None, reason=str(sshd_hosts.available())),
]

VENV_BIN = str(Path(sys.executable).parent)
DEADLINE = 20.0


@pytest.fixture(scope="module")
def net() -> Iterator[netns.Network]:
    with netns.Network(["head", "node1", "node2"]) as network:
        yield network


@pytest.fixture(scope="module")
def hosts(net: netns.Network, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshHosts]:
    parallax_dir = tmp_path_factory.mktemp("parallax_dir")
    env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "PARALLAX_DIR": str(parallax_dir)}
    ssh = SshHosts(net, ["node1", "node2"], env=env)
    try:
        yield ssh
    finally:
        ssh.close()
        # ssh clients ran on head; nothing of them, nor of any session, may be left anywhere.
        left = {host: sshd_hosts.namespace_pids(net.namespace(host)) for host in ("head", "node1", "node2")}
        assert not any(left.values()), left
        assert not ssh.dir.exists()


@pytest.fixture
def clean(hosts: SshHosts, net: netns.Network) -> Iterator[SshHosts]:
    """`hosts`, with whatever a test left on head and the nodes killed afterwards."""
    yield hosts
    sshd_hosts.kill_namespace(net.namespace("head"))
    for host in hosts.hosts:
        hosts.kill_processes(host)


def ssh(net: netns.Network, hosts: SshHosts, host: str, argv: list[str], *options: str) -> str:
    proc = net.run("head", hosts.ssh_command(host, argv, list(options)), timeout=DEADLINE)
    assert proc.returncode == 0, f"{proc.returncode}: {proc.stderr}\n{hosts.log(host)[-3000:]}"
    return proc.stdout


def wait_until(what: str, check, timeout: float) -> float:
    """Seconds until `check()` held; fails after `timeout`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - start


def running(hosts: SshHosts, host: str, *markers: str) -> bool:
    """Whether, for each marker, some process on `host` has it in its command line."""
    lines = hosts.processes(host).values()
    return all(any(marker in line for line in lines) for marker in markers)


def test_each_host_answers_by_name_with_its_own_address(clean: SshHosts, net: netns.Network) -> None:
    assert ssh(net, clean, "node1", ["hostname", "-I"]).split() == [net.address("node1")]
    # By address, as mpiexec or a launcher may name it, with the same keys and known_hosts.
    assert ssh(net, clean, net.address("node1"), ["hostname", "-I"]).split() == [net.address("node1")]
    source = (
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        f"s.connect(({net.address('head')!r}, 9)); print(s.getsockname()[0])"
    )
    assert ssh(net, clean, "node2", ["python", "-c", source]).strip() == net.address("node2")


def test_the_fixed_environment_reaches_every_session(clean: SshHosts, net: netns.Network) -> None:
    for options in ([], ["-tt"]):
        out = ssh(net, clean, "node1", ["printenv", "PARALLAX_DIR", "PATH", "HOME"], *options).split()
        env = clean.remote_env
        assert out == [env["PARALLAX_DIR"], f"{VENV_BIN}:/usr/bin:/bin", str(clean.dir / "home")], (options, out)
    # A plain `ssh node2 ...`, as the SSH launcher runs it, finds the config through PATH, and
    # the remote `python` is the venv's.
    argv = ["ssh", "node2", "python -c 'import sys; print(sys.prefix)'"]
    plain = net.run("head", argv, timeout=DEADLINE, env={**os.environ, **clean.env()})
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.strip() == sys.prefix


def test_a_host_whose_link_is_down_fails_within_seconds(clean: SshHosts, net: netns.Network) -> None:
    session = net.popen(
        "head", clean.ssh_command("node2", ["sleep", "401"]), stdin=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    wait_until("the session's sleep on node2", lambda: running(clean, "node2", "sleep 401"), DEADLINE)
    link = ["ip", "-n", net.namespace("node2"), "link", "set", "eth0"]
    subprocess.run([*link, "down"], check=True, timeout=10)
    try:
        start = time.monotonic()
        refused = net.run("head", clean.ssh_command("node2", ["true"]), timeout=DEADLINE)
        assert refused.returncode == 255 and time.monotonic() - start < 10, refused.stderr
        # The open session's client notices through ServerAliveInterval/CountMax.
        waited = wait_until("the open session's client to give up", lambda: session.poll() is not None, 10)
        assert session.returncode == 255, (session.returncode, waited)
    finally:
        subprocess.run([*link, "up"], check=True, timeout=10)
        session.kill()
        session.wait(timeout=10)
    assert ssh(net, clean, "node2", ["hostname", "-I"]).split() == [net.address("node2")]


@pytest.mark.parametrize(
    ("case", "options", "command", "marker", "ends"),
    [
        ("no pty: nothing tells it", [], ["sleep", "411"], "sleep 411", False),
        ("-T: the same", ["-T"], ["sleep", "412"], "sleep 412", False),
        ("-tt: SIGHUP", ["-tt"], ["sleep", "413"], "sleep 413", True),
        # The marker matches python's own command line (no quotes), not the shell's.
        ("-tt: the shell's children too", ["-tt"], ["sh", "-c", "sleep 414 & python -c 'import time; time.sleep(60)'"],
         "python -c import time", True),
        ("no pty, stdin watched: EOF", [], ["sh", "-c", "sleep 416 & read _; kill $!"], "sleep 416", True),
        ("-tt, but it left the session", ["-tt"], ["sh", "-c", "setsid sleep 417 & sleep 418"], "sleep 417", False),
    ],
)
def test_a_killed_ssh_client_ends_the_remote_command_only_with_a_pty_or_a_stdin_watch(
    clean: SshHosts, net: netns.Network, case: str, options: list[str], command: list[str], marker: str, ends: bool
) -> None:
    client = net.popen(
        "head",
        clean.ssh_command("node1", command, options),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(f"{marker!r} on node1", lambda: running(clean, "node1", marker), DEADLINE)
    client.kill()
    client.wait(timeout=10)
    if ends:
        # Nothing of the session is left: not the command, not sshd's process for the session.
        wait_until(f"node1 to empty once its ssh client was killed ({case})", lambda: not clean.processes("node1"), 5)
    else:
        # A negative: give it the time the positive cases need, several times over.
        time.sleep(3)
        assert running(clean, "node1", marker), f"{case}: {clean.processes('node1')}"


def test_close_ends_sessions_and_detached_processes() -> None:
    with netns.Network(["a", "b"]) as net:
        hosts = SshHosts(net, ["b"], env={"PATH": "/usr/bin:/bin"})
        try:
            client = net.popen(
                "a", hosts.ssh_command("b", ["sh", "-c", "setsid sleep 421 & sleep 422"]), stdin=subprocess.PIPE
            )
            wait_until("both sleeps on b", lambda: running(hosts, "b", "sleep 421", "sleep 422"), DEADLINE)
        finally:
            hosts.close()
        assert sshd_hosts.namespace_pids(net.namespace("b")) == set()
        assert not hosts.dir.exists()
        # The session's end reaches the client as a closed connection.
        assert client.wait(timeout=10) == 255
