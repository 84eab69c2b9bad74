"""notebooks/kernel_demo.ipynb executed unattended by `jupyter nbconvert --execute` on the kernel under
test, with exact checks of every output."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from kernel_env import KERNEL_UNDER_TEST, REPO, IsolatedEnv

NOTEBOOK = REPO / "notebooks" / "kernel_demo.ipynb"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(180)
def test_kernel_demo_notebook(isolated_env: IsolatedEnv, tmp_path: Path) -> None:
    cmd = [
        sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
        f"--ExecutePreprocessor.kernel_name={KERNEL_UNDER_TEST}",
        "--ExecutePreprocessor.timeout=120",
        "--output-dir", str(tmp_path), str(NOTEBOOK),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=isolated_env.environ(), capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, f"nbconvert failed ({proc.returncode}):\n{proc.stderr[-4000:]}"

    nb = nbformat.read(tmp_path / NOTEBOOK.name, as_version=4)
    cells = {c.id: c for c in nb.cells if c.cell_type == "code"}
    outputs = {cid: c.outputs for cid, c in cells.items()}

    # print()
    assert [(o.output_type, o.get("name"), o.get("text")) for o in outputs["cell-02"]] == [
        ("stream", "stdout", "Hello from the parallax kernel!\n")
    ]

    # matplotlib figure: one display_data with a real PNG
    (fig,) = outputs["cell-04"]
    assert fig.output_type == "display_data"
    png = base64.b64decode(fig.data["image/png"])
    assert png.startswith(PNG_MAGIC), png[:16]
    assert len(png) > 10_000, f"suspiciously small plot ({len(png)} bytes)"
    assert fig.data["text/plain"].startswith("<Figure size")

    # expression value
    (result,) = outputs["cell-06"]
    assert result.output_type == "execute_result"
    assert result.data == {"text/plain": "285"}
    assert result.execution_count == cells["cell-06"].execution_count

    # the error cell (tagged raises-exception), and execution went on
    (error,) = outputs["cell-08"]
    assert (error.output_type, error.ename, error.evalue) == (
        "error",
        "ZeroDivisionError",
        "division by zero",
    )
    assert [(o.output_type, o.get("text")) for o in outputs["cell-10"]] == [
        ("stream", "still running: 200 points\n")
    ]

    counts = [c.execution_count for c in cells.values()]
    assert counts == list(range(1, len(cells) + 1)), counts
