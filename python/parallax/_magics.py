"""`view.activate()`: a minimal %px / %%px for plain IPython. (Under the parallax kernel the
parallel magics are native: the kernel handles them before code reaches Python.)"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .view import DirectView


def register(view: DirectView, suffix: str = "") -> None:
    """Define %px{suffix} (line and cell) and %pxresult{suffix}, running code through `view`."""
    try:
        from IPython import get_ipython
    except ImportError:
        get_ipython = None  # type: ignore[assignment]
    shell = get_ipython() if get_ipython is not None else None
    if shell is None:
        warnings.warn("The parallel magics (%px, etc.) only work within IPython.", stacklevel=3)
        return
    last: list = []

    def px(line: str, cell: str | None = None) -> None:
        code = line if cell is None else cell
        ar = view.execute(code, silent=False, block=False)
        last[:] = [ar]
        if view.block:
            ar.wait()
            ar.display_outputs()
            ar.get()

    def pxresult(line: str = "") -> None:
        if not last:
            raise RuntimeError(f"no previous %px{suffix} result to show")
        last[0].wait()
        last[0].display_outputs()

    shell.register_magic_function(px, "line_cell", f"px{suffix}")
    shell.register_magic_function(pxresult, "line", f"pxresult{suffix}")
