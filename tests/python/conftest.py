"""Fixtures for the end-to-end kernel tests (see kernel_env.py for how the kernel under test is chosen).

- `isolated_env`: temporary JUPYTER_*/PARALLAX_DIR/IPYTHONDIR/MPLCONFIGDIR, parallax kernelspec installed.
- `kernel`: a started kernel with a ready BlockingKernelClient; on teardown it is shut down and no
  process of its tree (found through /proc before shutdown) may be left alive.

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
    Driver,
    IsolatedEnv,
    Kernel,
    start_kernel,
    stop_kernel,
)


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
