"""Socket plumbing shared by the client and the engine support.

Each of them has one IO thread that owns its DEALER; other threads never touch that socket.

- `Outbox`: how other threads hand messages to the IO thread. A deque under a lock, plus a wake-up
  byte on an inproc PUSH→PULL pair that the IO thread polls beside its DEALER. The byte is sent
  only when the deque goes from empty to non-empty, so a burst of messages costs one wake-up and
  the messages themselves never pass through a second socket. A message is queued as a draft or
  as the frames of a serialised message (`_wire.Draft`).
- `send_frames` / `recv_frames`: multipart send and receive with plain int flags (pyzmq's
  `send_multipart` builds an enum per frame, which shows at thousands of messages a second). The
  first frames of a message (delimiter, signature, the four JSON frames or a pack's index, the
  pickle) are received as bytes, which is cheapest for small frames; later frames (out-of-band
  buffers, typically large) as zero-copy `zmq.Frame`s.
- `Outbox.send_waiting` / `receive_waiting`: what an IO thread does when its poller says the
  outbox or the DEALER is readable. What waits in the outbox leaves packed (`Session.to_send`),
  so a burst costs one send and one signature while a lone message goes as it is; whatever
  arrives is unpacked (`Session.receive`).
- `curve_keys` / `use_curve`: the CurveZMQ keys of a connection file (the controller encrypts its
  links when it listens beyond loopback) and setting them on a DEALER before it connects.
- Sent or not: `put` numbers what it queues, and the outbox counts how far the IO thread has
  sent (`wait_sent`). A message in a pack no longer refers to its buffers once it is sent (the
  pack copied them); one sent alone may, until libzmq has written them: `Tracked` sends it
  alone with a `zmq.MessageTracker` that says when its memory is free again (`track=True`).
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Any, Callable

import zmq

from ._wire import Draft, Message, Session

_CURVE_FIELDS = ("curve_serverkey", "curve_publickey", "curve_secretkey")


def curve_keys(info: dict[str, Any], source: str) -> dict[str, str] | None:
    """The CurveZMQ keys of connection info `info` as `{serverkey, publickey, secretkey}` (Z85),
    or None when it has none. Keys that are incomplete or malformed raise ValueError naming
    `source`: never a silent fallback to an unencrypted link."""
    present = [name for name in _CURVE_FIELDS if info.get(name)]
    if not present:
        return None
    keys: dict[str, str] = {}
    for name in _CURVE_FIELDS:
        value = info.get(name)
        if not isinstance(value, str) or len(value) != 40:
            what = "is missing" if not value else "is not a 40-character Z85 key"
            raise ValueError(f"{source}: {name} {what}")
        keys[name.removeprefix("curve_")] = value
    return keys


def use_curve(socket: zmq.Socket, keys: dict[str, str] | None) -> None:
    """Make `socket` (not yet connected) a CURVE client with `keys` (from `curve_keys`)."""
    if keys is None:
        return
    socket.curve_serverkey = keys["serverkey"].encode("ascii")
    socket.curve_publickey = keys["publickey"].encode("ascii")
    socket.curve_secretkey = keys["secretkey"].encode("ascii")


_MORE = int(zmq.SNDMORE)
_NOBLOCK = int(zmq.NOBLOCK)
_RCVMORE = int(zmq.RCVMORE)
_COPIED_FRAMES = 7  # delimiter, signature, header, parent, metadata, content, first buffer (a pack: 4)


log = logging.getLogger("parallax")


def send_frames(socket: zmq.Socket, frames: list[Any], track: bool = False) -> list[zmq.MessageTracker]:
    """Send one multipart message; large frames go without a copy (pyzmq copies small ones).
    With `track`, the trackers that say when ZeroMQ has let go of each frame."""
    send = socket.send
    last = len(frames) - 1
    trackers = []
    for index, frame in enumerate(frames):
        tracker = send(frame, _MORE if index < last else 0, copy=False, track=track)
        if track:
            trackers.append(tracker)
    return trackers


def recv_frames(socket: zmq.Socket) -> list[Any]:
    """Receive one multipart message without blocking (raises zmq.Again if there is none)."""
    frames: list[Any] = [socket.recv(_NOBLOCK)]
    more = socket.getsockopt
    recv = socket.recv
    while more(_RCVMORE):
        frames.append(recv(0, copy=len(frames) < _COPIED_FRAMES))
    return frames


def receive_waiting(socket: zmq.Socket, session: Session, handle: Callable[[Message], None],
                    limit: int = 1000) -> None:
    """Hand each message waiting on `socket` (those of a pack one by one) to `handle`, at most
    `limit` ZeroMQ messages at a time; an exception in `handle` is logged and skips one message."""
    receive = session.receive
    for _ in range(limit):
        try:
            frames = recv_frames(socket)
        except zmq.Again:
            return
        for message in receive(frames):
            try:
                handle(message)
            except Exception:
                log.exception("failed to handle a message from the controller")


class Tracked:
    """A message to send alone, with a tracker of its zero-copy frames (`tracker`, once sent)."""

    __slots__ = ("item", "tracker")

    def __init__(self, item: Draft | list[Any]) -> None:
        self.item = item
        self.tracker: zmq.MessageTracker | None = None

    @property
    def done(self) -> bool:
        return self.tracker is not None and self.tracker.done


class Outbox:
    """Messages from any thread to the IO thread that owns a socket.

    Producers call `put(item)` (a draft, or a serialised message's frames); the IO thread polls
    `reader` and calls `take()` when it is readable, then sends what it got. `put(None)` asks the
    IO thread to stop.
    """

    def __init__(self, context: zmq.Context, name: str) -> None:
        self._queue: collections.deque[Draft | list[Any] | Tracked | None] = collections.deque()
        self._lock = threading.Lock()
        self._wake_pending = False
        self._queued = 0  # messages put so far
        self._taken = 0  # of those, how many the IO thread has taken
        self.sent = 0  # ... and sent (or failed to send: either way, gone)
        self._sent_changed = threading.Condition(threading.Lock())
        address = f"inproc://parallax-{name}-{id(self):x}"
        self.reader = context.socket(zmq.PULL)
        self.reader.bind(address)
        self._writer = context.socket(zmq.PUSH)
        self._writer.setsockopt(zmq.LINGER, 0)
        self._writer.connect(address)
        self._closed = False

    def put(self, frames: Draft | list[Any] | Tracked | None) -> int:
        """Queue a message; returns its number, which `sent` reaches once it has left."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the connection is closed")
            self._queue.append(frames)
            self._queued += 1
            number = self._queued
            if not self._wake_pending:
                # The flag is set only once the byte is sent: a KeyboardInterrupt can land in the
                # send (the stop button while a task prints), and a flag set before it would keep
                # every later put from waking the IO thread, so nothing queued would ever leave.
                self._writer.send(b"")
                self._wake_pending = True
        return number

    def take(self) -> list[Draft | list[Any] | None]:
        """Everything queued so far (IO thread only)."""
        while True:
            try:
                self.reader.recv(_NOBLOCK)
            except zmq.Again:
                break
        with self._lock:
            items = list(self._queue)
            self._queue.clear()
            self._wake_pending = False
            self._taken = self._queued
        return items

    def send_waiting(self, socket: zmq.Socket, session: Session) -> bool:
        """Send what was queued (small messages packed, tracked ones alone) on `socket` (IO
        thread only); True when asked to stop."""
        items = self.take()
        run: list[Draft | list[Any]] = []
        for item in items:
            if type(item) is Tracked:
                self._send_run(socket, session, run)
                run = []
                trackers = self._send_run(socket, session, [item.item], track=True)
                item.tracker = None if trackers is None else zmq.MessageTracker(*trackers)
            elif item is not None:
                run.append(item)
        self._send_run(socket, session, run)
        with self._sent_changed:
            self.sent = self._taken
            self._sent_changed.notify_all()
        return None in items

    @staticmethod
    def _send_run(socket: zmq.Socket, session: Session, run: list[Draft | list[Any]],
                  track: bool = False) -> list[zmq.MessageTracker] | None:
        """Send `run` (packed where it can be); the trackers of its frames with `track`, None
        if a message failed to send."""
        trackers: list[zmq.MessageTracker] | None = []
        for frames in session.to_send(run):
            try:
                sent = send_frames(socket, frames, track)
            except zmq.ZMQError:
                log.exception("could not send a message to the controller")
                trackers = None
                continue
            if trackers is not None:
                trackers += sent
        return trackers

    def wait_sent(self, number: int, timeout: float | None = None) -> bool:
        """Wait until message `number` (from `put`) has left; False on timeout."""
        with self._sent_changed:
            self._sent_changed.wait_for(lambda: self.sent >= number or self._closed, timeout)
            return self.sent >= number

    def close(self) -> None:
        """Close the producer side (the IO thread closes `reader` itself)."""
        with self._lock:
            self._closed = True
            self._writer.close(linger=0)
        with self._sent_changed:
            self._sent_changed.notify_all()
