"""notebooks/parallel_computing.ipynb, the seed lecture ported to Python 3 and Parallax, executed by
nbclient on the parallax kernel against a 2-engine cluster of the profile "default" (the one
`parallax.Client()` connects to when no profile is named).

The notebook checks its own results with asserts (parallel_dot against np.dot, gather of a scattered
array, the sqrt check, load-balanced map against serial map, the load-balanced estimate of pi), so a
failing cell fails the test with that cell's error. Then the outputs that do not depend on chance
(ids, reprs, values of the deterministic cells) are compared exactly with what ipyparallel 9 shows.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from kernel_env import REPO, Cluster, IsolatedEnv, start_cluster, stop_cluster

pytestmark = pytest.mark.parallax_only

NOTEBOOK = REPO / "notebooks" / "parallel_computing.ipynb"
CELL_TIMEOUT = 60  # seconds; every cell takes well under one
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # colours in tracebacks

# What each cell prints (stdout), exactly.
PRINTED = {
    "connect": "[0, 1]\n",
    "client-len": "2\n",
    "dview": "<DirectView all>\n",
    "lview": "<LoadBalancedView None>\n",
    "sync-imports": "importing numpy on engine(s)\n",
    "writefile": "Writing myscript.py\n",
    "pull-a": "[5, 5]\n",
    "push-b": "[4, 4]\n",
    "show-a-b": "[5, 5]\n[4, 4]\n",
    "sqrt": "True\n",
    "estimate-pi-parallel": "3.14\n",
}

# The text/plain of each cell's result, exactly.
FINISHED_EXECUTE = "<AsyncResult(execute): finished>"
RESULTS = {
    "mul": "30",
    "apply-one": "30",
    "apply-all": "[30, 30]",
    "serial-map": "[40, 54, 70, 88]",
    "lb-map": "[40, 54, 70, 88]",
    "dview-sum": "[6, 6]",
    "slice": "<DirectView [0]>",
    "slice-sum": "[6]",
    "lview-sum": "6",
    "res-wait": "True",
    "res-ready-again": "True",
    "execute-import": FINISHED_EXECUTE,
    "after-import": "[1.4142135623730951, 1.4142135623730951]",
    "run-script": FINISHED_EXECUTE,
    "execute-add": FINISHED_EXECUTE,
    "pull-c": "[9, 9]",
    "execute-subset": FINISHED_EXECUTE,
    "pull-c-again": "[20, 9]",
    "parallel-dot": "True",
}

NAME_ERROR = "NameError: name 'math' is not defined"


@pytest.fixture
def default_cluster(isolated_env: IsolatedEnv, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    """A 2-engine cluster of the profile "default", private to this test's PARALLAX_DIR."""
    monkeypatch.delenv("PARALLAX_PROFILE", raising=False)
    cluster = start_cluster(isolated_env, profile="default", n=2)
    try:
        yield cluster
    finally:
        stop_cluster(cluster)


def stdout(cell: Any) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def result(cell: Any) -> str | None:
    found = [o.data["text/plain"] for o in cell.outputs if o.output_type == "execute_result"]
    return found[0] if len(found) == 1 else None


def texts(cell: Any) -> str:
    """Everything the cell showed as text (streams and the plain text of displays)."""
    parts = []
    for o in cell.outputs:
        if o.output_type == "stream":
            parts.append(o.text)
        elif o.output_type in ("display_data", "execute_result"):
            parts.append(o.data.get("text/plain", ""))
    return "".join(parts)


@pytest.mark.timeout(180)
def test_lecture_notebook(default_cluster: Cluster, tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # The kernel runs in tmp_path, where the notebook writes myscript.py.
    client = NotebookClient(
        nb, kernel_name="parallax", timeout=CELL_TIMEOUT, resources={"metadata": {"path": str(tmp_path)}}
    )
    failure = None
    try:
        client.execute()
    except CellExecutionError as error:
        failure = ANSI.sub("", str(error))  # names the cell and shows its traceback
    if failure is not None:  # reported outside the handler, so the traceback shows only once
        pytest.fail(f"a cell of {NOTEBOOK.name} failed:\n{failure}", pytrace=False)

    assert_expected_outputs(nb)
    assert (tmp_path / "myscript.py").is_file()


def assert_expected_outputs(nb: Any) -> None:
    """What the executed notebook must show."""
    cells = {c.id: c for c in nb.cells if c.cell_type == "code"}
    assert [c.execution_count for c in cells.values()] == list(range(1, len(cells) + 1))

    for cell_id, expected in PRINTED.items():
        assert stdout(cells[cell_id]) == expected, cell_id
    for cell_id, expected in RESULTS.items():
        assert result(cells[cell_id]) == expected, cell_id

    # The one cell that fails on purpose: code sent as text sees only the engines' imports.
    (error,) = [o for o in cells["name-error"].outputs if o.output_type == "error"]
    assert (error.ename, error.evalue) == (
        "CompositeError",
        f"one or more exceptions raised in: execute\n[0:execute]{NAME_ERROR}\n[1:execute]{NAME_ERROR}",
    )
    failed = [cid for cid, c in cells.items() if any(o.output_type == "error" for o in c.outputs)]
    assert failed == ["name-error"]

    # %px output is labelled with the engine it came from.
    for cell_id in ("px-lines", "px-cell"):
        shown = texts(cells[cell_id])
        assert "[stdout:0] " in shown and "[stdout:1] " in shown, (cell_id, shown)
    assert "square" in stdout(cells["pull-square"])
    assert any("image/png" in o.get("data", {}) for o in cells["darts"].outputs)
