"""Test hosts: network namespaces on one bridge, so that several "machines" run on this one.

`Network(["head", "node1"])` makes one namespace per host, each with a loopback and an `eth0`
(address `10.77.0.N/24`, N = 1, 2, ... in the order given) joined by a bridge that lives in a
namespace of its own. Namespace names carry this process's pid and a random tag, so tests running
in parallel never meet. Traffic goes only between these namespaces: they have no route anywhere
else.

- `net.address(host)`: the host's address; `net.namespace(host)`: its namespace's name.
- `net.command(host, argv)`: `argv` wrapped to run on that host (`ip netns exec NS ...`).
- `net.popen(host, argv, ...)`: start a process there; every process started this way is killed
  (SIGKILL, by pid) when the network is closed, before its namespaces are deleted.
- `net.close()` (or leaving `with Network(...) as net:`) removes everything it made.

Needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN) and `ip` from iproute2.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from typing import Any


def available() -> str | None:
    """None if namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if subprocess.run(["ip", "-V"], capture_output=True, check=False).returncode != 0:
        return "`ip` (iproute2) is not installed"
    return None


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")


class Network:
    SUBNET = "10.77.0"

    def __init__(self, hosts: list[str]) -> None:
        tag = f"{os.getpid()}-{secrets.token_hex(3)}"
        self._hosts = {name: (f"px-{name}-{tag}", f"{self.SUBNET}.{i + 1}") for i, name in enumerate(hosts)}
        self._switch = f"px-switch-{tag}"
        self._made: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        _ip("netns", "add", self._switch)
        self._made.append(self._switch)
        _ip("-n", self._switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self._switch, "link", "set", "br0", "up")
        for i, (namespace, address) in enumerate(self._hosts.values()):
            _ip("netns", "add", namespace)
            self._made.append(namespace)
            port = f"h{i}"
            _ip("link", "add", "eth0", "netns", namespace, "type", "veth", "peer", "name", port, "netns", self._switch)
            _ip("-n", self._switch, "link", "set", port, "master", "br0")
            _ip("-n", self._switch, "link", "set", port, "up")
            _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", namespace, "link", "set", "eth0", "up")
            _ip("-n", namespace, "link", "set", "lo", "up")

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def address(self, host: str) -> str:
        return self._hosts[host][1]

    def namespace(self, host: str) -> str:
        return self._hosts[host][0]

    def command(self, host: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespace(host), *argv]

    def popen(self, host: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        proc = subprocess.Popen(self.command(host, argv), **kwargs)
        self._procs.append(proc)
        return proc

    def run(self, host: str, argv: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(host, argv), capture_output=True, text=True, timeout=timeout, check=False, **kwargs
        )

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        self._procs.clear()
        for namespace in reversed(self._made):
            # A namespace whose last process is still exiting may refuse once.
            for _ in range(20):
                if subprocess.run(["ip", "netns", "del", namespace], capture_output=True, check=False).returncode == 0:
                    break
                time.sleep(0.1)
        self._made.clear()
