"""Progress bars for `wait_interactive` and `wait_for_engines`: an ipywidgets bar inside a
notebook kernel (when ipywidgets is installed), tqdm text elsewhere."""

from __future__ import annotations

import sys
from typing import Any


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def progress_bar(widget: bool | None = None, **kwargs: Any) -> Any:
    """A tqdm progress bar; `widget=None` picks the notebook bar when running in a kernel."""
    if widget is None:
        widget = False
        if _in_kernel():
            try:
                import ipywidgets  # noqa: F401
            except ImportError:
                pass
            else:
                widget = True
    if widget:
        from tqdm.notebook import tqdm_notebook

        return tqdm_notebook(**kwargs)
    from tqdm import tqdm

    kwargs.setdefault("file", sys.stdout)
    return tqdm(**kwargs)
