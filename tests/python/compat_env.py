"""Clusters and helpers for test_compat.py, which runs one set of tests against ipyparallel 9 and
against parallax.

- `Compat`: what a test gets: the module under test (`ipyparallel` or `parallax`), a client connected
  to a 2-engine cluster, and a way to connect more clients to that cluster.
- `ipyparallel_cluster()` / `parallax_cluster()`: start such a cluster in temporary folders and, on
  exit, stop it and fail if any of its processes is left.
- `interactive`: makes a function look as if it was defined in a notebook (see its docstring).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FunctionType, ModuleType
from typing import Any, TypeVar

from kernel_env import STARTUP_TIMEOUT, IsolatedEnv, assert_no_processes_left, start_cluster, stop_cluster

F = TypeVar("F", bound=Callable[..., Any])

PARALLAX_PROFILE = "compat"


@dataclass
class Compat:
    """One implementation under test: `mod` is the imported package (`import mod as ipp` in user
    code), `rc` a client of its 2-engine cluster, `connect()` opens another client of the same
    cluster (closed when the cluster stops)."""

    name: str
    mod: ModuleType
    rc: Any
    _open_client: Callable[[], Any]
    _clients: list[Any] = field(default_factory=list)

    def connect(self) -> Any:
        client = self._open_client()
        self._clients.append(client)
        return client

    def close_clients(self) -> None:
        for client in [*self._clients, self.rc]:
            client.close()


def interactive(f: F) -> F:
    """Return `f` rebuilt with `__main__`'s globals, as if it had been typed into a notebook.

    Both implementations send a function defined in an importable module by reference (the engine
    imports the module), and one defined in `__main__` by value, running it with the engine's
    namespace as its globals. Engines cannot import this test module, and users' functions live in
    `__main__` anyway, so the tests send their functions the way a notebook would.
    """
    import __main__

    rebuilt = FunctionType(f.__code__, vars(__main__), f.__name__, f.__defaults__, f.__closure__)
    rebuilt.__kwdefaults__ = f.__kwdefaults__
    rebuilt.__qualname__ = f.__qualname__
    return rebuilt  # type: ignore[return-value]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


# --- ipyparallel ----------------------------------------------------------------------------------


@contextmanager
def _scratch_environ() -> Iterator[Path]:
    """A temporary IPYTHONDIR (and matplotlib/Jupyter runtime folders) in os.environ, which the
    cluster's processes inherit. PARALLAX_DIR is set too, although ipyparallel ignores it: it tags
    every process started meanwhile, so `assert_no_processes_left` can find leftovers."""
    root = Path(tempfile.mkdtemp(prefix="compat-ipyparallel-"))
    names = ("IPYTHONDIR", "PARALLAX_DIR", "MPLCONFIGDIR", "JUPYTER_RUNTIME_DIR")
    saved = {name: os.environ.get(name) for name in names}
    for name in names:
        path = root / name.lower()
        path.mkdir()
        os.environ[name] = str(path)
    try:
        yield root
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def ipyparallel_cluster() -> Iterator[Compat]:
    """`ipyparallel.Cluster(n=2)` on 127.0.0.1 with its profile in a temporary folder."""
    import ipyparallel

    with _scratch_environ() as root:
        cluster = ipyparallel.Cluster(
            n=2,
            profile_dir=str(root / "profile"),
            controller_ip="127.0.0.1",
            log_level=logging.WARNING,
        )
        compat = None
        try:
            rc = cluster.start_and_connect_sync()
            compat = Compat("ipyparallel", ipyparallel, rc, cluster.connect_client_sync)
            rc.wait_for_engines(2, timeout=STARTUP_TIMEOUT)
            yield compat
        finally:
            try:
                if compat is not None:
                    compat.close_clients()
                cluster.stop_cluster_sync()
            finally:
                assert_no_processes_left(root / "parallax_dir")


# --- parallax -------------------------------------------------------------------------------------


@contextmanager
def parallax_cluster(extra: Iterable[str] = ()) -> Iterator[Compat]:
    """`parallax cluster start -n 2` (plus `extra` arguments) in an isolated environment (put into
    os.environ, so that `parallax.Client(profile=...)` finds the cluster's connection file), and a
    client of it."""
    import parallax

    if not hasattr(parallax, "Client"):
        raise AssertionError(f"{parallax.__file__} has no Client yet: the client API is not written")
    env = IsolatedEnv()
    env.apply()
    try:
        cluster = start_cluster(env, PARALLAX_PROFILE, n=2, extra=extra)
        compat = None
        try:
            rc = parallax.Client(profile=PARALLAX_PROFILE)
            compat = Compat("parallax", parallax, rc, lambda: parallax.Client(profile=PARALLAX_PROFILE))
            rc.wait_for_engines(2, timeout=STARTUP_TIMEOUT)
            yield compat
        finally:
            try:
                if compat is not None:
                    compat.close_clients()
            finally:
                stop_cluster(cluster)
    finally:
        env.cleanup()
