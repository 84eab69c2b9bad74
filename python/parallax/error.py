"""The exceptions users see, with ipyparallel 9's names, texts and hierarchy.

- `RemoteError`: one task failed on an engine. `str` is `[0:apply] ZeroDivisionError: division by
  zero`, `repr` is `<RemoteError[0]:ZeroDivisionError(division by zero)>`, and in IPython its
  traceback (the user's frames on the engine) is shown instead of the local one.
- `CompositeError`: several tasks of one call failed (`str`: `one or more exceptions raised in:
  f` plus a line per failure).
- Failures made by the controller rather than by user code (an engine died, a load-balanced task
  timed out or was aborted, its dependencies cannot be met) arrive as replies with ename
  `EngineError`, `TaskTimeout`, `TaskAborted`, `TaskKilledEngines` (a poison task: engines kept
  dying under it), `NoEngines`, `ImpossibleDependency` or `InvalidDependency`. They become RemoteErrors that are also instances of the matching
  class here, so both `except RemoteError` and `except EngineError` catch them, and several of
  them are collected into a CompositeError like any other remote failure.
- `NoClusterError`: no controller to connect to; it says how to start one.
- `MessageTooLargeError`: a request would carry a frame larger than the controller accepts (its
  `--max-message-size`); raised before anything is sent.
"""

from __future__ import annotations

import builtins
from typing import Any, Iterable

# ipyparallel exported the builtin under its error module; code imports it from there.
TimeoutError = builtins.TimeoutError


class IPythonError(Exception):
    """Base of Parallax's exceptions (named as in ipyparallel, so `except` clauses carry over)."""


class KernelError(IPythonError):
    pass


class EngineError(KernelError):
    """An engine died or does not exist."""


class NoEnginesRegistered(KernelError):
    """An operation needs engines and the cluster has none."""

    def __str__(self) -> str:
        return (
            "This operation requires engines."
            " Try client.wait_for_engines(n) to wait for engines to register."
        )


class TaskAborted(KernelError):
    """The task was aborted before it started."""


class TaskTimeout(KernelError):
    """A load-balanced task waited for its dependencies or an engine longer than its `timeout`."""


class UnmetDependency(KernelError):
    pass


class ImpossibleDependency(UnmetDependency):
    """A load-balanced task's dependencies (`after` / `follow`) can never be met."""


class InvalidDependency(ImpossibleDependency):
    """A load-balanced task depends on itself or on tasks the controller does not know."""


class NoClusterError(OSError):
    """There is no running cluster to connect to."""


class MessageTooLargeError(ValueError):
    """A request would carry a frame larger than the controller accepts; nothing was sent."""


class RemoteError(KernelError):
    """An exception raised on an engine."""

    ename: str | None = None
    evalue: str | None = None
    traceback: str | None = None
    engine_info: dict[str, Any]

    def __init__(self, ename: str, evalue: str, traceback: str | None, engine_info: dict[str, Any] | None = None):
        self.ename = ename
        self.evalue = evalue
        self.traceback = traceback
        self.engine_info = engine_info or {}
        self.args = (ename, evalue)

    def __repr__(self) -> str:
        engine_id = self.engine_info.get("engine_id", " ")
        return f"<{self._display_name()}[{engine_id}]:{self.ename}({self.evalue})>"

    def __str__(self) -> str:
        return f"{self._engine_label(self.engine_info)} {self.ename}: {self.evalue}"

    def _display_name(self) -> str:
        return type(self).__name__

    @staticmethod
    def _engine_label(engine_info: dict[str, Any]) -> str:
        if not engine_info:
            return "[Engine Exception]"
        return f"[{engine_info.get('engine_id', ' ')}:{engine_info.get('method', 'apply')}]"

    def render_traceback(self) -> list[str]:
        """The traceback as lines, headed by the engine label."""
        return [self._engine_label(self.engine_info), *(self.traceback or "No traceback available").splitlines()]

    def _render_traceback_(self) -> list[str]:
        # IPython shows this instead of the local traceback (which would only show our internals).
        return self.render_traceback()

    def print_traceback(self, excid: int | None = None) -> None:
        print("\n".join(self.render_traceback()))


class _ControllerFailure(RemoteError):
    """A RemoteError made by the controller; shown as a RemoteError."""

    def _display_name(self) -> str:
        return "RemoteError"


class RemoteEngineError(_ControllerFailure, EngineError):
    """The engine running (or meant to run) the task died or does not exist."""


class RemoteTaskTimeout(_ControllerFailure, TaskTimeout):
    """The load-balanced task waited for an engine longer than its timeout."""


class RemoteTaskAborted(_ControllerFailure, TaskAborted):
    """The task was aborted before it started."""


class TaskKilledEngines(EngineError):
    """The task was running on each of several engines when it died (as many as the controller
    allows, 3 by default): it is not run again, whatever its retries."""


class RemoteTaskKilledEngines(_ControllerFailure, TaskKilledEngines):
    """A poison task: the engines it names died under it."""


class RemoteImpossibleDependency(_ControllerFailure, ImpossibleDependency):
    """The task's dependencies can never be met, so it never ran."""


class RemoteInvalidDependency(_ControllerFailure, InvalidDependency):
    """The task names dependencies the controller does not know, so it never ran."""


class RemoteNoEngines(_ControllerFailure, NoEnginesRegistered):
    """No engine can take the task, and none is coming."""

    def __str__(self) -> str:
        return RemoteError.__str__(self)


_CONTROLLER_FAILURES: dict[str, type[RemoteError]] = {
    "EngineError": RemoteEngineError,
    "TaskTimeout": RemoteTaskTimeout,
    "TaskAborted": RemoteTaskAborted,
    "TaskKilledEngines": RemoteTaskKilledEngines,
    "NoEngines": RemoteNoEngines,
    "ImpossibleDependency": RemoteImpossibleDependency,
    "InvalidDependency": RemoteInvalidDependency,
}


def remote_error(content: dict[str, Any], engine_info: dict[str, Any] | None = None) -> RemoteError:
    """The exception for an error reply (`{ename, evalue, traceback}`)."""
    ename = str(content.get("ename") or "UnknownError")
    evalue = str(content.get("evalue") or "")
    traceback = content.get("traceback") or []
    if isinstance(traceback, list):
        traceback = "\n".join(str(line) for line in traceback)
    cls = _CONTROLLER_FAILURES.get(ename, RemoteError)
    return cls(ename, evalue, traceback or None, engine_info)


class CompositeError(RemoteError):
    """Several remote failures of one call."""

    tb_limit = 4  # how many tracebacks to render

    def __init__(self, message: str, elist: list[tuple[str, str, str | None, dict[str, Any]]]):
        Exception.__init__(self, message, elist)
        self.msg = message
        self.elist = elist
        self.args = [e[0] for e in elist]
        self.engine_info = {}
        self.ename = "CompositeError"
        self.evalue = message
        self.traceback = None

    def __str__(self) -> str:
        text = str(self.msg)
        for ename, evalue, _tb, engine_info in self.elist[: self.tb_limit]:
            text += "\n" + self._engine_label(engine_info) + ename + ": " + str(evalue)
        if len(self.elist) > self.tb_limit:
            text += f"\n.... {len(self.elist) - self.tb_limit} more exceptions ..."
        return text

    def __repr__(self) -> str:
        return f"CompositeError({len(self.elist)})"

    def render_traceback(self, excid: int | None = None) -> list[str]:
        lines: list[str] = []
        if excid is None:
            for _ename, _evalue, tb, engine_info in self.elist[: self.tb_limit]:
                lines.append(self._engine_label(engine_info) + ":")
                lines.extend((tb or "No traceback available").splitlines())
                lines.append("")
            if len(self.elist) > self.tb_limit:
                lines.append(f"... {len(self.elist) - self.tb_limit} more exceptions ...")
        else:
            _ename, _evalue, tb, engine_info = self._entry(excid)
            lines.append(self._engine_label(engine_info) + ":")
            lines.extend((tb or "No traceback available").splitlines())
        return lines

    def _render_traceback_(self) -> list[str]:
        return self.render_traceback()

    def print_traceback(self, excid: int | None = None) -> None:
        print("\n".join(self.render_traceback(excid)))

    def raise_exception(self, excid: int = 0) -> None:
        """Raise failure number `excid` as a RemoteError of its own."""
        ename, evalue, tb, engine_info = self._entry(excid)
        raise remote_error({"ename": ename, "evalue": evalue, "traceback": [tb] if tb else []}, engine_info)

    def _entry(self, excid: int) -> tuple[str, str, str | None, dict[str, Any]]:
        try:
            return self.elist[excid]
        except IndexError:
            raise IndexError(f"an exception with index {excid} does not exist") from None


def collect_exceptions(results: Iterable[Any] | dict[Any, Any], method: str = "unspecified") -> Any:
    """Raise a CompositeError if any of `results` is a RemoteError; otherwise return them."""
    values = results.values() if isinstance(results, dict) else results
    elist = []
    for value in values:
        if isinstance(value, CompositeError):
            elist.extend(value.elist)
        elif isinstance(value, RemoteError):
            elist.append((value.ename, value.evalue, value.traceback, value.engine_info))
    if elist:
        raise CompositeError(f"one or more exceptions raised in: {method}", elist)
    return results


__all__ = [
    "IPythonError",
    "KernelError",
    "EngineError",
    "NoEnginesRegistered",
    "TaskAborted",
    "TaskTimeout",
    "UnmetDependency",
    "ImpossibleDependency",
    "InvalidDependency",
    "NoClusterError",
    "TimeoutError",
    "RemoteError",
    "CompositeError",
    "collect_exceptions",
]
