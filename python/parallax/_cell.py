"""Running `execute_request`s (the code of `%px` cells, `view.execute`) in the engine support.

The kernel's shell costs milliseconds per message, so the support runs cells too: with
`shell.run_cell`, on the kernel's main thread, like the kernel would. What the cell shows goes to
the controller on the support's own link, parented to the request, before its `execute_reply`:

- printed text: `stream` (the support's task streams, flushed at least every `FLUSH_EVERY`
  seconds by a small thread while a cell runs, so a cell that prints a line a second shows each
  line as it comes);
- the value of the last expression: `execute_result` with the engine's execution count;
- `display()`: `display_data`, `update_display_data`, `clear_output`;
- an exception: `error` with IPython's traceback, and an error reply;
- `status` `busy` when it starts (the controller's record of when it started);
- output written to file descriptors 1 and 2 (a subprocess, a C extension): ipykernel reads it
  from a pipe in a thread of its own and writes it to its stream objects; while a cell runs,
  those writes go to the cell's streams instead, and at the end (if the descriptor was used) a
  marker written to it and seen coming back proves that everything before it has arrived.

The kernel's display hook, display publisher and traceback display are pointed at the support
for the cell's duration only (instance attributes over the class's methods, removed after), so
the kernel's own cells are untouched.
"""

from __future__ import annotations

import _signal
import linecache
import logging
import os
import select
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from ._wire import Message, iso_now

if TYPE_CHECKING:
    from .engine import EngineSupport

log = logging.getLogger("parallax")

FLUSH_EVERY = 0.1  # seconds
FD_DRAIN_TIMEOUT = 1.0  # seconds to wait for a cell's descriptor output to come through
_SIGINT = int(signal.SIGINT)
_MISSING = object()


class _Interrupts:
    """SIGINT while a cell runs, raised in the cell even when CPython would sleep through it.

    CPython runs a Python signal handler only at certain points of the main thread's bytecode.
    A SIGINT that arrives while the main thread waits for the GIL just before a blocking call
    (`time.sleep(30)` right after a `print` whose output the support's other threads are
    sending) is recorded but not handled until that call returns, 30 s later. So while a cell
    runs, the C handler also writes each signal to a pipe (`signal.set_wakeup_fd`); the flusher
    thread reads it, and if the cell's SIGINT handler has not run within `GRACE` seconds it
    sends SIGINT again, to the main thread itself, which interrupts the blocking call. Whatever
    else arrives on the pipe is passed on to the wakeup fd that was set before (an event loop's).
    """

    GRACE = 0.2  # seconds

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.previous = -1
        self.handled = False
        self.seen: float | None = None  # when a SIGINT was seen and not yet handled
        self.active = False  # a cell runs: a SIGINT sent now can only land in it
        self.lock = threading.Lock()

    def handler(self, signum: int, frame: Any) -> None:
        """The cell's SIGINT handler: KeyboardInterrupt, as `signal.default_int_handler`."""
        self.handled = True
        self.seen = None
        raise KeyboardInterrupt

    def start(self) -> None:
        """Main thread, as a cell starts."""
        self._read()
        self.handled, self.seen = False, None
        self.previous = signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)
        with self.lock:
            self.active = True

    def stop(self) -> None:
        """Main thread, as the cell ends (before its SIGINT handler is replaced)."""
        with self.lock:
            self.active = False
        signal.set_wakeup_fd(self.previous)
        self.seen = None

    def _read(self) -> bytes:
        try:
            return os.read(self.read_fd, 512)
        except OSError:
            return b""

    def check(self) -> None:
        """Flusher thread, while the cell runs."""
        data = self._read()
        if data and self.previous >= 0:
            try:
                os.write(self.previous, data)
            except OSError:
                pass
        if _SIGINT in data and not self.handled and self.seen is None:
            self.seen = time.monotonic()
        if self.seen is None or time.monotonic() - self.seen < self.GRACE:
            return
        with self.lock:
            if self.active and not self.handled:
                log.debug("SIGINT not handled within %s s; sending it to the main thread", self.GRACE)
                self.seen = time.monotonic()
                signal.pthread_kill(threading.main_thread().ident or 0, _SIGINT)


class _Flusher:
    """A daemon thread that flushes the task streams while a cell runs, and sees that an
    interrupt reaches the cell (`_Interrupts`)."""

    def __init__(self, support: EngineSupport) -> None:
        self.support = support
        self.running = threading.Event()
        self.interrupts = _Interrupts()
        self.thread = threading.Thread(target=self._main, name="parallax-cell-flush", daemon=True)
        self.thread.start()

    def _main(self) -> None:
        while not self.support.stopped:
            self.running.wait()
            while self.running.wait(0) and not self.support.stopped:
                self.support.stdout.flush_any_thread(whole_lines=True)
                self.support.stderr.flush_any_thread(whole_lines=True)
                self.interrupts.check()
                time.sleep(FLUSH_EVERY)


_flushers: dict[int, _Flusher] = {}


# The number of read(2), whose thread is blocked there with nothing read yet.
_READ_SYSCALL = {"x86_64": 0, "aarch64": 63}.get(os.uname().machine)


def _in_read_syscall(native_id: int | None) -> bool:
    """Whether thread `native_id` of this process is inside read(2) (False when unknown)."""
    if native_id is None or _READ_SYSCALL is None:
        return False
    try:
        with open(f"/proc/self/task/{native_id}/syscall", "rb") as f:
            first = f.read(32).split(b" ", 1)[0]
    except OSError:
        return False
    return first.isdigit() and int(first) == _READ_SYSCALL


class _FdCapture:
    """Sends what ipykernel reads from one redirected descriptor to a cell's stream."""

    def __init__(self, kernel_stream: Any, task_stream: Any) -> None:
        self.kernel_stream = kernel_stream
        self.task_stream = task_stream
        self.fd = kernel_stream._original_stdstream_fd
        self.marker = f"\x00parallax-{id(self):x}-{threading.get_ident():x}\x00"
        self.seen = threading.Event()
        self.tail = ""
        self.used = False

    @staticmethod
    def available(kernel_stream: Any) -> bool:
        thread = getattr(kernel_stream, "watch_fd_thread", None)
        return thread is not None and thread.is_alive() and getattr(kernel_stream, "_fid", None) is not None

    def write(self, text: str) -> int:
        self.used = True
        text = self.tail + text
        self.tail = ""
        if self.marker in text:
            before, _, after = text.partition(self.marker)
            self.task_stream.write(before + after)
            self.seen.set()
            return len(text)
        # Keep what could be the start of a marker cut by the pipe's read size.
        start = text.rfind("\x00")
        if start != -1 and self.marker.startswith(text[start:]):
            text, self.tail = text[:start], text[start:]
        if text:
            self.task_stream.write(text)
        return len(text)

    def _watcher_busy(self) -> bool:
        """Whether ipykernel's watcher thread is anywhere but waiting in `os.read` (it may hold
        output it has read and not written yet)."""
        thread = getattr(self.kernel_stream, "watch_fd_thread", None)
        frame = sys._current_frames().get(getattr(thread, "ident", None) or -1)
        if frame is None:
            return False
        if frame.f_code.co_name != "_watch_pipe_fd":
            return True
        line = linecache.getline(frame.f_code.co_filename, frame.f_lineno)
        if "os.read(" not in line:
            return True
        # At `os.read` in Python terms, but the read may have returned with output while the
        # thread waits for the GIL (a busy machine): only the read system call itself is idle.
        return not _in_read_syscall(getattr(thread, "native_id", None))

    def start(self) -> None:
        self.kernel_stream.write = self.write

    def finish(self) -> None:
        """Waits for the marker (everything written before it has come through), then lets the
        kernel's stream write as before."""
        try:
            # Only when the descriptor was used (the marker also reaches the kernel's own log).
            # Yielding first lets a watcher that has just read output get as far as writing it.
            time.sleep(0)
            pending, _, _ = select.select([self.kernel_stream._fid], [], [], 0)
            if self.used or pending or self._watcher_busy():
                os.write(self.fd, self.marker.encode())
                self.seen.wait(FD_DRAIN_TIMEOUT)
        except (OSError, ValueError):
            pass
        finally:
            self.kernel_stream.__dict__.pop("write", None)
            if self.tail:
                self.task_stream.write(self.tail)


def _flusher(support: EngineSupport) -> _Flusher:
    flusher = _flushers.get(id(support))
    if flusher is None:
        flusher = _flushers[id(support)] = _Flusher(support)
    return flusher


def override(changes: list[tuple[Any, str, Any]]) -> Callable[[], None]:
    """Sets each `target.name = value` as an instance attribute; returns what puts back what each
    target had of its own before (nothing, or an earlier override: a cell run by the support
    inside a batch of tasks gives the batch its display publisher back)."""
    saved = [(target, name, target.__dict__.get(name, _MISSING)) for target, name, _ in changes]
    for target, name, value in changes:
        setattr(target, name, value)

    def restore() -> None:
        for target, name, value in saved:
            if value is _MISSING:
                target.__dict__.pop(name, None)
            else:
                setattr(target, name, value)

    return restore


def display_message(data: Any, metadata: Any = None, transient: Any = None, update: bool = False
                    ) -> tuple[str, dict[str, Any]]:
    """The msg_type and content of what a display publisher publishes."""
    body = {"data": data, "metadata": metadata or {}, "transient": transient or {}}
    return "update_display_data" if update else "display_data", body


def run_cell(support: EngineSupport, request: Message) -> None:
    """Run one execute_request's code in the kernel's shell and send its outputs and reply."""
    shell = support.shell
    content = request.content
    code = str(content.get("code", ""))
    silent = bool(content.get("silent", False))
    store_history = bool(content.get("store_history", not silent))
    started = iso_now()
    if shell is None:
        reply = {"status": "error", "ename": "RuntimeError",
                 "evalue": "the engine's kernel has no IPython shell to run code in", "traceback": []}
        support.send_to_controller("execute_reply", reply, request,
                                   {"status": "error", "started": started, "completed": iso_now()})
        return

    # As a kernel would: the controller records the cell as started (the Clusters page shows
    # it as the engine's current task).
    support.send_to_controller("status", {"execution_state": "busy"}, request)

    def send(msg_type: str, body: dict[str, Any]) -> None:
        if not silent:
            support.send_to_controller(msg_type, body, request)

    def finish_displayhook() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        message = getattr(displayhook, "msg", None)
        displayhook.msg = None
        if message and message["content"].get("data"):
            support.stdout.flush()
            send("execute_result", message["content"])

    def publish(data: Any, metadata: Any = None, source: Any = None, *, transient: Any = None,
                update: bool = False, **_: Any) -> None:
        support.stdout.flush()
        support.stderr.flush()
        send(*display_message(data, metadata, transient, update))

    def clear_output(wait: bool = False) -> None:
        support.stdout.flush()
        send("clear_output", {"wait": wait})

    errors: list[dict[str, Any]] = []

    def show_traceback(etype: Any, evalue: Any, stb: list[str]) -> None:
        support.stdout.flush()
        support.stderr.flush()
        error = {"ename": getattr(etype, "__name__", str(etype)), "evalue": str(evalue), "traceback": stb}
        errors.append(error)
        send("error", error)

    displayhook = shell.displayhook
    display_pub = shell.display_pub
    overrides = [
        (displayhook, "finish_displayhook", finish_displayhook),
        (display_pub, "publish", publish),
        (display_pub, "clear_output", clear_output),
        (shell, "_showtraceback", show_traceback),
    ]
    restore_overrides: Callable[[], None] = lambda: None
    saved_streams = sys.stdout, sys.stderr
    support.stdout.begin(request, sys.__stdout__ if sys.stdout is None else sys.stdout)
    support.stderr.begin(request, sys.__stderr__ if sys.stderr is None else sys.stderr)
    on_main_thread = threading.current_thread() is threading.main_thread()
    flusher = _flusher(support)
    saved_handler = _signal.signal(_SIGINT, flusher.interrupts.handler) if on_main_thread else None
    if on_main_thread:
        flusher.interrupts.start()
    captures = [
        _FdCapture(kernel_stream, task_stream)
        for kernel_stream, task_stream in zip(saved_streams, (support.stdout, support.stderr))
        if _FdCapture.available(kernel_stream)
    ]
    result = None
    try:
        for capture in captures:
            capture.start()
        restore_overrides = override(overrides)
        sys.stdout, sys.stderr = support.stdout, support.stderr
        flusher.running.set()
        result = shell.run_cell(code, store_history=store_history, silent=silent)
    finally:
        for capture in captures:
            capture.finish()
        flusher.running.clear()
        sys.stdout, sys.stderr = saved_streams
        if saved_handler is not None:
            flusher.interrupts.stop()
            _signal.signal(_SIGINT, saved_handler)
        restore_overrides()
        support.stdout.flush()
        support.stderr.flush()
    count = shell.execution_count - 1 if store_history else shell.execution_count
    failed = result is not None and not result.success
    if failed:
        error = errors[-1] if errors else _error_of(result)
        reply = {"status": "error", "execution_count": count, **error}
    else:
        reply = {"status": "ok", "execution_count": count, "user_expressions": {}, "payload": []}
    metadata = {"status": reply["status"], "started": started, "completed": iso_now()}
    support.send_to_controller("execute_reply", reply, request, metadata)


def _error_of(result: Any) -> dict[str, Any]:
    """An error reply's fields for a failed run_cell whose traceback was not shown."""
    exc = result.error_in_exec or result.error_before_exec
    if exc is None:
        return {"ename": "RuntimeError", "evalue": "the cell failed", "traceback": []}
    return {"ename": type(exc).__name__, "evalue": str(exc), "traceback": [f"{type(exc).__name__}: {exc}"]}
