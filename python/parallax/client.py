"""`Client`: the connection to a Parallax cluster's controller.

Layout: one DEALER socket to the controller's client ROUTER carries everything (requests,
replies, engine outputs, notifications). A single background IO thread owns it: user threads
never touch it, they serialize and sign their messages themselves and hand the frames to the IO
thread through an `Outbox` (a deque plus an inproc wake-up). The IO thread sends them, reads
what the controller sends and dispatches it:

- `apply_reply` / `execute_reply` complete the request's `Task` (results stay pickled until
  someone asks for them);
- outputs (`stream`, `display_data`, `execute_result`, `error`, ...) go into the task's metadata;
- `engine_registered` / `engine_died` keep `ids` current;
- any other `*_reply` wakes the thread waiting for it (`_request`).

Tasks are registered before their request is sent, so no reply can arrive unclaimed, and the
client keeps every pending task until its reply comes: results are never lost. Finished tasks
stay reachable (`results`, `metadata`, `get_result`) as long as some AsyncResult holds them;
after that `get_result` fetches them from the controller's task database (`_database`).

When the controller runs on this host, the IO thread also checks once a second that its process
is alive, so waits fail with a clear error instead of hanging when the cluster dies.

Large buffers skip the controller between this client and engines that share its memory (see
`_shm`): direct apply requests to such engines carry them as shared-memory segments, and every
apply request offers the engine to answer the same way. The IO thread maps a reply's segments as
soon as it arrives, and removes what a finished task's engine did not read.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import json
import logging
import os
import signal as signal_module
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Callable

import zmq

from . import _shm, error
from ._shm import pid_alive
from ._database import TaskDatabase
from ._wire import PACK_VERSION, Draft, Message, Session
from ._zmqio import Outbox, Tracked, curve_keys, receive_waiting, use_curve
from .asyncresult import AsyncResult, Task
from .view import DirectView, LoadBalancedView

log = logging.getLogger("parallax.client")

# Messages about a task that are outputs, not its reply.
_OUTPUT_TYPES = frozenset(
    ("stream", "display_data", "update_display_data", "execute_result", "execute_input", "error", "status", "clear_output")
)
_LIVENESS_INTERVAL = 1.0  # seconds between checks that a local controller is alive
_REQUEST_TIMEOUT = 30.0  # seconds a control request (queue_status, abort, ...) may take

_live_clients: weakref.WeakSet[Client] = weakref.WeakSet()


def parallax_dir() -> Path:
    """Where profiles live: $PARALLAX_DIR, else ~/.parallax."""
    return Path(os.environ.get("PARALLAX_DIR") or Path.home() / ".parallax")


def default_profile() -> str:
    return os.environ.get("PARALLAX_PROFILE") or "default"


def connection_file(profile: str | None = None) -> Path:
    """The controller-client.json of a profile."""
    return parallax_dir() / f"profile_{profile or default_profile()}" / "security" / "controller-client.json"


def _start_hint(profile: str) -> str:
    return f"Start one with `parallax cluster start -n 4 --profile {profile}` (or parallax.Cluster(n=4, profile={profile!r}).start_and_connect_sync())."




def _bytes(n: int) -> str:
    """A byte count for people: `512 B`, `3.0 GiB`."""
    if n < 1024:
        return f"{n} B"
    size = n / 1024
    for unit in ("KiB", "MiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _is_local(url: str) -> bool:
    host = url.split("://", 1)[-1].rsplit(":", 1)[0]
    return host in ("127.0.0.1", "localhost", "::1", "[::1]")


class _ReplyWaiter:
    __slots__ = ("event", "message", "failure")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.message: Message | None = None
        self.failure: BaseException | None = None


class _TaskMapping(Mapping):
    """Read-only `msg_id -> value` view over the tasks the client still holds."""

    def __init__(self, client: Client, extract: Callable[[Task], Any], finished_only: bool) -> None:
        self._client = client
        self._extract = extract
        self._finished_only = finished_only

    def _live(self) -> dict[str, Task]:
        tasks = dict(self._client._tasks)
        if self._finished_only:
            return {k: t for k, t in tasks.items() if t.done}
        return tasks

    def __getitem__(self, msg_id: str) -> Any:
        task = self._live().get(msg_id)
        if task is None:
            raise KeyError(msg_id)
        return self._extract(task)

    def __iter__(self) -> Iterator[str]:
        return iter(self._live())

    def __len__(self) -> int:
        return len(self._live())

    def __repr__(self) -> str:
        return f"<{len(self)} entries>"


class Client(TaskDatabase):
    """A connection to a cluster: its engines (`ids`), views on them, and its task database.

    Client(url_file=None, profile=None, timeout=10): connects to the cluster of `profile`
    (default: $PARALLAX_PROFILE, else "default"), or to the controller described by `url_file`
    (a controller-client.json) or by a dict with its contents. Raises NoClusterError (an OSError)
    when there is no running controller.
    """

    block = False

    def __init__(
        self,
        connection_info: str | os.PathLike | dict[str, Any] | None = None,
        *,
        url_file: str | os.PathLike | None = None,
        profile: str | None = None,
        profile_dir: str | os.PathLike | None = None,
        timeout: float = 10,
        cluster: Any = None,
        context: zmq.Context | None = None,
        debug: bool = False,
        **_ignored: Any,
    ) -> None:
        self._closed = True  # until connected, so close()/__del__ are safe
        if debug:
            _log_to_stderr()
        self.cluster = cluster
        info, source = self._load_connection_info(connection_info, url_file, profile, profile_dir)
        self.profile = str(info.get("profile") or profile or default_profile())
        self.url = str(info["url"])
        self.timeout = timeout
        # The controller disconnects a peer that sends a larger frame (its --max-message-size).
        self.max_message_size: int | None = (
            int(info["max_message_size"]) if isinstance(info.get("max_message_size"), int) else None
        )
        self._controller_pid = int(info["controller_pid"]) if info.get("controller_pid") else None
        self._watch_controller = self._controller_pid is not None and _is_local(self.url)
        if self._watch_controller and not pid_alive(self._controller_pid):  # type: ignore[arg-type]
            raise error.NoClusterError(
                f"The cluster of profile {self.profile!r} is not running: {source} names controller pid "
                f"{self._controller_pid}, which has exited. {_start_hint(self.profile)}"
            )
        self.session = Session(str(info.get("key", "")))
        try:
            curve = curve_keys(info, source)
        except ValueError as exc:
            raise error.NoClusterError(f"Cannot use the connection file's encryption keys: {exc}") from None
        self.encrypted = curve is not None

        self.history: list[str] = []
        self.outstanding: set[str] = set()
        self._tasks: weakref.WeakValueDictionary[str, Task] = weakref.WeakValueDictionary()
        self._pending: dict[str, Task] = {}
        self._waiters: dict[str, _ReplyWaiter] = {}
        self._engines: dict[int, dict[str, Any]] = {}
        self._ids: list[int] = []
        self._engines_changed = threading.Condition()
        self._engine_events: list[dict[str, Any]] = []
        self._lost: str | None = None
        self._shm_offer = _shm.offer()
        self._engine_shm: dict[int, str | None] = {}  # engine id → its shm domain, from its replies
        self._segments: dict[str, list[str]] = {}  # msg_id → segments written for its request

        self._own_context = context is None
        self._context = context or zmq.Context()
        self._dealer = self._context.socket(zmq.DEALER)
        self._dealer.setsockopt(zmq.RCVHWM, 0)
        self._dealer.setsockopt(zmq.SNDHWM, 0)
        self._dealer.setsockopt(zmq.LINGER, 1000)
        use_curve(self._dealer, curve)
        self._dealer.connect(self.url)
        self._outbox = Outbox(self._context, "client")
        self._closed = False
        self._io_thread = threading.Thread(target=self._io_main, name="parallax-client-io", daemon=True)
        self._io_thread.start()
        _live_clients.add(self)

        try:
            reply = self._request("connect_request", {"packs": PACK_VERSION}, timeout=timeout, what="connect")
        except TimeoutError:
            self.close()
            keys = (
                " The link is encrypted: if the controller was restarted, its new keys are in a new connection file."
                if curve
                else ""
            )
            raise error.NoClusterError(
                f"The controller at {self.url} (profile {self.profile!r}) did not answer within {timeout} s. "
                f"Is the cluster running? `parallax cluster list` shows what runs.{keys} {_start_hint(self.profile)}"
            ) from None
        except BaseException:
            self.close()
            raise
        self._set_engines(reply.content.get("engines", []))

    @staticmethod
    def _load_connection_info(
        connection_info: Any, url_file: Any, profile: str | None, profile_dir: Any
    ) -> tuple[dict[str, Any], str]:
        if isinstance(connection_info, dict):
            return connection_info, "the connection info"
        path = connection_info or url_file
        if path is None and profile_dir is not None:
            path = Path(profile_dir) / "security" / "controller-client.json"
        if path is None:
            path = connection_file(profile)
        path = Path(path)
        profile_name = profile or default_profile()
        try:
            info = json.loads(path.read_text())
        except FileNotFoundError:
            raise error.NoClusterError(
                f"No Parallax cluster is running for profile {profile_name!r} (no {path}). {_start_hint(profile_name)}"
            ) from None
        except (OSError, ValueError) as exc:
            raise error.NoClusterError(f"Cannot read the connection file {path}: {exc}") from None
        if not isinstance(info, dict) or "url" not in info:
            raise error.NoClusterError(f"The connection file {path} has no controller url; is it a controller-client.json?")
        return info, str(path)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._ids)} engines"
        return f"<Client profile={self.profile!r} {self.url} {state}>"

    # -- the IO thread -----------------------------------------------------------------------------

    def _io_main(self) -> None:
        poller = zmq.Poller()
        poller.register(self._dealer, zmq.POLLIN)
        poller.register(self._outbox.reader, zmq.POLLIN)
        next_check = time.monotonic() + _LIVENESS_INTERVAL
        try:
            while True:
                events = dict(poller.poll(_LIVENESS_INTERVAL * 1000))
                if self._outbox.reader in events and self._outbox.send_waiting(self._dealer, self.session):
                    break
                if self._dealer in events:
                    receive_waiting(self._dealer, self.session, self._dispatch)
                if self._watch_controller and time.monotonic() >= next_check:
                    next_check = time.monotonic() + _LIVENESS_INTERVAL
                    self._check_controller()
        except zmq.ContextTerminated:
            pass
        except Exception:  # a bug here must not leave waiters hanging silently
            log.exception("the client's IO thread failed")
            self._fail_everything("the client's IO thread failed (see the 'parallax' log); create a new Client()")
        finally:
            self._dealer.close()
            self._outbox.reader.close(linger=0)

    def _dispatch(self, msg: Message) -> None:
        msg_type = msg.msg_type
        parent_id = msg.parent_id
        if msg_type in ("apply_reply", "execute_reply"):
            task = self._pending.pop(parent_id, None) if parent_id else None
            if task is None:
                log.debug("a %s for unknown request %s", msg_type, parent_id)
                return
            self.outstanding.discard(task.msg_id)
            self._note_engine(task, msg.metadata.get("engine_id"))
            buffers = msg.buffers
            if msg_type == "apply_reply":
                buffers = self._received_buffers(task, msg)
            task.complete(msg.content, msg.metadata, msg.header.get("date"), buffers)
        elif msg_type in _OUTPUT_TYPES:
            task = self._pending.get(parent_id) if parent_id else None
            if task is not None:
                task.add_output(msg_type, msg.content, msg.metadata.get("engine_id"))
        elif msg_type == "engine_registered":
            self._engine_registered(msg.content)
        elif msg_type == "engine_died":
            self._engine_died(msg.content)
        else:
            waiter = self._waiters.pop(parent_id, None) if parent_id else None
            if waiter is None:
                log.debug("unexpected %s (parent %s)", msg_type, parent_id)
                return
            waiter.message = msg
            waiter.event.set()

    def _received_buffers(self, task: Task, reply: Message) -> list[Any]:
        """The reply's buffers with its shared-memory segments mapped; removes the segments of
        the task that its engine did not read, and learns the engine's shared memory."""
        engine_id = reply.metadata.get("engine_id")
        engine_shm = reply.metadata.get("shm")
        if isinstance(engine_id, int) and isinstance(engine_shm, dict):
            self._engine_shm[engine_id] = engine_shm.get("domain")
        self._forget_segments(task.msg_id, replied=reply.content.get("status") == "ok")
        try:
            return _shm.attach(reply.buffers)
        except OSError as exc:  # the result's deserialization raises the reason
            log.warning("could not read the shared memory of the reply to %s: %s", task.msg_id, exc)
            return reply.buffers

    def _shares_memory(self, engine_id: int) -> bool:
        """Whether engine `engine_id` can read this client's shared-memory segments: as its
        replies said, or, before it has replied, if it runs on this host."""
        if self._shm_offer is None:
            return False
        if engine_id in self._engine_shm:
            return self._engine_shm[engine_id] == self._shm_offer["domain"]
        info = self._engines.get(engine_id) or {}
        return info.get("host") == _shm.hostname()

    def _forget_segments(self, msg_id: str, replied: bool = False) -> None:
        """Remove the segments of a finished request that its engine did not read, and, unless
        its engine `replied`, those its engine may have written for a reply that never came."""
        _shm.unlink(self._segments.pop(msg_id, ()))
        if self._shm_offer is not None and not replied:
            _shm.unlink_prefix(_shm.reply_prefix(msg_id))

    def _note_engine(self, task: Task, engine_id: Any) -> None:
        if engine_id is None:
            engine_id = task.metadata["engine_id"]
        info = self._engines.get(engine_id) if isinstance(engine_id, int) else None
        if info is not None:
            dict.__setitem__(task.metadata, "engine_uuid", info.get("uuid"))

    def _check_controller(self) -> None:
        if self._lost is None and not pid_alive(self._controller_pid):  # type: ignore[arg-type]
            self._fail_everything(
                f"the controller of profile {self.profile!r} (pid {self._controller_pid}) has exited, "
                f"so this request will not be answered. {_start_hint(self.profile)}"
            )

    def _fail_everything(self, reason: str) -> None:
        """Fail every pending task and request with `reason` (the controller is gone)."""
        self._lost = reason
        content = {"status": "error", "ename": "EngineError", "evalue": reason, "traceback": []}
        for msg_id in list(self._pending):
            task = self._pending.pop(msg_id, None)
            if task is not None:
                self.outstanding.discard(msg_id)
                self._forget_segments(msg_id)
                task.complete(content, {}, None, [])
        for msg_id in list(self._waiters):
            waiter = self._waiters.pop(msg_id, None)
            if waiter is not None:
                waiter.failure = ConnectionError(reason)
                waiter.event.set()
        with self._engines_changed:
            self._engines_changed.notify_all()

    # -- engines -----------------------------------------------------------------------------------

    def _set_engines(self, engines: list[dict[str, Any]]) -> None:
        with self._engines_changed:
            for info in engines:
                self._engines[int(info["id"])] = info
            self._ids = sorted(i for i, info in self._engines.items() if info.get("state") in ("idle", "busy", None))
            self._engines_changed.notify_all()

    def _engine_registered(self, info: dict[str, Any]) -> None:
        log.debug("engine %s registered", info.get("id"))
        with self._engines_changed:
            engine_id = int(info["id"])
            self._engines[engine_id] = info
            if engine_id not in self._ids:
                self._ids = sorted([*self._ids, engine_id])
            self._engine_events.append({"event": "register", **info})
            self._engines_changed.notify_all()

    def _engine_died(self, content: dict[str, Any]) -> None:
        log.debug("engine %s died: %s", content.get("id"), content.get("reason"))
        with self._engines_changed:
            engine_id = int(content["id"])
            self._ids = [i for i in self._ids if i != engine_id]
            if engine_id in self._engines:
                self._engines[engine_id] = {**self._engines[engine_id], "state": "dead"}
            self._engine_events.append({"event": "unregister", **content})
            self._engine_events = self._engine_events[-100:]
            self._engines_changed.notify_all()

    @property
    def ids(self) -> list[int]:
        """The ids of the live engines, sorted."""
        return list(self._ids)

    @property
    def engines(self) -> dict[int, dict[str, Any]]:
        """The controller's table of engines (id → EngineInfo), as last reported."""
        return dict(self._engines)

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, key: int | slice | list | tuple | range) -> DirectView:
        if not isinstance(key, (int, slice, tuple, list, range)):
            raise TypeError(f"key by int/slice/iterable of ints only, not {type(key)}")
        return self.direct_view(key)

    def __iter__(self) -> Iterator[DirectView]:
        for engine_id in self.ids:
            yield self.direct_view(engine_id)

    def _build_targets(self, targets: Any) -> list[int]:
        """Engine ids for `targets` ('all'/None, an id, a negative index, a slice, a list)."""
        ids = self.ids
        if not ids:
            raise error.NoEnginesRegistered("Can't build targets without any engines")
        if targets is None or (isinstance(targets, str) and targets.lower() == "all"):
            return ids
        if isinstance(targets, str):
            raise TypeError(f"{targets!r} not valid str target, must be 'all'")
        if isinstance(targets, int):
            if targets < 0:
                targets = ids[targets]
            if targets not in ids:
                raise IndexError(f"No such engine: {targets} (engines: {', '.join(map(str, ids))})")
            return [int(targets)]
        if isinstance(targets, slice):
            return ids[targets]
        if isinstance(targets, (tuple, list, range, set)):
            chosen = [int(t) for t in targets]
            missing = [t for t in chosen if t not in ids]
            if missing:
                raise IndexError(f"No such engine: {missing[0]} (engines: {', '.join(map(str, ids))})")
            return chosen
        raise TypeError(f"targets by int/slice/collection of ints only, not {type(targets)}")

    def wait_for_engines(
        self,
        n: int | None = None,
        *,
        timeout: float = -1,
        block: bool = True,
        interactive: bool | None = None,
        widget: bool | None = None,
    ) -> Any:
        """Wait until at least `n` engines are registered (n defaults to the Cluster's size).
        Raises TimeoutError after `timeout` seconds (-1: no limit), EngineError if an engine
        dies meanwhile. With block=False, returns a Future instead."""
        if n is None:
            n = getattr(self.cluster, "n", None)
            if n is None:
                raise TypeError("n engines to wait for must be specified")
        if not block:
            from concurrent.futures import ThreadPoolExecutor

            executor = ThreadPoolExecutor(1)
            future = executor.submit(self.wait_for_engines, n, timeout=timeout, interactive=False)
            executor.shutdown(wait=False)
            return future
        if interactive is None:
            interactive = _in_ipython()
        bar = None
        if interactive and len(self._ids) < n:
            from ._progress import progress_bar

            bar = progress_bar(widget=widget, initial=len(self._ids), total=n, unit="engine")
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        try:
            with self._engines_changed:
                seen_events = len(self._engine_events)
                while len(self._ids) < n:
                    died = [e for e in self._engine_events[seen_events:] if e["event"] == "unregister"]
                    if died:
                        raise error.EngineError(f"Engine {died[0]['id']} unregistered while waiting for engines.")
                    if self._lost:
                        raise ConnectionError(self._lost)
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError(f"{n} engines not ready in {timeout} seconds. Currently ready: {len(self._ids)}")
                    self._engines_changed.wait(left if left is not None else 1.0)
                    if bar is not None:
                        bar.update(len(self._ids) - bar.n)
        finally:
            if bar is not None:
                bar.close()
        return None

    # -- sending -----------------------------------------------------------------------------------

    def _send(self, item: Draft | list[Any] | Tracked) -> int:
        """Queue a message for the IO thread; returns its number in the outbox."""
        if self._closed:
            raise RuntimeError("Client cannot be used after it is closed; create a new Client()")
        return self._outbox.put(item)

    def _check_usable(self) -> None:
        if self._closed:
            raise RuntimeError("Client cannot be used after it is closed; create a new Client()")
        if self._lost:
            raise ConnectionError(self._lost)

    def _submit(
        self,
        msg_type: str,
        *,
        content: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        buffers: list[Any] = (),  # type: ignore[assignment]
        engine_id: int | None = None,
        chunk: int = 1,
        label: Any = None,
        header: dict[str, Any] | None = None,
        track: bool = False,
    ) -> Task:
        """Send an apply_request or execute_request; returns its Task (registered first). The
        request leaves as a draft: its content and metadata are Parallax's own plain JSON. With
        `track`, it leaves alone, tracked until ZeroMQ lets go of its buffers (`ar.sent`)."""
        self._check_usable()
        header = header or self.session.header(msg_type)
        draft = (header, {}, metadata or {}, content if content is not None else {}, list(buffers))
        item: Draft | Tracked = Tracked(draft) if track else draft
        msg_id = header["msg_id"]
        kind = "execute" if msg_type == "execute_request" else "apply"
        task = Task(msg_id, kind, engine_id=engine_id, chunk=chunk, label=label)
        if engine_id is not None and engine_id in self._engines:
            task.metadata["engine_uuid"] = self._engines[engine_id].get("uuid")
        self._pending[msg_id] = task
        self._tasks[msg_id] = task
        self.outstanding.add(msg_id)
        self.history.append(msg_id)
        if track:
            task.tracked = item
        try:
            task.sent_number = self._send(item)
        except BaseException:
            self._pending.pop(msg_id, None)
            self.outstanding.discard(msg_id)
            raise
        return task

    def _submit_apply(self, call: list[Any], metadata: dict[str, Any], engine_id: int | None = None,
                      chunk: int = 1, label: Any = None, track: bool = False) -> Task:
        """Send one apply_request carrying `call` (see `_submit_applies`)."""
        return self._submit_applies(call, [(metadata, engine_id)], chunk=chunk, label=label, track=track)[0]

    def _submit_apply_each(self, call: list[Any], engine_ids: list[int], label: Any = None,
                           track: bool = False) -> list[Task]:
        """Send the same call to each engine (direct)."""
        routes = [({"engine": e}, e) for e in engine_ids]
        return self._submit_applies(call, routes, label=label, track=track)

    def _submit_applies(self, call: list[Any], routes: list[tuple[dict[str, Any], int | None]],
                        chunk: int = 1, label: Any = None, track: bool = False) -> list[Task]:
        """Send an apply_request carrying `call` for each (metadata, engine id or None) of
        `routes`. Its large buffers go through shared memory to the engines that share it (never
        load-balanced requests, see `_shm`), written once and named for every request before the
        first leaves; each request offers a reply the same way."""
        self._check_usable()
        headers = [self.session.header("apply_request") for _ in routes]
        messages = [call] * len(routes)
        if self._shm_offer is not None:
            routes = [({**metadata, "shm": self._shm_offer}, engine_id) for metadata, engine_id in routes]
            sharing = [i for i, (_, engine_id) in enumerate(routes)
                       if engine_id is not None and self._shares_memory(engine_id)]
            if sharing:
                prefixes = [_shm.request_prefix(headers[i]["msg_id"]) for i in sharing]
                for i, (buffers, segments) in zip(sharing, _shm.Outgoing(call).name(prefixes)):
                    messages[i] = buffers
                    if segments:
                        self._segments[headers[i]["msg_id"]] = segments
        try:
            for buffers in messages:
                self._check_frame_sizes(buffers)
        except BaseException:
            for header in headers:
                self._forget_segments(header["msg_id"])
            raise
        tasks: list[Task] = []
        try:
            for header, buffers, (metadata, engine_id) in zip(headers, messages, routes):
                tasks.append(self._submit("apply_request", content={}, metadata=metadata, buffers=buffers,
                                          engine_id=engine_id, chunk=chunk, label=label, header=header,
                                          track=track))
        except BaseException:
            for header in headers[len(tasks):]:
                self._forget_segments(header["msg_id"])
            raise
        return tasks

    def _check_frame_sizes(self, buffers: list[Any]) -> None:
        """Raise MessageTooLargeError if a frame is larger than the controller accepts: it would
        disconnect this client instead, and the request would wait for ever."""
        limit = self.max_message_size
        if limit is None:
            return
        for buffer in buffers:
            try:
                size = memoryview(buffer).nbytes
            except TypeError:
                size = len(buffer)
            if size > limit:
                raise error.MessageTooLargeError(
                    f"a buffer of {_bytes(size)} is larger than the controller of profile {self.profile!r} "
                    f"accepts ({_bytes(limit)}, its --max-message-size); nothing was sent. Send the data in "
                    f"parts (view.scatter), or start the cluster with a larger --max-message-size."
                )

    def _submit_execute(self, code: str, engine_id: int, silent: bool = False, label: Any = None) -> Task:
        content = {
            "code": code,
            "silent": bool(silent),
            # As ipyparallel (whose requests leave it to the kernel's default): outputs of a
            # non-silent execute get the engine's own execution count, `Out[0:9]`.
            "store_history": not silent,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": False,
        }
        return self._submit("execute_request", content=content, metadata={"engine": engine_id},
                            engine_id=engine_id, label=label)

    def _request(self, msg_type: str, content: dict[str, Any] | None = None, timeout: float | None = None,
                 what: str | None = None) -> Message:
        """Send a control request and wait for its reply; raises the reply's error."""
        self._check_usable()
        header, frames = self.session.serialize(msg_type, content or {})
        waiter = _ReplyWaiter()
        self._waiters[header["msg_id"]] = waiter
        self._send(frames)
        limit = _REQUEST_TIMEOUT if timeout is None else timeout
        if not waiter.event.wait(limit):
            self._waiters.pop(header["msg_id"], None)
            raise TimeoutError(
                f"The controller did not answer the {what or msg_type} request within {limit} s; "
                f"is the cluster of profile {self.profile!r} still running (`parallax cluster list`)?"
            )
        if waiter.failure is not None:
            raise waiter.failure
        assert waiter.message is not None
        reply = waiter.message
        if reply.content.get("status", "ok") != "ok":
            raise error.remote_error(reply.content, {})
        return reply

    # -- tasks -------------------------------------------------------------------------------------

    def _task_for(self, msg_id: str) -> Task:
        task = self._pending.get(msg_id) or self._tasks.get(msg_id)
        if task is None:
            raise KeyError(f"No Future or result for msg_id: {msg_id}")
        return task

    def _msg_ids_from_jobs(self, jobs: Any) -> list[str]:
        if not isinstance(jobs, (list, tuple, set)) and not hasattr(jobs, "__next__"):
            jobs = [jobs]
        msg_ids: list[str] = []
        for job in jobs:
            if isinstance(job, int):
                msg_ids.append(self.history[job])
            elif isinstance(job, str):
                msg_ids.append(job)
            elif isinstance(job, AsyncResult):
                msg_ids.extend(job.msg_ids)
            else:
                raise TypeError(f"Expected msg_id, int, or AsyncResult, got {job!r}")
        return msg_ids

    @property
    def results(self) -> Mapping[str, Any]:
        """msg_id → result (or RemoteError) of the finished tasks this client still holds."""
        return _TaskMapping(self, Task.value, finished_only=True)

    @property
    def metadata(self) -> Mapping[str, Any]:
        """msg_id → Metadata of the tasks this client still holds."""
        return _TaskMapping(self, lambda task: task.metadata, finished_only=False)

    def wait(self, jobs: Any = None, timeout: float = -1) -> bool:
        """Wait for `jobs` (msg_ids, history indices, AsyncResults; default: all outstanding) for up
        to `timeout` seconds (-1: no limit). Returns whether all are done."""
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        if jobs is None:
            msg_ids = list(self.outstanding)
        else:
            if not isinstance(jobs, (list, tuple, set)) and not hasattr(jobs, "__next__"):
                jobs = [jobs]
            jobs = list(jobs)
            # Plain futures (a view's `map` of futures, an executor's) are waited for as they are.
            futures = [j for j in jobs if isinstance(j, concurrent.futures.Future) and not isinstance(j, AsyncResult)]
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if futures and concurrent.futures.wait(futures, timeout=left).not_done:
                return False
            msg_ids = self._msg_ids_from_jobs([j for j in jobs if not isinstance(j, concurrent.futures.Future)
                                               or isinstance(j, AsyncResult)])
        for msg_id in msg_ids:
            task = self._pending.get(msg_id)
            if task is None:
                continue
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not task.wait(left):
                return False
        return True

    def clear(self, targets: Any = None, block: bool | None = None) -> Any:
        """Empty the user namespace of the engines `targets` (default: all), as ipyparallel's
        `clear` does. With `block` (default: the client's `block`, False) it waits and returns
        None; otherwise it returns the AsyncResult."""
        result = self.direct_view("all" if targets is None else targets).clear(block=False)
        if not (self.block if block is None else block):
            return result
        result.get()
        return None

    def wait_interactive(self, jobs: Any = None, interval: float = 1.0, timeout: float = -1.0) -> None:
        """Wait for `jobs` (default: all outstanding) with a progress bar."""
        msg_ids = list(self.outstanding) if jobs is None else self._msg_ids_from_jobs(jobs)
        tasks = [t for t in (self._pending.get(m) or self._tasks.get(m) for m in msg_ids) if t is not None]
        if tasks:
            AsyncResult(self, tasks).wait_interactive(interval=interval, timeout=timeout)

    # -- control -----------------------------------------------------------------------------------

    def abort(self, jobs: Any = None, targets: Any = None, block: bool | None = None) -> None:
        """Abort tasks that have not started yet (default: all outstanding). Running tasks are
        not stopped: interrupt them with `send_signal('SIGINT', targets)`."""
        msg_ids = list(self.outstanding) if jobs is None else self._msg_ids_from_jobs(jobs)
        if not msg_ids:
            return None
        self._request("abort_request", {"msg_ids": msg_ids}, what="abort")
        return None

    def send_signal(self, sig: int | str = "SIGINT", targets: Any = None, block: bool | None = None) -> list[int]:
        """Send a signal (name or number; default SIGINT) to the kernels of `targets` (default:
        all engines). Returns the ids of the engines signalled."""
        if isinstance(sig, int):
            sig = signal_module.Signals(sig).name
        ids = None if targets is None or targets == "all" else self._build_targets(targets)
        reply = self._request("interrupt_request", {"targets": ids, "signal": sig}, what="interrupt")
        return list(reply.content.get("engines") or [])

    def shutdown(self, targets: Any = "all", restart: bool = False, hub: bool = False, block: bool | None = None) -> None:
        """Stop the cluster: `shutdown(hub=True)` stops the controller and all its engines, then
        closes this client."""
        if restart:
            raise NotImplementedError("Engine restart is not implemented; start the cluster with --restart-engines")
        if not hub:
            raise ValueError(
                "Parallax stops engines together with their controller: use rc.shutdown(hub=True), or "
                f"`parallax cluster stop --profile {self.profile}`, to stop the cluster"
            )
        self._request("shutdown_request", {"hub": True}, what="shutdown")
        self.close()

    def queue_status(self, targets: Any = "all", verbose: bool = False) -> dict[Any, Any]:
        """{'unassigned': n, engine_id: {'queue': .., 'completed': .., 'tasks': ..}, ...}; for a
        single int target, that engine's dict."""
        reply = self._request("queue_request", {}, what="queue status")
        engines = {int(k): dict(v) for k, v in (reply.content.get("engines") or {}).items()}
        if targets is None or targets == "all":
            wanted = sorted(engines)
        else:
            wanted = self._build_targets(targets)
        status: dict[Any, Any] = {"unassigned": int(reply.content.get("unassigned", 0))}
        for engine_id in wanted:
            if engine_id in engines:
                status[engine_id] = engines[engine_id]
        if isinstance(targets, int):
            return status[wanted[0]]
        return status

    # -- views -------------------------------------------------------------------------------------

    def direct_view(self, targets: Any = "all", **flags: Any) -> DirectView:
        """A DirectView on `targets`. 'all' (the default) is resolved at each call, so engines
        that join later are included; anything else is fixed now."""
        single = isinstance(targets, int)
        if targets != "all":
            targets = self._build_targets(targets)
            if single:
                targets = targets[0]
        return DirectView(client=self, targets=targets, **flags)

    def load_balanced_view(self, targets: Any = None, **flags: Any) -> LoadBalancedView:
        """A LoadBalancedView over `targets` (default: whichever engines are live)."""
        if targets == "all":
            targets = None
        if targets is not None:
            targets = self._build_targets(targets)
        return LoadBalancedView(client=self, targets=targets, **flags)

    def executor(self, targets: Any = None) -> Any:
        """A concurrent.futures Executor running on a LoadBalancedView."""
        return self.load_balanced_view(targets).executor

    def activate(self, targets: Any = "all", suffix: str = "") -> DirectView:
        """A blocking DirectView on `targets`, with %px magics registered for it."""
        view = self.direct_view(targets)
        view.block = True
        view.activate(suffix)
        return view

    # -- lifetime ----------------------------------------------------------------------------------

    def close(self, linger: int | None = None) -> None:
        """Stop the IO thread and close the sockets (pending results are abandoned). `linger` is
        accepted for ipyparallel compatibility; queued messages get up to a second to go out."""
        if self._closed:
            return
        self._closed = True
        _live_clients.discard(self)
        self._outbox.put(None)
        if threading.current_thread() is not self._io_thread:
            self._io_thread.join(5)
        self._outbox.close()
        if self._own_context and not self._io_thread.is_alive():
            self._context.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # -- deprecated no-ops kept so ipyparallel code runs ---------------------------------------------

    def spin(self) -> None:
        """Nothing to do: IO always runs in a thread."""

    def spin_thread(self, interval: float = 1) -> None:
        """Nothing to do: IO always runs in a thread."""

    def stop_spin_thread(self) -> None:
        """Nothing to do: IO always runs in a thread."""


def _log_to_stderr() -> None:
    """Client(debug=True): show the 'parallax' loggers' debug messages on stderr."""
    logger = logging.getLogger("parallax")
    logger.setLevel(logging.DEBUG)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
        logger.addHandler(handler)


def _in_ipython() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None


@atexit.register
def _close_clients() -> None:
    for client in list(_live_clients):
        try:
            client.close()
        except Exception:
            pass


__all__ = ["Client", "connection_file", "parallax_dir", "default_profile"]
