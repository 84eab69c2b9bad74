"""Fixtures for the end-to-end kernel tests (see kernel_env.py for how the kernel under test is chosen).

- `isolated_env`: temporary JUPYTER_*/PARALLAX_DIR/IPYTHONDIR/MPLCONFIGDIR, parallax kernelspec installed.
- `kernel`: a started kernel with a ready BlockingKernelClient; on teardown it is shut down and no
  process of its tree (found through /proc before shutdown) may be left alive.
- `cluster`: a 2-engine cluster (`parallax cluster start --daemonize`, profile `CLUSTER_PROFILE`) in the
  isolated environment; on teardown it is stopped and no process started in that environment may be
  left alive.

A hook fails the run if any conformance test (test_conformance.py) was skipped: every test of
jupyter_kernel_test applies to a Python kernel, so a skip there means a sample went missing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from kernel_env import (
    IS_PARALLAX,
    KERNEL_UNDER_TEST,
    Cluster,
    Driver,
    IsolatedEnv,
    Kernel,
    start_cluster,
    start_kernel,
    stop_cluster,
    stop_kernel,
)

CLUSTER_PROFILE = "test"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "parallax_only: needs the parallax kernel (skipped for other kernels)")


def pytest_report_header(config: pytest.Config) -> str:
    return f"kernel under test: {KERNEL_UNDER_TEST} (PARALLAX_TEST_KERNEL)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IS_PARALLAX:
        return
    skip = pytest.mark.skip(reason=f"parallax-specific; kernel under test is {KERNEL_UNDER_TEST}")
    for item in items:
        if "parallax_only" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def isolated_env() -> Iterator[IsolatedEnv]:
    env = IsolatedEnv()
    env.apply()
    try:
        yield env
    finally:
        env.cleanup()


@pytest.fixture
def kernel(isolated_env: IsolatedEnv) -> Iterator[Kernel]:
    km, kc = start_kernel()
    try:
        yield Kernel(km, kc, Driver(kc))
    finally:
        stop_kernel(km, kc)


@pytest.fixture
def cluster(isolated_env: IsolatedEnv) -> Iterator[Cluster]:
    started = start_cluster(isolated_env, profile=CLUSTER_PROFILE, n=2)
    try:
        yield started
    finally:
        stop_cluster(started)


# --- no skipped conformance test ------------------------------------------------------------------

_conformance_skips: list[str] = []

# The one skip that is not a missing sample. IPython answers a `range` history request for the current
# session with session number 0, while `tail` reports the real session number, so jupyter_kernel_test's
# range check (session from tail == session from range) cannot pass on ipykernel, nor on a kernel that
# proxies to it; jupyter_kernel_test's own ipykernel example leaves "range" out for the same reason.
# test_kernel_client.py::test_history_range_current_session covers range requests instead.
_ALLOWED_SKIPS = {("::test_history", "History range not supported")}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and "test_conformance.py" in report.nodeid:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if any(report.nodeid.endswith(test) and why in reason for test, why in _ALLOWED_SKIPS):
            return
        context = getattr(report, "context", None)  # subtests carry their own context
        label = report.nodeid + (f" [{context.msg or context.kwargs}]" if context is not None else "")
        _conformance_skips.append(f"{label}: {reason}")


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if _conformance_skips:
        terminalreporter.section("skipped conformance tests (must be none)", red=True)
        for line in _conformance_skips:
            terminalreporter.line(line)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _conformance_skips and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# --- the Clusters page (test_dashboard.py, test_dashboard_browser.py) -----------------------------


class DashboardServer:
    """`parallax dashboard --port 0` running in an isolated environment."""

    def __init__(self, env: IsolatedEnv) -> None:
        import os
        import re
        import secrets
        import select
        import subprocess
        import sys
        from pathlib import Path

        from kernel_env import PARALLAX_BIN

        self.token = secrets.token_hex(16)
        self.env = {**env.environ(), "PARALLAX_PYTHON": sys.executable, "PARALLAX_DASHBOARD_TOKEN": self.token}
        self.parallax_dir = Path(self.env["PARALLAX_DIR"])
        self.binary = str(PARALLAX_BIN)
        if not PARALLAX_BIN.is_file():
            pytest.skip(f"no parallax binary at {PARALLAX_BIN}: run `cargo build --release`")
        help_text = subprocess.run([self.binary, "--help"], capture_output=True, text=True, env=self.env).stdout
        if "dashboard" not in help_text:
            pytest.skip(f"{self.binary} has no `dashboard` subcommand (cli/src/main.rs not wired yet)")
        self.process = subprocess.Popen(
            [self.binary, "dashboard", "--port", "0", "--max-engines", "8"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            env=self.env,
        )
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], 30)
        line = self.process.stdout.readline().decode() if ready else ""
        match = re.search(r"Parallax dashboard: (http://\S+)/\?token=(\w+)", line)
        if not match:
            self.process.kill()
            raise RuntimeError(f"the dashboard did not start: {line!r}")
        assert match.group(2) == self.token
        self.url = match.group(1)
        self._os = os

    def stop(self) -> None:
        """Stops every cluster started in this environment, then the dashboard; asserts that no
        process started in the environment is left."""
        import subprocess

        from kernel_env import describe, wait_gone

        subprocess.run([self.binary, "cluster", "stop", "--all"], env=self.env, capture_output=True, timeout=60)
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        left = wait_gone(processes_in(self.parallax_dir), 10)
        if left:
            described = describe(left)
            for pid in left:
                try:
                    self._os.kill(pid, 9)
                except ProcessLookupError:
                    pass
            raise AssertionError(f"processes left behind: {described}")


def processes_in(parallax_dir: Any) -> set[int]:
    """Live processes started with `PARALLAX_DIR=parallax_dir` (dashboard, clusters, kernels)."""
    from kernel_env import processes_using

    return processes_using(parallax_dir)


@pytest.fixture
def dashboard(isolated_env: IsolatedEnv) -> Iterator[DashboardServer]:
    server = DashboardServer(isolated_env)
    try:
        yield server
    finally:
        server.stop()
