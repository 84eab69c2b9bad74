"""The engine support: runs `apply` requests inside an engine's Python kernel.

A stock ipykernel costs milliseconds per shell message, so `apply` does not go through the
kernel's shell. The Rust engine process, once its kernel is ready, runs one silent cell:

    import parallax.engine as _parallax_engine
    _parallax_engine.start(url=URL, key=KEY, uuid=UUID)

`start` connects a DEALER to the controller's engine socket, attaches as engine UUID (waiting up
to 10 s for `attach_reply`; it raises if that fails, and the engine then serves `execute`
only), and starts one daemon IO thread that owns the DEALER from then on.

    controller ──apply_request──▶ IO thread ──queue──▶ kernel main thread (asyncio loop)
    controller ◀──stream, apply_reply── IO thread ◀──Outbox── main thread

Each `apply_request` is queued and handed to the kernel's running asyncio loop with
`call_soon_threadsafe`, so the function runs on the kernel's main thread, in the user namespace
(`get_ipython().user_ns`), where SIGINT interrupts it like any cell. Tasks that arrive together
run in one loop callback, one after another, for at most `TIME_SLICE` seconds before the
callback reschedules itself, so the kernel's own shell messages are not starved. While a task
runs, sys.stdout / sys.stderr are swapped for writers that send `stream` messages parented to
the request (flushed before its reply), and the kernel's display publisher sends its
`display()`s as `display_data` of the request. SIGINT interrupts the task's own code only.
Tracebacks keep only the user's frames. An `abort_request` drops queued tasks that have not
started; each gets an `aborted` reply.
Anything that goes wrong in the support itself becomes an error reply, never a dead thread.

Large buffers may come and go through shared memory (`_shm`): the IO thread maps (and unlinks)
an apply_request's segments as soon as it arrives, and a reply's large buffers go through shared
memory when the request's metadata offers it from this host. The reply to any request with such
an offer says which shared memory this engine has (metadata `"shm": {"domain": ...}`), so the
client learns whether to send it segments; the IO thread sweeps the reply segments whose client
exited without reading them.
"""

from __future__ import annotations

import _signal  # signal.signal without the enum conversions of the signal module
import asyncio
import atexit
import collections
import io
import logging
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable

import zmq

from ._cell import display_message, override, run_cell
from . import _shm
from ._remote import _shell
from ._wire import PACK_VERSION, Message, Session, iso_now
from ._zmqio import Outbox, receive_waiting, send_frames, use_curve
from .serialize import deserialize_call, serialize_result

log = logging.getLogger("parallax.engine")

ATTACH_TIMEOUT = 10.0
TIME_SLICE = 0.01  # seconds of tasks per loop callback
ENGINE_HISTORY_BATCH = 100  # cells of input history written to the database at once
STREAM_FLUSH_INTERVAL = 0.2  # seconds: a task's output is sent at least this often while it prints
STREAM_FLUSH_SIZE = 64 * 1024  # characters buffered before output is sent anyway
PARTIAL_LINE_WAIT = 0.5  # seconds a running cell's unfinished line waits for its newline
_SIGINT = int(signal.SIGINT)
_OK = {"status": "ok"}  # the content of every successful apply_reply (never changed)
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep

_support: EngineSupport | None = None


def start(
    url: str, key: str, uuid: str, timeout: float = ATTACH_TIMEOUT, curve: dict[str, str] | None = None
) -> None:
    """Connect to the controller at `url`, attach as engine `uuid` and serve apply requests.
    Call on the kernel's main thread (as a cell). `curve`: the engine's CurveZMQ keys
    (`serverkey`, `publickey`, `secretkey`, Z85) when the controller's links are encrypted.
    Raises if the controller does not accept the attachment within `timeout` seconds."""
    global _support
    if _support is not None:
        _support.stop()
        _support = None
    support = EngineSupport(url, key, uuid, curve)
    _batch_history(support.shell)
    try:
        support.attach(timeout)
    except BaseException:
        support.stop()
        raise
    _support = support


def _batch_history(shell: Any) -> None:
    """Write the kernel's input history to its database in batches: every engine of a profile
    shares one history file, and a write per cell makes engines wait on each other's SQLite
    lock (about half a millisecond a cell). `In` and `%history` are unaffected; the database
    gets the entries every `ENGINE_HISTORY_BATCH` cells and when the kernel exits."""
    manager = getattr(shell, "history_manager", None)
    if manager is not None and hasattr(manager, "db_cache_size"):
        manager.db_cache_size = max(manager.db_cache_size, ENGINE_HISTORY_BATCH)


def stop() -> None:
    """Stop serving (closes the link to the controller)."""
    global _support
    if _support is not None:
        _support.stop()
        _support = None


def _event_loop() -> asyncio.AbstractEventLoop:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.get_event_loop()


def _is_internal(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_PACKAGE_DIR)


def _user_frames_only(exc_info: traceback.TracebackException, seen: set[int] | None = None) -> None:
    """Drop the support's own frames from a traceback (and from its chained exceptions)."""
    seen = set() if seen is None else seen
    if id(exc_info) in seen:
        return
    seen.add(id(exc_info))
    exc_info.stack = traceback.StackSummary.from_list([f for f in exc_info.stack if not _is_internal(f.filename)])
    for chained in (exc_info.__cause__, exc_info.__context__):
        if chained is not None:
            _user_frames_only(chained, seen)


def error_content(exc: BaseException) -> dict[str, Any]:
    """The content of an error reply for `exc`, its traceback limited to the user's frames."""
    try:
        evalue = str(exc)
    except Exception as str_error:
        evalue = f"<the exception could not be turned into text: {str_error!r}>"
    try:
        summary = traceback.TracebackException(type(exc), exc, exc.__traceback__)
        _user_frames_only(summary)
        lines = "".join(summary.format()).splitlines()
    except Exception as format_error:
        lines = [f"{type(exc).__name__}: {evalue}", f"(the traceback could not be formatted: {format_error!r})"]
    return {"status": "error", "ename": type(exc).__name__, "evalue": evalue, "traceback": lines}


class _TaskStream(io.TextIOBase):
    """sys.stdout / sys.stderr while a task runs: text becomes `stream` messages parented to the
    task's request. One pair serves all tasks (`begin` points it at the next one). `flush` sends
    from the main thread only (text written by other threads goes out with the next flush);
    `flush_any_thread` is for the thread that flushes a running cell's output. The lock keeps
    chunks in the order they were written."""

    def __init__(self, name: str, support: EngineSupport) -> None:
        self.name = name
        self._support = support
        self._request: Message | None = None
        self._original: Any = None
        self._parts: list[str] = []
        self._size = 0
        self._last_flush = 0.0
        self._lock = threading.Lock()
        self._pending_since = 0.0

    def begin(self, request: Message, original: Any) -> None:
        self._request = request
        self._original = original
        self._parts = []
        self._size = 0
        self._last_flush = time.monotonic()

    @property
    def request(self) -> Message | None:
        """The request whose output this stream takes (the last one begun)."""
        return self._request

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        # C-level writers (subprocesses, extensions) use the kernel's own descriptor.
        return self._original.fileno()

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        with self._lock:
            if not self._parts:
                self._pending_since = time.monotonic()
            self._parts.append(text)
            self._size += len(text)
        if self._size >= STREAM_FLUSH_SIZE:
            self.flush()
        elif time.monotonic() - self._last_flush >= STREAM_FLUSH_INTERVAL:
            if threading.current_thread() is threading.main_thread():
                self.flush_any_thread(whole_lines=True)
        return len(text)

    def flush(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self.flush_any_thread()

    def flush_any_thread(self, whole_lines: bool = False) -> None:
        """Send what was written. With `whole_lines` (a periodic flush while a cell runs), a
        line still being written waits for its end, unless it has waited `PARTIAL_LINE_WAIT`
        (a prompt without a newline)."""
        with self._lock:
            if not self._parts or self._request is None:
                return
            text = "".join(self._parts)
            keep = ""
            now = time.monotonic()
            if whole_lines and now - self._pending_since < PARTIAL_LINE_WAIT:
                end = text.rfind("\n") + 1
                text, keep = text[:end], text[end:]
                if not text:
                    self._parts = [keep]
                    return
            self._parts = [keep] if keep else []
            self._size = len(keep)
            self._pending_since = now
            self._last_flush = time.monotonic()
            self._support.send_to_controller("stream", {"name": self.name, "text": text}, self._request)


class EngineSupport:
    """The link of one kernel to its controller, and the queue of its apply requests."""

    def __init__(self, url: str, key: str, uuid: str, curve: dict[str, str] | None = None) -> None:
        self.url = url
        self.uuid = uuid
        self.session = Session(key)
        self.loop = _event_loop()
        self.context = zmq.Context()
        self.dealer = self.context.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.RCVHWM, 0)
        self.dealer.setsockopt(zmq.SNDHWM, 0)
        self.dealer.setsockopt(zmq.LINGER, 1000)
        use_curve(self.dealer, curve)
        self.dealer.connect(url)
        self.outbox = Outbox(self.context, "engine")
        self.shell = _shell()
        self.stdout = _TaskStream("stdout", self)
        self.stderr = _TaskStream("stderr", self)
        self.queue: collections.deque[Message] = collections.deque()
        self.lock = threading.Lock()
        self.scheduled = False
        self.in_task = False  # the main thread runs a task's code (SIGINT interrupts it)
        self.thread = threading.Thread(target=self._io_main, name="parallax-engine-io", daemon=True)
        self.stopped = False
        self.unclaimed = _shm.Unclaimed()
        self.reply_shm = {"domain": _shm.domain()}  # None: this engine cannot use shared memory

    # -- attaching (main thread, before the IO thread exists) ---------------------------------------

    def attach(self, timeout: float) -> None:
        header, frames = self.session.serialize("attach_request", {"uuid": self.uuid, "packs": PACK_VERSION})
        self.dealer.send_multipart(frames)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.dealer.poll(int(left * 1000)):
                raise TimeoutError(
                    f"the controller at {self.url} did not answer this engine's attach_request within {timeout} s"
                )
            replies = self.session.receive(self.dealer.recv_multipart())
            reply = next((r for r in replies if r.msg_type == "attach_reply" and r.parent_id == header["msg_id"]),
                         None)
            if reply is None:
                continue
            if reply.content.get("status") != "ok":
                reason = reply.content.get("evalue") or reply.content.get("ename") or "no reason given"
                raise RuntimeError(f"the controller at {self.url} refused to attach engine {self.uuid}: {reason}")
            break
        self.thread.start()
        log.debug("attached to %s as %s", self.url, self.uuid)

    # -- the IO thread -----------------------------------------------------------------------------

    def _io_main(self) -> None:
        poller = zmq.Poller()
        poller.register(self.dealer, zmq.POLLIN)
        poller.register(self.outbox.reader, zmq.POLLIN)
        sweep_ms = int(_shm.Unclaimed.SWEEP_INTERVAL * 1000)
        next_sweep = 0.0
        try:
            while True:
                events = dict(poller.poll(sweep_ms if self.unclaimed else None))
                if self.outbox.reader in events and self.outbox.send_waiting(self.dealer, self.session):
                    return
                if self.dealer in events:
                    receive_waiting(self.dealer, self.session, self._on_message)
                if self.unclaimed and time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + _shm.Unclaimed.SWEEP_INTERVAL
                    self.unclaimed.sweep()
        except zmq.ContextTerminated:
            pass
        except Exception:
            log.exception("the engine support's IO thread failed")
        finally:
            self.dealer.close()
            self.outbox.reader.close(linger=0)

    def _on_message(self, msg: Message) -> None:
        msg_type = msg.msg_type
        if msg_type in ("apply_request", "execute_request"):
            try:
                msg.buffers = _shm.attach(msg.buffers)
            except OSError:  # the task fails with the reason when it tries to read them again
                log.debug("could not map the shared memory of %s", msg.msg_id, exc_info=True)
            with self.lock:
                self.queue.append(msg)
                wake = not self.scheduled
                self.scheduled = True
            if wake:
                self.loop.call_soon_threadsafe(self._run_queued)
        elif msg_type == "abort_request":
            self._abort(set(msg.content.get("msg_ids") or ()))
        elif msg_type.endswith("_request"):
            reply_type = msg_type[: -len("_request")] + "_reply"
            content = {"status": "error", "ename": "ValueError",
                       "evalue": f"the engine support does not handle {msg_type}"}
            self._send_now(reply_type, content, msg)
        else:
            log.debug("ignored a %s from the controller", msg_type)

    def _abort(self, msg_ids: set[str]) -> None:
        with self.lock:
            aborted = [m for m in self.queue if m.msg_id in msg_ids]
            if aborted:
                self.queue = collections.deque(m for m in self.queue if m.msg_id not in msg_ids)
        for request in aborted:
            content = {"status": "aborted", "ename": "TaskAborted",
                       "evalue": f"task {request.msg_id} was aborted before it started", "traceback": []}
            now = iso_now()
            self._send_now("apply_reply", content, request, {"status": "aborted", "started": None, "completed": now})

    def _send_now(self, msg_type: str, content: dict[str, Any], parent: Message,
                  metadata: dict[str, Any] | None = None) -> None:
        """Send from the IO thread itself."""
        _header, frames = self.session.serialize(msg_type, content, parent=parent.header, metadata=metadata)
        send_frames(self.dealer, frames)

    # -- the main thread ---------------------------------------------------------------------------

    def send_to_controller(self, msg_type: str, content: dict[str, Any], parent: Message,
                           metadata: dict[str, Any] | None = None, buffers: list[Any] = (),  # type: ignore[assignment]
                           draft: bool = False) -> None:
        """Send from the main thread (through the IO thread). With `draft`, the IO thread
        serialises the message (with others, as a pack): only for content and metadata that are
        Parallax's own plain JSON, never text from user code, which may not encode."""
        if draft:
            self.outbox.put((self.session.header(msg_type), parent.header, metadata or {}, content, list(buffers)))
            return
        _header, frames = self.session.serialize(msg_type, content, parent=parent.header,
                                                 metadata=metadata, buffers=buffers)
        self.outbox.put(frames)

    def _run_queued(self) -> None:
        """Run queued tasks for up to TIME_SLICE seconds, then yield to the loop. SIGINT
        interrupts the task that runs, and nothing else (see `_on_sigint`)."""
        deadline = time.monotonic() + TIME_SLICE
        on_main_thread = threading.current_thread() is threading.main_thread()
        saved_handler = _signal.signal(_SIGINT, self._on_sigint) if on_main_thread else None
        restore_displays = self._capture_displays()
        try:
            while True:
                with self.lock:
                    if not self.queue or self.stopped:
                        self.scheduled = False
                        return
                    request = self.queue.popleft()
                self._run(request)
                if time.monotonic() >= deadline:
                    break
        except BaseException:  # e.g. an interrupted cell's late KeyboardInterrupt: keep serving
            log.debug("interrupted between tasks", exc_info=True)
        finally:
            restore_displays()
            if saved_handler is not None:
                _signal.signal(_SIGINT, saved_handler)
        with self.lock:
            if not self.queue or self.stopped:
                self.scheduled = False
                return
        self.loop.call_soon(self._run_queued)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        """SIGINT while tasks run: a KeyboardInterrupt in the task's code. Between tasks (the
        support's own bookkeeping, a reply being sent) it is ignored, as the kernel ignores it
        when idle, so an interrupt never costs a task its reply. Installed once per batch of
        tasks rather than per task: a handler swap is two system calls."""
        if self.in_task:
            raise KeyboardInterrupt

    def _capture_displays(self) -> Callable[[], None]:
        """Points the kernel's display publisher at the task that runs, for a batch of tasks:
        `display()` and `clear_output()` in a task become `display_data` / `clear_output`
        messages of that task (as its prints become `stream`s), and go to the kernel's own
        publisher when no task runs. Returns what undoes it."""
        publisher = getattr(self.shell, "display_pub", None)
        if publisher is None:
            return lambda: None
        kernel_publish, kernel_clear = publisher.publish, publisher.clear_output

        def publish(*args: Any, **kwargs: Any) -> None:
            request = self.stdout.request
            if not self.in_task or request is None:
                return kernel_publish(*args, **kwargs)
            given = dict(zip(("data", "metadata"), args), **kwargs)
            self.stdout.flush()
            self.stderr.flush()
            msg_type, body = display_message(given.get("data") or {}, given.get("metadata"), given.get("transient"),
                                             bool(given.get("update")))
            self.send_to_controller(msg_type, body, request)
            return None

        def clear_output(wait: bool = False) -> None:
            request = self.stdout.request
            if not self.in_task or request is None:
                return kernel_clear(wait)
            self.stdout.flush()
            self.send_to_controller("clear_output", {"wait": bool(wait)}, request)
            return None

        return override([(publisher, "publish", publish), (publisher, "clear_output", clear_output)])

    def _namespace(self) -> dict[str, Any]:
        """The user namespace (looked up per task: `%reset` or a new shell may replace it)."""
        if self.shell is not None:
            return self.shell.user_ns
        return sys.modules["__main__"].__dict__

    def _run(self, request: Message) -> None:
        """Run one apply_request (or execute_request) and send its outputs and reply."""
        if request.msg_type == "execute_request":
            return run_cell(self, request)
        started = iso_now()
        saved_streams = sys.stdout, sys.stderr
        self.stdout.begin(request, sys.__stdout__ if sys.stdout is None else sys.stdout)
        self.stderr.begin(request, sys.__stderr__ if sys.stderr is None else sys.stderr)
        segments: list[str] = []
        try:
            sys.stdout, sys.stderr = self.stdout, self.stderr
            # SIGINT raises only while this flag is set, which is inside this `try`: an
            # interrupt fails the task, never the support's bookkeeping around it.
            self.in_task = True
            try:
                f, args, kwargs = deserialize_call(request.buffers, self._namespace())
                result = f(*args, **kwargs)
                buffers, segments = self._result_buffers(result, request)
            finally:
                self.in_task = False
            content: dict[str, Any] = _OK
        except BaseException as exc:
            content = error_content(exc)
            buffers = []
        finally:
            sys.stdout, sys.stderr = saved_streams
        try:
            self.stdout.flush()
            self.stderr.flush()
            metadata = {"status": content["status"], "started": started, "completed": iso_now()}
            if "shm" in request.metadata:  # answers the client's offer
                metadata["shm"] = self.reply_shm
            self.send_to_controller("apply_reply", content, request, metadata, buffers, draft=content is _OK)
        except Exception as exc:  # e.g. a result zmq cannot send: still answer
            log.exception("could not send the reply to %s", request.msg_id)
            self.unclaimed.discard(segments)
            fallback = error_content(exc)
            metadata = {"status": "error", "started": started, "completed": iso_now()}
            self.send_to_controller("apply_reply", fallback, request, metadata)

    def _result_buffers(self, result: Any, request: Message) -> tuple[list[Any], list[str]]:
        """The reply's buffers for `result`, and the shared-memory segments written for them
        (when the request's client shares this engine's memory)."""
        buffers = serialize_result(result)
        client_pid = _shm.client_pid_if_shared(request.metadata)
        if client_pid is None or len(buffers) < 2:
            return buffers, []
        ((buffers, segments),) = _shm.Outgoing(buffers).name([_shm.reply_prefix(request.msg_id)])
        self.unclaimed.add(segments, client_pid)
        return buffers, segments

    # -- stopping ----------------------------------------------------------------------------------

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self.thread.is_alive():
            self.outbox.put(None)
            self.thread.join(5)
        else:
            self.dealer.close(linger=0)
            self.outbox.reader.close(linger=0)
        self.outbox.close()
        self.context.term()


atexit.register(stop)
