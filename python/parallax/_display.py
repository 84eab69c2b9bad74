"""`AsyncResult.display_outputs`: re-show what tasks printed and displayed, labelled by engine
(`[stdout:0] `, `[output:1]`, `Out[0:3]: ...`), grouped as ipyparallel groups them."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from .asyncresult import AsyncResult


def _shell() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


class _StreamPrinter:
    """Prints stream text under `[stdout:0] ` prefixes, repeating a prefix only when it changes."""

    def __init__(self) -> None:
        self.last_prefix = ""
        self.trailing_newline = True

    def show(self, text: str, prefix: str = "", file: TextIO | None = None) -> None:
        if not text:
            return
        file = file or sys.stdout
        if prefix == self.last_prefix:
            prefix = ""
        elif prefix:
            self.last_prefix = prefix
        before = "\n" if prefix and not self.trailing_newline else ""
        separator = "\n" if prefix else ""
        self.trailing_newline = text.endswith("\n")
        print(f"{before}{prefix}{separator}{text}", file=file, end="")


def _republish(content: dict[str, Any], engine_id: Any) -> None:
    shell = _shell()
    if shell is None:
        return
    metadata = dict(content.get("metadata") or {})
    metadata["engine"] = engine_id
    shell.display_pub.publish(data=content.get("data", {}), metadata=metadata)


def _raw_text(text: str) -> None:
    from IPython.display import display_pretty

    display_pretty(text, raw=True)


def _display(value: Any) -> None:
    from IPython.display import display

    display(value)


def display_outputs(ar: AsyncResult, groupby: str, result_only: bool) -> None:
    if groupby not in ("type", "engine", "order"):
        raise ValueError(f"groupby must be one of 'type', 'engine', 'order', not {groupby!r}")
    printer = _StreamPrinter()
    metadata = ar._metadata_list()
    in_ipython = _shell() is not None
    results = ar.get(return_exceptions=True)
    if ar._single_result:
        md = metadata[0]
        if not result_only:
            printer.show(md["stdout"])
            printer.show(md["stderr"], file=sys.stderr)
            if in_ipython:
                for output in md["outputs"]:
                    _republish(output, md["engine_id"])
        if in_ipython and md["execute_result"] is not None:
            _display(results)
        return

    engine_ids = [md["engine_id"] for md in metadata]
    if groupby == "engine":
        for engine_id, md, value in zip(engine_ids, metadata, results):
            if not result_only:
                printer.show(md["stdout"], f"[stdout:{engine_id}] ")
                printer.show(md["stderr"], f"[stderr:{engine_id}] ", file=sys.stderr)
            if not in_ipython:
                continue
            if (md["outputs"] and not result_only) or md["execute_result"] is not None:
                _raw_text(f"[output:{engine_id}]")
            if not result_only:
                for output in md["outputs"]:
                    _republish(output, engine_id)
            if md["execute_result"] is not None:
                _display(value)
        return

    if not result_only:
        for engine_id, md in zip(engine_ids, metadata):
            printer.show(md["stdout"], f"[stdout:{engine_id}] ")
        for engine_id, md in zip(engine_ids, metadata):
            printer.show(md["stderr"], f"[stderr:{engine_id}] ", file=sys.stderr)
    if not in_ipython:
        return
    if not result_only:
        if groupby == "order":
            longest = max((len(md["outputs"]) for md in metadata), default=0)
            for i in range(longest):
                for engine_id, md in zip(engine_ids, metadata):
                    if i < len(md["outputs"]):
                        _raw_text(f"[output:{engine_id}]")
                        _republish(md["outputs"][i], engine_id)
        else:
            for engine_id, md in zip(engine_ids, metadata):
                if md["outputs"]:
                    _raw_text(f"[output:{engine_id}]")
                for output in md["outputs"]:
                    _republish(output, engine_id)
    for md, value in zip(metadata, results):
        if md["execute_result"] is not None:
            _display(value)
