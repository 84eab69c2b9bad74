"""Test hosts you can ssh into: Debian's OpenSSH server running in network namespaces (netns.py).

`SshHosts(net, ["node1", "node2"], env={...})` starts one `sshd` per host, listening only on that
host's address (port 22: each namespace has its own ports), and writes a client configuration,
all in a private temporary folder (0700, root's):

- `hosts.ssh_config`: an `ssh_config` for each host, by name or address (`Host node1` -> its
  address, `User root`, the client key, a known_hosts file with each host's key so
  `StrictHostKeyChecking yes` holds, `BatchMode yes`, `ConnectTimeout 5`,
  `ServerAliveInterval 1` x 3: a dead link is noticed in about 4 s).
- `hosts.ssh_command(host, argv, options)`: `["ssh", "-F", config, *options, host, "--", CMD]`,
  CMD being `argv` quoted for the remote shell (ssh joins its arguments into one command line).
- `hosts.remote_env`: the environment every session gets (`env`, plus HOME; see below).
- `hosts.bin_dir`: holds `ssh` and `scp` wrappers that add `-F config`; `hosts.env()` is
  `{"PATH": bin_dir + ":" + $PATH}`, so a plain `ssh node1 ...` (what the product's SSH launcher
  runs) reaches the test hosts.
- `hosts.processes(host)`: what runs in the host's namespace besides its sshd listener (pid ->
  command line), for asserting that nothing was left behind; `hosts.kill_processes(host)` ends
  all of it, as `kill_namespace(namespace)` does for any namespace (the clients' host, say).
- `hosts.close()` (or leaving `with SshHosts(...)`): stops each sshd, kills whatever still runs in
  the hosts' namespaces (sessions outlive the sshd listener, and detached remote processes outlive
  their sessions), checks with `ip netns pids` that nothing is left, removes the folder.

The remote environment. A session runs as root with sshd's environment, not the test's: sshd
builds it from scratch (HOME, USER, a default PATH, SSH_CONNECTION, ...), then root's login
shell (bash) runs `~/.bashrc`, because bash does so for commands arriving over ssh. `env` is
written as a `SetEnv` line in each sshd_config (OpenSSH >= 7.8), which overrides sshd's defaults
(PATH included) and whatever a client sends, so every session on those hosts sees it, with or
without a pty. `HOME` is set to a private empty folder unless `env` names one: root's real
~/.bashrc here puts pyenv's python and cargo first on PATH, which would beat the PATH given in
`env` (a real remote host's rc files can do the same: the product should name its remote python
by absolute path). The namespaces share this machine's filesystem, so paths (the venv, the
test's PARALLAX_DIR) mean the same on every host. `PermitUserEnvironment` would need a file in
root's real ~/.ssh, shared with the rest of the machine, hence not used.

What ends a remote command when the ssh client dies (tried here, OpenSSH 9.2p1; the client is
SIGKILLed, so sshd sees the TCP connection close at once; test_sshd_hosts.py asserts each case):

- no pty (`ssh host cmd`, or `-T`): sshd closes the session's pipes and nothing more; no signal.
  A command that neither reads stdin nor writes keeps running, reparented away from sshd
  (`sleep 300` is still there). A command that reads stdin sees EOF and may exit; one that writes
  stdout gets SIGPIPE (or EPIPE) on its next write, not before.
- a pty (`ssh -tt host cmd`): closing the pty master hangs up the terminal; the session's
  process group gets SIGHUP, and `sleep 300` ends within a second, as do the shell's background
  children and a python child. A child that ignores SIGHUP (`nohup`), or left the session
  (`setsid`, a daemonizing engine), is not reached. With a pty the remote stderr arrives on the
  client's stdout, merged.
- stopping the sshd listener (SIGTERM) ends no session: running sessions and their commands stay,
  new connections are refused.
- the link goes down instead (no FIN reaches sshd): the client gives up after about 3.5 s
  (`ServerAliveInterval 1` x 3) and exits 255; a new connection fails after `ConnectTimeout`
  (5 s). sshd notices only through `ClientAliveInterval 1` x `ClientAliveCountMax 3`, after about
  8 s (measured; with 2 x 3 it took 16 s), then behaves as above: a pty session's command gets
  SIGHUP, a command without a pty keeps running.

So "engines live under their ssh session" holds only with `-tt` (SIGHUP) or with a remote side
that watches its stdin and ends its engines on EOF; a plain `ssh host engine` leaves the engine
running when the launcher is killed.

Needs root, netns.py's namespaces, /usr/sbin/sshd and /usr/bin/ssh (openssh-server,
openssh-client).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import netns

SSHD = "/usr/sbin/sshd"
SSH = "/usr/bin/ssh"
SCP = "/usr/bin/scp"
KEYGEN = "/usr/bin/ssh-keygen"
PORT = 22
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


def available() -> str | None:
    """None if SSH test hosts can be made here, else why not."""
    for program in (SSHD, SSH, KEYGEN):
        if not os.access(program, os.X_OK):
            return f"{program} is not installed (openssh-server, openssh-client)"
    return netns.available()


def namespace_pids(namespace: str) -> set[int]:
    """Live processes whose network namespace is `namespace` (`ip netns pids`)."""
    proc = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True, timeout=10, check=False)
    return {int(pid) for pid in proc.stdout.split()}


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _keygen(path: Path, comment: str) -> str:
    subprocess.run(
        [KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return path.with_suffix(".pub").read_text().strip()


def _setenv_line(env: dict[str, str]) -> str:
    for name, value in env.items():
        if not name.isidentifier() or any(c in value for c in '"\n\\'):
            raise ValueError(f"cannot pass {name}={value!r} through sshd_config SetEnv")
    return "SetEnv " + " ".join(f'"{name}={value}"' for name, value in env.items()) if env else ""


class SshHosts:
    def __init__(self, net: netns.Network, hosts: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        self.net = net
        self.hosts = list(hosts or ["node1", "node2"])
        self.dir = Path(tempfile.mkdtemp(prefix="parallax-sshd-"))
        self.ssh_config = self.dir / "ssh_config"
        self.bin_dir = self.dir / "bin"
        self._daemons: dict[str, subprocess.Popen[bytes]] = {}
        try:
            (self.dir / "home").mkdir(mode=0o700)
            self.remote_env = {"HOME": str(self.dir / "home"), **(env or {})}
            self._write(self.remote_env)
            for host in self.hosts:
                self._start(host)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> SshHosts:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _write(self, env: dict[str, str]) -> None:
        client_key = self.dir / "client_key"
        (self.dir / "authorized_keys").write_text(_keygen(client_key, "parallax-test-client") + "\n")
        known_hosts = []
        client = [
            # Hosts are reached by name or by address alike.
            f"Host {' '.join(self.hosts)} {' '.join(self.net.address(host) for host in self.hosts)}",
            "    User root",
            f"    Port {PORT}",
            f"    IdentityFile {client_key}",
            "    IdentitiesOnly yes",
            f"    UserKnownHostsFile {self.dir / 'known_hosts'}",
            "    GlobalKnownHostsFile /dev/null",
            "    StrictHostKeyChecking yes",
            "    CheckHostIP no",
            "    UpdateHostKeys no",
            "    BatchMode yes",
            "    ConnectTimeout 5",
            "    ServerAliveInterval 1",
            "    ServerAliveCountMax 3",
            "    LogLevel ERROR",
        ]
        for host in self.hosts:
            address = self.net.address(host)
            folder = self.dir / host
            folder.mkdir()
            key = _keygen(folder / "ssh_host_ed25519_key", f"parallax-test-{host}")
            known_hosts.append(f"{host},{address} {' '.join(key.split()[:2])}")
            client += [f"Host {host}", f"    HostName {address}"]
            # StrictModes would refuse authorized_keys: its parents include the world-writable /tmp.
            server = [
                f"ListenAddress {address}:{PORT}",
                f"HostKey {folder / 'ssh_host_ed25519_key'}",
                f"PidFile {folder / 'sshd.pid'}",
                f"AuthorizedKeysFile {self.dir / 'authorized_keys'}",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "PrintMotd no",
                "PrintLastLog no",
                "X11Forwarding no",
                "ClientAliveInterval 1",
                "ClientAliveCountMax 3",
                "MaxStartups 100",
                "MaxSessions 100",
                "LogLevel VERBOSE",
                "Subsystem sftp internal-sftp",
                _setenv_line(env),
            ]
            (folder / "sshd_config").write_text("\n".join(server) + "\n")
        (self.dir / "known_hosts").write_text("\n".join(known_hosts) + "\n")
        # ssh reads Host blocks top down, first value wins: the per-host HostName lines come after
        # the shared settings and add to them.
        self.ssh_config.write_text("\n".join(client) + "\n")
        self.bin_dir.mkdir()
        for name, program in (("ssh", SSH), ("scp", SCP)):
            wrapper = self.bin_dir / name
            wrapper.write_text(f'#!/bin/sh\nexec {program} -F {self.ssh_config} "$@"\n')
            wrapper.chmod(0o755)

    def _start(self, host: str) -> None:
        # sshd's privilege-separated child chroots here; Debian's init script would make it.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        folder = self.dir / host
        log = folder / "sshd.log"
        with log.open("wb") as out:
            proc = self.net.popen(
                host, [SSHD, "-D", "-e", "-f", str(folder / "sshd_config")], stdout=out, stderr=subprocess.STDOUT
            )
        self._daemons[host] = proc
        ready = f"Server listening on {self.net.address(host)} port {PORT}"
        deadline = time.monotonic() + START_TIMEOUT
        while ready not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshd on {host} did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.05)

    def ssh_command(self, host: str, argv: list[str], options: list[str] | None = None) -> list[str]:
        """The argv of `ssh` running exactly `argv` on `host` through this config (`options`, such
        as `-tt`, go before the host). ssh joins its arguments into one line for the remote shell,
        so each is quoted here."""
        return [SSH, "-F", str(self.ssh_config), *(options or []), host, "--", shlex.join(argv)]

    def env(self) -> dict[str, str]:
        """Variables that make a plain `ssh HOST` (and `scp`) use this config."""
        return {"PATH": f"{self.bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}

    def log(self, host: str) -> str:
        path = self.dir / host / "sshd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def processes(self, host: str) -> dict[int, str]:
        """Processes on `host` (its namespace) other than its sshd listener: pid -> command line."""
        daemon = self._daemons.get(host)
        pids = namespace_pids(self.net.namespace(host)) - ({daemon.pid} if daemon else set())
        return {pid: command_line(pid) for pid in sorted(pids)}

    def kill_processes(self, host: str) -> None:
        """SIGKILL everything on `host` but its sshd listener, and wait until it is gone."""
        daemon = self._daemons.get(host)
        kill_namespace(self.net.namespace(host), keep={daemon.pid} if daemon else set())

    def close(self) -> None:
        for proc in self._daemons.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self._daemons.values():
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT)
        hosts = list(self._daemons)
        self._daemons.clear()
        try:
            for host in hosts:
                kill_namespace(self.net.namespace(host))
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def kill_namespace(namespace: str, keep: frozenset[int] | set[int] = frozenset()) -> None:
    """SIGKILL every process in `namespace` but `keep` until none is left (new ones may appear
    while a session is being torn down), within STOP_TIMEOUT."""
    deadline = time.monotonic() + STOP_TIMEOUT
    while pids := namespace_pids(namespace) - keep:
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes left in {namespace}: {[command_line(pid) for pid in pids]}")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
