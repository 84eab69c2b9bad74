"""The lecture's exercise and homework as notebooks, executed end to end: notebooks/monte_carlo_pi.ipynb,
photoz_cross_validation.ipynb and linear_periods.ipynb run with nbclient on the parallax kernel at the
small size (`PARALLAX_NOTEBOOK_SIZE=small`), against a 2-engine cluster that `parallax.Client()` in
the notebooks finds: the default profile, in the test's own PARALLAX_DIR.

Each notebook asserts its own result in its check cell. The tests also read the line that cell
prints and hold the number to the same threshold, so that a check cell that was edited away or
never reached cannot pass unnoticed. The thresholds are what the notebooks' generated data support
(no real SDSS or LINEAR data can be had on the test machines): see each notebook's "Check" section.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from kernel_env import KERNEL_UNDER_TEST, REPO, Cluster, IsolatedEnv, start_cluster, stop_cluster

pytestmark = pytest.mark.parallax_only

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# A small run takes well under a minute on 2 engines; the bounds only turn a hang into a failure.
CELL_TIMEOUT = 180
TEST_TIMEOUT = 420


@dataclass(frozen=True)
class Expectation:
    """What one notebook must print at the small size."""

    notebook: str
    result: re.Pattern[str]  # the check cell's line, with the number in group 1
    holds: Callable[[float], bool]
    meaning: str  # what `holds` asks, for the failure message
    figures: int  # PNG figures the notebook shows
    reports_data: bool  # prints "data: ..." naming the data it ran on (the homework notebooks)


PI_SIGMA_AT_1E7 = math.sqrt(math.pi * (4 - math.pi) / 1e7)

EXPECTATIONS = [
    Expectation(
        "monte_carlo_pi.ipynb",
        re.compile(r"^pi estimate: (\d\.\d{6}) from N = 1e\+07 darts", re.MULTILINE),
        lambda pi: abs(pi - math.pi) < 5 * PI_SIGMA_AT_1E7,
        f"within 5 sigma ({5 * PI_SIGMA_AT_1E7:.1e}) of pi",
        figures=2,
        reports_data=False,
    ),
    Expectation(
        "photoz_cross_validation.ipynb",
        re.compile(r"^best cross-validated r2: (\d\.\d{4}) with max_depth=\d+, n_estimators=\d+", re.MULTILINE),
        lambda r2: r2 > 0.6,
        "above 0.6",
        figures=2,
        reports_data=True,
    ),
    Expectation(
        "linear_periods.ipynb",
        re.compile(r"^periods recovered within 1%: (\d\.\d{2})$", re.MULTILINE),
        lambda fraction: fraction >= 0.9,
        "at least 0.90",
        figures=2,
        reports_data=True,
    ),
]


@pytest.fixture
def default_cluster(isolated_env: IsolatedEnv) -> Iterator[Cluster]:
    """2 engines for the default profile: the cluster `parallax.Client()` connects to by default."""
    started = start_cluster(isolated_env, profile="default", n=2)
    try:
        yield started
    finally:
        stop_cluster(started)


def stdout_of(nb: nbformat.NotebookNode) -> str:
    return "".join(
        output.text
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "stream" and output.name == "stdout"
    )


def figures_of(nb: nbformat.NotebookNode) -> list[bytes]:
    return [
        base64.b64decode(output.data["image/png"])
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type in ("display_data", "execute_result") and "image/png" in output.data
    ]


@pytest.mark.timeout(TEST_TIMEOUT)
@pytest.mark.parametrize("expected", EXPECTATIONS, ids=lambda e: e.notebook.removesuffix(".ipynb"))
def test_homework_notebook(
    expected: Expectation, default_cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PARALLAX_NOTEBOOK_SIZE", "small")
    # The thresholds are the generated data's: keep any real data a developer has configured out.
    monkeypatch.delenv("PARALLAX_SDSS_SPECGALS", raising=False)
    monkeypatch.delenv("PARALLAX_LINEAR_DIR", raising=False)

    nb = nbformat.read(REPO / "notebooks" / expected.notebook, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name=KERNEL_UNDER_TEST,
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    try:
        client.execute()
    except CellExecutionError as error:
        pytest.fail(f"{expected.notebook} failed:\n{ANSI.sub('', str(error))}", pytrace=False)
    finally:
        nbformat.write(nb, tmp_path / expected.notebook)  # the executed copy, for a look after a failure

    printed = stdout_of(nb)
    assert re.search(r"^size: small\b", printed, re.MULTILINE), (
        f"the notebook did not run at the small size (PARALLAX_NOTEBOOK_SIZE):\n{printed}"
    )
    if expected.reports_data:
        assert re.search(r"^data: generated", printed, re.MULTILINE), (
            f"expected the generated data, whose results the thresholds are for:\n{printed}"
        )
    match = expected.result.search(printed)
    assert match, f"no line matching {expected.result.pattern!r} in the output:\n{printed}"
    value = float(match.group(1))
    assert expected.holds(value), f"{match.group(0)!r}: the result should be {expected.meaning}"

    figures = figures_of(nb)
    assert len(figures) == expected.figures, f"{len(figures)} figures, expected {expected.figures}"
    for png in figures:
        assert png.startswith(PNG_MAGIC) and len(png) > 10_000, f"not a real plot: {len(png)} bytes"
