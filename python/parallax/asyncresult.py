"""Handles on submitted work: `AsyncResult`, `AsyncMapResult`, `AsyncHubResult`.

Each request the client sends is a `Task`: its msg_id, its `Metadata` (engine, timestamps,
captured output) and, once the reply is in, the reply's content and raw result buffers. The
client's IO thread completes tasks as replies arrive; unpickling waits until someone asks for
the value (`get()`), so the IO thread keeps up with thousands of replies a second.

An AsyncResult groups the tasks of one call (one per engine for a DirectView apply, one per
chunk for a map). It is a `concurrent.futures.Future` that resolves when its last task does, so
`concurrent.futures.wait` and `add_done_callback` work; callbacks run in the client's IO thread.
"""

from __future__ import annotations

import concurrent.futures
import queue
import re
import threading
import time
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, Future
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, RUNNING
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import zmq

from . import _partition, error
from ._wire import parse_date, utcnow
from .serialize import deserialize_result

if TYPE_CHECKING:
    from .client import Client

# One lock orders task completion (IO thread) against listeners being added (user threads):
# a listener is either registered before completion (and called) or sees the task done.
_completion_lock = threading.Lock()

# Results are unpickled once, by whichever thread asks first; others wait for that value.
_value_lock = threading.RLock()

# Orders the first use of an AsyncResult's condition against its quiet resolution (`_resolve`).
_condition_made = threading.Lock()
_DONE_STATES = (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED)

_DATE_KEYS = ("submitted", "started", "completed", "received")
_CARRIAGE_RETURN = re.compile(r".*\r(?=[^\n])")


class Metadata(dict):
    """A task's metadata: a dict with a fixed set of keys, also readable as attributes."""

    _KEYS = (
        "msg_id",
        "submitted",
        "started",
        "completed",
        "received",
        "engine_uuid",
        "engine_id",
        "follow",
        "after",
        "status",
        "execute_input",
        "execute_result",
        "error",
        "stdout",
        "stderr",
        "outputs",
        "data",
        "label",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        dict.__init__(self, _METADATA_DEFAULTS)
        dict.update(self, outputs=[], data={})
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    @classmethod
    def fresh(cls, msg_id: str, engine_id: int | None, submitted: datetime, label: Any) -> Metadata:
        """A new task's metadata (the constructor's checks, skipped for these known keys)."""
        md = cls.__new__(cls)
        dict.update(md, _METADATA_DEFAULTS)
        dict.update(md, outputs=[], data={}, msg_id=msg_id, engine_id=engine_id, submitted=submitted, label=label)
        return md

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key: str, value: Any) -> None:
        if key not in self:
            raise AttributeError(key)
        self[key] = value

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in self:
            raise KeyError(f"{key!r} is not a metadata key")
        dict.__setitem__(self, key, value)

    def parse_dates(self) -> None:
        for key in _DATE_KEYS:
            value = dict.__getitem__(self, key)
            if isinstance(value, str):
                dict.__setitem__(self, key, parse_date(value))


_METADATA_DEFAULTS = {**dict.fromkeys(Metadata._KEYS), "stdout": "", "stderr": ""}


class Task:
    """One request and, once it is answered, its reply."""

    __slots__ = (
        "msg_id",
        "kind",
        "metadata",
        "chunk",
        "done",
        "content",
        "buffers",
        "_value",
        "_has_value",
        "_listeners",
        "sent_number",
        "tracked",
        "__weakref__",
    )

    def __init__(
        self,
        msg_id: str,
        kind: str = "apply",
        engine_id: int | None = None,
        submitted: datetime | None = None,
        chunk: int = 1,
        label: Any = None,
    ) -> None:
        self.msg_id = msg_id
        self.kind = kind  # "apply" or "execute"
        self.metadata = Metadata.fresh(msg_id, engine_id, submitted or utcnow(), label)
        self.chunk = chunk  # how many map items the task carries
        self.done = False
        self.content: dict[str, Any] = {}
        self.buffers: Sequence[Any] = ()
        self._value: Any = None
        self._has_value = False
        # A list once someone listens; None once complete.
        self._listeners: list[Callable[[Task], None]] | tuple | None = ()
        self.sent_number = 0  # the request's number in the client's outbox (0: not sent from here)
        self.tracked: Any = None  # the request's _zmqio.Tracked, when sent with track=True

    def __repr__(self) -> str:
        return f"<Task {self.kind} {self.msg_id} {'done' if self.done else 'pending'}>"

    # -- completion (IO thread) --------------------------------------------------------------------

    def add_output(self, msg_type: str, content: dict[str, Any], engine_id: int | None) -> None:
        """Record an output message of this task (stream, display_data, error, ...)."""
        md = self.metadata
        if md["engine_id"] is None and engine_id is not None:
            md["engine_id"] = engine_id
        if msg_type == "stream":
            name = content.get("name")
            if name in ("stdout", "stderr"):
                text = content.get("text", "")
                previous = md[name]
                combined = previous + text
                if "\r" in text or previous.endswith("\r"):
                    combined = _CARRIAGE_RETURN.sub("", combined)
                md[name] = combined
        elif msg_type == "display_data":
            md["outputs"].append(content)
        elif msg_type == "execute_result":
            md["execute_result"] = content
        elif msg_type == "execute_input":
            md["execute_input"] = content.get("code")
        elif msg_type == "error":
            md["error"] = error.remote_error(content, self.engine_info())

    def complete(self, content: dict[str, Any], metadata: dict[str, Any], date: str | None, buffers: list[Any]) -> None:
        """Record the reply; wakes waiters and calls listeners. A second reply is ignored."""
        md = self.metadata
        status = content.get("status", "error")
        reply = {
            "status": status,
            "started": metadata.get("started", md["started"]),
            "completed": metadata.get("completed") or date,
            "received": utcnow(),
        }
        engine_id = metadata.get("engine_id")
        if engine_id is not None:
            reply["engine_id"] = engine_id
        dict.update(md, reply)  # known keys: no need for Metadata's check of each
        with _completion_lock:
            if self.done:
                return
            self.content = content
            self.buffers = buffers
            if status != "ok":  # errors are built here, cheaply, so no one unpickles under a lock for them
                self._value = self.error()
                self._has_value = True
            self.done = True
            listeners, self._listeners = self._listeners, None
        if status == "error" and md["error"] is None:
            md["error"] = self._value  # as ipyparallel, which records the error with the outputs
        for listener in listeners or ():
            listener(self)

    def add_listener(self, listener: Callable[[Task], None]) -> bool:
        """Call `listener(task)` on completion; False (and no call) if already complete. Must be
        called with `_completion_lock` held."""
        if self.done:
            return False
        assert self._listeners is not None
        if isinstance(self._listeners, tuple):
            self._listeners = [listener]
        else:
            self._listeners.append(listener)
        return True

    # -- results (user threads) --------------------------------------------------------------------

    @property
    def failed(self) -> bool:
        return self.done and self.content.get("status") != "ok"

    def wait(self, timeout: float | None) -> bool:
        """Wait for the reply (up to `timeout` seconds; None: no limit); whether it came."""
        if self.done:
            return True
        with _completion_lock:
            if self.done:
                return True
            arrived = threading.Event()
            self.add_listener(lambda task: arrived.set())
        return arrived.wait(timeout)

    def engine_info(self) -> dict[str, Any]:
        """Which engine ran the task, for error labels ("[0:apply]"); empty when none did."""
        if self.metadata["engine_id"] is None:
            return {}
        return {"engine_id": self.metadata["engine_id"], "method": self.kind}

    def error(self) -> BaseException:
        """The exception of a failed task: a RemoteError, or (as in ipyparallel) a TaskAborted
        whose text is the msg_id for a task aborted before it started."""
        if self.content.get("status") == "aborted":
            return error.TaskAborted(self.msg_id)
        return error.remote_error(self.content, self.engine_info())

    def value(self) -> Any:
        """The task's result, or its RemoteError if it failed (built once, on first use)."""
        if self._has_value:
            return self._value
        with _value_lock:
            if not self._has_value:
                if self.failed:
                    self._value = self.error()
                elif self.kind == "execute":
                    self._value = ExecuteReply(self.msg_id, self.content, self.metadata)
                else:
                    self._value = deserialize_result(self.buffers)
                    self.buffers = ()
                self._has_value = True
        return self._value


class ExecuteReply:
    """The result of `execute` on one engine: its execution count and `Out[e:n]` value."""

    def __init__(self, msg_id: str, content: dict[str, Any], metadata: Metadata) -> None:
        self.msg_id = msg_id
        self._content = content
        self.execution_count = content.get("execution_count")
        self.metadata = metadata

    @property
    def _execute_result(self) -> dict[str, Any]:
        return self.metadata["execute_result"] or {}

    @property
    def data(self) -> dict[str, Any]:
        return self._execute_result.get("data", {})

    def __getitem__(self, key: str) -> Any:
        return self.metadata[key]

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_") or key not in self.metadata:
            raise AttributeError(key)
        return self.metadata[key]

    def __repr__(self) -> str:
        text = self.data.get("text/plain", "")
        if len(text) > 32:
            text = text[:29] + "..."
        return f"<ExecuteReply[{self.execution_count}]: {text}>"

    def _plaintext(self) -> str:
        text = self.data.get("text/plain", "")
        if not text:
            return ""
        if "\n" in text and not text.startswith("\n"):
            text = "\n" + text
        return f"Out[{self.metadata['engine_id']}:{self.execution_count}]: {text}"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self._plaintext())

    def _repr_mimebundle_(self, *args: Any, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        data = dict(self.data)
        if "text/plain" in data:
            data["text/plain"] = self._plaintext()
        return data, self._execute_result.get("metadata", {})


def _composite(tasks: list[Task], fname: str) -> error.CompositeError:
    """The CompositeError of failed tasks (nested CompositeErrors are flattened)."""
    elist: list[tuple[str, str, str | None, dict[str, Any]]] = []
    for task in tasks:
        value = task.value()
        if isinstance(value, error.CompositeError):
            elist.extend(value.elist)
        elif isinstance(value, error.RemoteError):
            elist.append((str(value.ename), str(value.evalue), value.traceback, value.engine_info))
        else:
            elist.append((type(value).__name__, str(value), None, task.engine_info()))
    return error.CompositeError(f"one or more exceptions raised in: {fname}", elist)


def _positive_or_none(timeout: float | None) -> float | None:
    return None if timeout is None or timeout < 0 else timeout


def getname(f: Any) -> str:
    """A callable's name for reprs: __name__, else .name, else str()."""
    for attribute in ("__name__", "name"):
        try:
            return str(getattr(f, attribute))
        except AttributeError:
            pass
    return str(f)


class AsyncResult(Future):
    """The pending result of a call on one or more engines."""

    _single_result = False

    def __init__(
        self,
        client: Client | None,
        children: Task | str | Sequence[Task | str],
        fname: str = "unknown",
        targets: list[int] | None = None,
        owner: bool = False,
        return_exceptions: bool = False,
        chunk_sizes: dict[str, int] | None = None,
    ) -> None:
        # Future.__init__, except that the condition is made on first use (see `_condition`),
        # and already running, so that cancel() cannot put it in a state replies can't reach.
        self._made_condition: threading.Condition | None = None
        self._state = RUNNING
        self._result = None
        self._exception: BaseException | None = None
        single = not isinstance(children, (list, tuple))
        items = [children] if single else list(children)
        self._single_result = single
        self._client = client
        self._tasks: list[Task] = [self._as_task(item) for item in items]
        self.msg_ids = [task.msg_id for task in self._tasks]
        if chunk_sizes:
            for task in self._tasks:
                task.chunk = chunk_sizes.get(task.msg_id, task.chunk)
        self._fname = fname
        self._targets = targets
        self.owner = owner
        self._return_exceptions = return_exceptions
        self._watch()

    def _as_task(self, item: Task | str) -> Task:
        if isinstance(item, Task):
            return item
        if self._client is None:
            raise TypeError(f"cannot look up task {item!r} without a client")
        return self._client._task_for(item)

    def _watch(self) -> None:
        with _completion_lock:
            self._remaining = sum(1 for task in self._tasks if task.add_listener(self._task_done))
            finished = self._remaining == 0
        if finished:
            self._finish()

    def _task_done(self, task: Task) -> None:
        with _completion_lock:
            self._remaining -= 1
            finished = self._remaining == 0
        if finished:
            self._finish()

    # A Future's condition (a Condition, its RLock and their bound methods) is most of what an
    # AsyncResult allocates, and most results of a burst are never waited on: they are done by
    # the time anyone asks. So the condition is made only when a Future method or a waiter
    # needs it, and a result that no one has waited on resolves without it. The Future's lists
    # of waiters and callbacks, which are only added to under the condition, come with it.
    _waiters: Any = ()
    _done_callbacks: Any = ()

    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        condition = self._made_condition
        if condition is None:
            with _condition_made:
                condition = self._made_condition
                if condition is None:
                    self._waiters = []
                    self._done_callbacks = []
                    condition = self._made_condition = threading.Condition()
        return condition

    def done(self) -> bool:
        return self._state in _DONE_STATES

    def _finish(self) -> None:
        failure = None if self._return_exceptions else self._failure()
        with _condition_made:
            quiet = self._made_condition is None and self._state == RUNNING
            if quiet:  # no condition: no one waits, no wait() registered a waiter
                self._exception = failure
                self._state = FINISHED
        if quiet:
            self._invoke_callbacks()
            return
        try:
            if failure is None:
                Future.set_result(self, None)
            else:
                Future.set_exception(self, failure)
        except concurrent.futures.InvalidStateError:
            pass

    def _failure(self) -> BaseException | None:
        """The exception get() raises, or None if every task succeeded (cheap: no unpickling)."""
        failed = [task for task in self._tasks if task.failed]
        if not failed:
            return None
        if self._single_result:
            return failed[0].value()
        return _composite(failed, self._fname)

    # -- state ------------------------------------------------------------------------------------

    def _wait_ready(self, timeout: float | None) -> bool:
        """Wait until every task is done. Waits on the Future's own condition (notified when
        `_finish` resolves the Future), so no extra Event is made per result."""
        if self.done():
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            while not self.done():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._condition.wait(left)
        return True

    def __repr__(self) -> str:
        if self.done():
            state = "finished" if self.successful() else "failed"
        else:
            state = "pending"
        return f"<{type(self).__name__}({self._fname}): {state}>"

    def ready(self) -> bool:
        """Whether every task has its reply."""
        return self.done()

    def wait(self, timeout: float | None = -1, return_when: Any = None) -> Any:
        """Wait up to `timeout` seconds (-1 or None: no limit). Returns whether all tasks are
        done; with `return_when` (a concurrent.futures constant), the (done, pending) sets of
        the per-task results."""
        timeout = _positive_or_none(timeout)
        if return_when is None:
            return self._wait_ready(timeout)
        parts = self.split()
        return concurrent.futures.wait(parts, timeout=timeout, return_when=return_when)

    def wait_for_output(self, timeout: float | None = -1) -> bool:
        """Outputs of a task precede its reply on the controller link, so they are complete when
        the result is."""
        return self.wait(timeout)

    def successful(self) -> bool:
        """Whether every task succeeded; RuntimeError if not all are done."""
        if not self.ready():
            raise RuntimeError("Cannot check successful() if not done.")
        return not any(task.failed for task in self._tasks)

    @property
    def sent(self) -> bool:
        """Whether every request has left this process (with `track=True`: and ZeroMQ has let
        go of its buffers, so they may be changed in place)."""
        return self._sent_within(0)

    def wait_for_send(self, timeout: float | None = -1) -> None:
        """Wait until `sent` holds; TimeoutError if it still does not after `timeout` seconds."""
        if not self._sent_within(timeout):
            raise TimeoutError("Still waiting to be sent")

    def _sent_within(self, timeout: float | None) -> bool:
        timeout = _positive_or_none(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        last = max((task.sent_number for task in self._tasks), default=0)
        if last and self._client is not None:
            if not self._client._outbox.wait_sent(last, timeout):
                return False
        for task in self._tasks:
            tracked = task.tracked
            if tracked is None or tracked.done:
                continue
            left = -1 if deadline is None else deadline - time.monotonic()
            # No tracker: it failed to send. pyzmq's wait(0) fails even when done.
            if tracked.tracker is None or (deadline is not None and left <= 0):
                return False
            try:
                tracked.tracker.wait(left)
            except zmq.NotDone:
                return False
        return True

    # -- results ----------------------------------------------------------------------------------

    def get(self, timeout: float | None = None, return_exceptions: bool | None = None, return_when: Any = None) -> Any:
        """The result, waiting up to `timeout` seconds (None or -1: no limit). Raises
        TimeoutError("Result not ready.") when it does not come in time, and the remote
        exception (RemoteError, or CompositeError for several) when the call failed.
        `return_when=FIRST_EXCEPTION` raises as soon as any task fails."""
        if return_exceptions is None:
            return_exceptions = self._return_exceptions
        if return_when == FIRST_EXCEPTION and not self.ready():
            done, _pending = self.wait(timeout, return_when=FIRST_EXCEPTION)
            for part in done:
                if not part.successful():
                    return part.get(0, return_exceptions=return_exceptions)
        if not self.wait(timeout):
            raise TimeoutError("Result not ready.")
        values = [task.value() for task in self._tasks]
        if self._single_result:
            if self._tasks[0].failed and not return_exceptions:
                raise values[0]
            return values[0]
        failed = [task for task in self._tasks if task.failed]
        if failed and not return_exceptions:
            raise _composite(failed, self._fname)
        return self._reconstruct(values)

    def _reconstruct(self, values: list[Any]) -> Any:
        return values

    def result(self, timeout: float | None = None) -> Any:  # the Future API
        return self.get(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:  # the Future API
        if not self.wait(timeout):
            raise TimeoutError("Result not ready.")
        return self._failure()

    @property
    def r(self) -> Any:
        return self.get()

    def get_dict(self, timeout: float | None = -1) -> dict[int, Any]:
        """The results keyed by engine id (one task per engine)."""
        results = self.get(timeout)
        if self._single_result:
            results = [results]
        engine_ids = [task.metadata["engine_id"] for task in self._tasks]
        out: dict[int, Any] = {}
        for engine_id, value in zip(engine_ids, results):
            if engine_id in out:
                raise ValueError(f"Cannot build dict, {engine_ids.count(engine_id)} jobs ran on engine #{engine_id}")
            out[engine_id] = value
        return out

    @property
    def result_dict(self) -> dict[int, Any]:
        return self.get_dict()

    def split(self) -> tuple[AsyncResult, ...]:
        """One AsyncResult per task."""
        if len(self._tasks) == 1:
            return (self,)
        targets = self._targets or [None] * len(self._tasks)
        return tuple(
            AsyncResult(
                self._client,
                task if not isinstance(self, AsyncMapResult) else [task],
                fname=self._fname,
                targets=[target] if target is not None else None,
                return_exceptions=self._return_exceptions,
            )
            for target, task in zip(targets, self._tasks)
        )

    # -- iteration --------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Any]:
        if self._single_result:
            raise TypeError("AsyncResults with a single result are not iterable.")
        for task in self._tasks:
            task.wait(None)
            if task.failed and not self._return_exceptions:
                raise _composite([task], self._fname)
            yield task.value()

    def __len__(self) -> int:
        """The number of items: tasks, or map items for a map."""
        return sum(task.chunk for task in self._tasks)

    @property
    def progress(self) -> int:
        """How many items are done."""
        return sum(task.chunk for task in self._tasks if task.done)

    # -- metadata ---------------------------------------------------------------------------------

    @property
    def metadata(self) -> Any:
        for task in self._tasks:
            task.metadata.parse_dates()
        if self._single_result:
            return self._tasks[0].metadata
        return [task.metadata for task in self._tasks]

    def __getitem__(self, key: Any) -> Any:
        """Results by int or slice (when ready); metadata by key name (any time)."""
        if isinstance(key, (int, slice)):
            self._check_ready()
            return self.get()[key]
        if isinstance(key, str):
            values = [md[key] for md in self._metadata_list()]
            return values[0] if self._single_result else values
        raise TypeError(f"Invalid key type {type(key)!r}, must be 'int','slice', or 'str'")

    def __getattr__(self, key: str) -> Any:
        """Metadata keys as attributes: `ar.stdout`, `ar.engine_id`, ..."""
        if key.startswith("_") or key not in Metadata._KEYS:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}")
        return self[key]

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(Metadata._KEYS))

    def _check_ready(self) -> None:
        if not self.ready():
            raise TimeoutError("Result not ready.")

    def timedelta(self, start: Any, end: Any, start_key: Callable = min, end_key: Callable = max) -> float:
        """Seconds between the earliest of `start` and the latest of `end` (timestamps or lists)."""
        if not isinstance(start, datetime):
            start = start_key(start)
        if not isinstance(end, datetime):
            end = end_key(end)
        return (end - start).total_seconds()

    @property
    def elapsed(self) -> float:
        """Seconds since submission (until the last reply, once ready)."""
        if self.ready():
            return self.wall_time
        submitted = [md["submitted"] for md in self._metadata_list() if md["submitted"]]
        return (utcnow() - min(submitted)).total_seconds() if submitted else 0.0

    @property
    def serial_time(self) -> float:
        """Sum over tasks of (completed - started): the computation time, serially."""
        self._check_ready()
        total = 0.0
        for md in self._metadata_list():
            if isinstance(md["completed"], datetime) and isinstance(md["started"], datetime):
                total += (md["completed"] - md["started"]).total_seconds()
        return total

    @property
    def wall_time(self) -> float:
        """Seconds from the first submission to the last reply."""
        self._check_ready()
        mds = self._metadata_list()
        return self.timedelta([md["submitted"] for md in mds], [md["received"] for md in mds])

    def _metadata_list(self) -> list[Metadata]:
        for task in self._tasks:
            task.metadata.parse_dates()
        return [task.metadata for task in self._tasks]

    # -- control ----------------------------------------------------------------------------------

    def abort(self) -> Any:
        """Abort the tasks that have not started yet; RuntimeError if all are done."""
        if self.ready():
            raise RuntimeError("Can't abort, I am already done!")
        if self._client is None:
            raise RuntimeError("this result has no client to send the abort through")
        return self._client.abort([task.msg_id for task in self._tasks if not task.done], block=True)

    # -- display ----------------------------------------------------------------------------------

    def wait_interactive(self, interval: float = 0.1, timeout: float | None = -1, widget: bool | None = None,
                         return_when: Any = ALL_COMPLETED) -> None:
        """Wait, showing a progress bar (an ipywidgets bar in a notebook, tqdm text otherwise)."""
        from ._progress import progress_bar

        timeout = _positive_or_none(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = progress_bar(widget=widget, total=len(self), unit="tasks", desc=self._fname)
        try:
            while not self._finished_for(return_when):
                left = interval if deadline is None else min(interval, deadline - time.monotonic())
                if left <= 0:
                    break
                self._wait_ready(left)
                bar.update(self.progress - bar.n)
            bar.update(self.progress - bar.n)
        finally:
            bar.close()

    def _finished_for(self, return_when: Any) -> bool:
        if return_when in (None, ALL_COMPLETED):
            return self.ready()
        done = [task for task in self._tasks if task.done]
        if return_when == FIRST_COMPLETED:
            return bool(done)
        if return_when == FIRST_EXCEPTION:
            return self.ready() or any(task.failed for task in done)
        raise ValueError(f"Unrecognized return_when={return_when!r}")

    def display_outputs(self, groupby: str = "type", result_only: bool = False) -> None:
        """Print (or, in IPython, display) the tasks' stdout, stderr, displays and results.

        groupby: 'type' (all stdout, then stderr, then displays, then results), 'engine' (each
        engine's in turn) or 'order' (first display of each engine, then the second, ...)."""
        self._check_ready()
        from ._display import display_outputs

        display_outputs(self, groupby, result_only)


class AsyncMapResult(AsyncResult):
    """The pending result of a map: the chunks' results joined into one list (or array)."""

    def __init__(
        self,
        client: Client | None,
        children: Sequence[Task | str],
        joiner: Callable[[Sequence[Any]], Any] = _partition.join,
        fname: str = "",
        ordered: bool = True,
        return_exceptions: bool = False,
        chunk_sizes: dict[str, int] | None = None,
    ) -> None:
        self._join = getattr(joiner, "joinPartitions", joiner)
        self.ordered = ordered
        super().__init__(
            client, list(children), fname=fname, return_exceptions=return_exceptions, chunk_sizes=chunk_sizes
        )
        self._single_result = False

    def _reconstruct(self, values: list[Any]) -> Any:
        if self._return_exceptions and any(isinstance(v, Exception) for v in values):
            flat: list[Any] = []
            for value in values:
                if isinstance(value, Exception):
                    flat.append(value)
                else:
                    flat.extend(value)
            return flat
        return self._join(values)

    def __iter__(self) -> Iterator[Any]:
        """Items as their chunks arrive: in submission order, or in arrival order when the map
        was made with ordered=False."""
        tasks = self._tasks if self.ordered else self._in_arrival_order()
        for task in tasks:
            task.wait(None)
            value = task.value()
            if task.failed:
                if self._return_exceptions:
                    yield value
                    continue
                raise _composite([task], self._fname)
            if isinstance(value, list):
                yield from value
            else:
                yield value

    def _in_arrival_order(self) -> Iterator[Task]:
        arrived: queue.SimpleQueue[Task] = queue.SimpleQueue()
        with _completion_lock:
            already = [task for task in self._tasks if not task.add_listener(arrived.put)]
        yield from already
        for _ in range(len(self._tasks) - len(already)):
            yield arrived.get()


class AsyncHubResult(AsyncResult):
    """Results of tasks this client did not send (or no longer holds), fetched from the
    controller's task database; waiting polls the controller."""

    poll_interval = 0.2

    def wait(self, timeout: float | None = -1, return_when: Any = None) -> Any:
        timeout = _positive_or_none(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.ready():
            if self._client is not None:
                self._client._refresh_from_hub([task for task in self._tasks if not task.done])
            if self.ready():
                break
            left = self.poll_interval if deadline is None else min(self.poll_interval, deadline - time.monotonic())
            if left <= 0:
                break
            self._wait_ready(left)
        if return_when is not None:
            return super().wait(0, return_when)
        return self.ready()


__all__ = ["AsyncResult", "AsyncMapResult", "AsyncHubResult", "ExecuteReply", "Metadata"]
