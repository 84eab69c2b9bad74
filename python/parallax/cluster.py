"""`Cluster`: start and stop a Parallax cluster from Python.

    with parallax.Cluster(n=4) as rc:      # starts 4 engines, yields a connected Client
        rc[:].apply_sync(os.getpid)
    # the cluster is stopped here

It drives the `parallax` binary (`parallax cluster start -n N --profile P --daemonize`, which
returns once every engine is ready, and `parallax cluster stop --profile P`). The binary is
$PARALLAX_BIN, else `parallax` on PATH, else the one next to this Python (a venv's bin/). The
engines run ipykernel from this same Python unless $PARALLAX_PYTHON says otherwise, so they
have the same packages (and the same parallax and cloudpickle) as the client.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from .client import Client, default_profile


# The release build of the source checkout this package is installed from (editable installs).
CHECKOUT_BINARY = Path(__file__).resolve().parents[2] / "target" / "release" / "parallax"


def parallax_binary() -> str:
    """Path of the `parallax` executable: $PARALLAX_BIN, else on PATH, else next to this Python
    (the set-up links it into the venv), else this checkout's release build."""
    explicit = os.environ.get("PARALLAX_BIN")
    if explicit:
        return explicit
    found = shutil.which("parallax")
    if found:
        return found
    beside_python = Path(sys.executable).parent / "parallax"
    if beside_python.is_file():
        return str(beside_python)
    checkout = CHECKOUT_BINARY
    if checkout.is_file():
        return str(checkout)
    raise FileNotFoundError(
        "The `parallax` binary was not found: set PARALLAX_BIN to its path, or put it on PATH "
        f"(looked on PATH, in {beside_python.parent} and at {checkout})."
    )


#: The launchers `engines=` may name.
LAUNCHERS = ("local", "ssh", "mpi")


class Cluster:
    """A cluster of `n` engines (default: one per core) for `profile` (default:
    $PARALLAX_PROFILE, else "default").

    As in ipyparallel, `engines` names the launcher ("local", "ssh" or "mpi"; default: the
    profile's cluster.toml, else local), `controller_ip` is where the controller listens and
    `controller_location` what engines dial. `hosts` ("node1:2,user@node2:4", or a dict of host
    to engine count) is where the ssh launcher runs them. Anything left unset comes from the
    profile's cluster.toml."""

    def __init__(self, n: int | None = None, profile: str | None = None, *, kernel: str | None = None,
                 timeout: float = 120, restart_engines: bool = False, engines: str | None = None,
                 controller_ip: str | None = None, controller_location: str | None = None,
                 hosts: str | dict[str, int] | None = None, **_ignored: Any) -> None:
        if engines is not None and engines not in LAUNCHERS:
            raise ValueError(f"engines={engines!r}: Parallax launches engines with {', '.join(LAUNCHERS)}")
        self.n = n
        self.profile = profile or default_profile()
        self.kernel = kernel
        self.timeout = timeout
        self.restart_engines = restart_engines
        self.engines = engines
        self.controller_ip = controller_ip
        self.controller_location = controller_location
        self.hosts = hosts
        self._client: Client | None = None

    def __repr__(self) -> str:
        return f"<Cluster profile={self.profile!r} n={self.n}>"

    def _run(self, *args: str) -> str:
        command = [parallax_binary(), "cluster", *args]
        env = dict(os.environ)
        env.setdefault("PARALLAX_PYTHON", sys.executable)
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"`{' '.join(command)}` did not finish within {self.timeout} s") from None
        if done.returncode != 0:
            output = (done.stderr or done.stdout).strip()
            raise RuntimeError(f"`{' '.join(command)}` failed (exit status {done.returncode}): {output}")
        return done.stdout

    def _start_args(self) -> list[str]:
        """The `parallax cluster start` arguments for this cluster."""
        args = ["start", "--profile", self.profile, "--daemonize"]
        if self.n is not None:
            args += ["-n", str(self.n)]
        if self.kernel:
            args += ["--kernel", self.kernel]
        if self.restart_engines:
            args.append("--restart-engines")
        if self.engines:
            args += ["--engines", self.engines]
        if self.controller_ip:
            args += ["--ip", self.controller_ip]
        if self.controller_location:
            args += ["--location", self.controller_location]
        if self.hosts:
            hosts = self.hosts if isinstance(self.hosts, str) else ",".join(f"{h}:{k}" for h, k in self.hosts.items())
            args += ["--hosts", hosts]
        return args

    def start_cluster_sync(self, n: int | None = None) -> None:
        """Start the controller and engines; returns once every engine is ready."""
        if n is not None:
            self.n = n
        self._run(*self._start_args())

    def connect_client_sync(self, **client_kwargs: Any) -> Client:
        """A Client connected to this cluster (waiting until its n engines are registered)."""
        client = Client(profile=self.profile, cluster=self, **client_kwargs)
        if self.n is not None:
            client.wait_for_engines(self.n, timeout=self.timeout, interactive=False)
        self._client = client
        return client

    def start_and_connect_sync(self, n: int | None = None, activate: bool = False) -> Client:
        """Start the cluster and return a connected Client."""
        self.start_cluster_sync(n)
        try:
            client = self.connect_client_sync()
        except BaseException:
            self.stop_cluster_sync()
            raise
        if activate:
            client.activate()
        return client

    def stop_cluster_sync(self) -> None:
        """Stop the controller and all engines (and close the client this Cluster made)."""
        if self._client is not None:
            self._client.close()
            self._client = None
        self._run("stop", "--profile", self.profile)

    async def start_cluster(self, n: int | None = None) -> None:
        await asyncio.to_thread(self.start_cluster_sync, n)

    async def connect_client(self, **client_kwargs: Any) -> Client:
        return await asyncio.to_thread(self.connect_client_sync, **client_kwargs)

    async def start_and_connect(self, n: int | None = None, activate: bool = False) -> Client:
        return await asyncio.to_thread(self.start_and_connect_sync, n, activate)

    async def stop_cluster(self) -> None:
        await asyncio.to_thread(self.stop_cluster_sync)

    def __enter__(self) -> Client:
        return self.start_and_connect_sync()

    def __exit__(self, *exc: Any) -> None:
        self.stop_cluster_sync()

    async def __aenter__(self) -> Client:
        return await self.start_and_connect()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop_cluster()


__all__ = ["Cluster", "parallax_binary"]
