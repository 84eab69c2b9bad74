"""Socket plumbing shared by the client and the engine support.

Each of them has one IO thread that owns its DEALER; other threads never touch that socket.

- `Outbox`: how other threads hand messages to the IO thread. A deque under a lock, plus a wake-up
  byte on an inproc PUSH→PULL pair that the IO thread polls beside its DEALER. The byte is sent
  only when the deque goes from empty to non-empty, so a burst of messages costs one wake-up and
  the frames themselves never pass through a second socket.
- `send_frames` / `recv_frames`: multipart send and receive with plain int flags (pyzmq's
  `send_multipart` builds an enum per frame, which shows at thousands of messages a second). The
  first frames of a message (delimiter, signature, the four JSON frames, the pickle) are received
  as bytes, which is cheapest for small frames; later frames (out-of-band buffers, typically
  large) as zero-copy `zmq.Frame`s.
- `pack_messages` / `unpacked`: packs, as the controller sends and reads them (its `wire::pack`):
  consecutive small messages go to the peer as one ZeroMQ message `["<PX|PACK>", body]`, where
  body is, per message, a little-endian u32 frame count and then each frame as a u32 length and
  its bytes (the frames after the message's delimiter: each is a whole signed message). The IO
  threads pack what they find waiting in their outbox, so a burst costs one send while a lone
  message goes as it is, and unpack whatever arrives.
- `Outbox.send_waiting` / `receive_waiting`: what an IO thread does when its poller says the
  outbox or the DEALER is readable.
"""

from __future__ import annotations

import collections
import logging
import struct
import threading
from typing import Any, Callable

import zmq

_MORE = int(zmq.SNDMORE)
_NOBLOCK = int(zmq.NOBLOCK)
_RCVMORE = int(zmq.RCVMORE)
_COPIED_FRAMES = 7  # delimiter, signature, header, parent, metadata, content, first buffer

DELIMITER = b"<IDS|MSG>"
PACK_DELIMITER = b"<PX|PACK>"
PACK_MESSAGE_LIMIT = 64 * 1024  # the largest message (all its frames) that is packed
PACK_COUNT_LIMIT = 512  # the most messages in one pack
PACK_BYTES_LIMIT = 1 << 20  # a pack is closed once it holds this many bytes
_U32 = struct.Struct("<I")

log = logging.getLogger("parallax")


def send_frames(socket: zmq.Socket, frames: list[Any]) -> None:
    """Send one multipart message; large frames go without a copy (pyzmq copies small ones)."""
    send = socket.send
    last = len(frames) - 1
    for index, frame in enumerate(frames):
        send(frame, _MORE if index < last else 0, copy=False)


def recv_frames(socket: zmq.Socket) -> list[Any]:
    """Receive one multipart message without blocking (raises zmq.Again if there is none)."""
    frames: list[Any] = [socket.recv(_NOBLOCK)]
    more = socket.getsockopt
    recv = socket.recv
    while more(_RCVMORE):
        frames.append(recv(0, copy=len(frames) < _COPIED_FRAMES))
    return frames


def _size(message: list[Any]) -> int:
    """Bytes in a message's frames, or more than the pack limit for a frame of unknown size."""
    total = 0
    for frame in message:
        try:
            total += len(frame) if isinstance(frame, bytes) else memoryview(frame).nbytes
        except TypeError:
            return PACK_MESSAGE_LIMIT + 1
    return total


def _pack(messages: list[list[Any]]) -> list[Any]:
    """One pack of messages that start with the delimiter (the DEALER side: no identities)."""
    u32 = _U32.pack
    parts: list[Any] = []
    for message in messages:
        parts.append(u32(len(message) - 1))
        for frame in message[1:]:
            size = len(frame) if isinstance(frame, bytes) else memoryview(frame).nbytes
            parts.append(u32(size))
            parts.append(frame)
    return [PACK_DELIMITER, b"".join(parts)]


def pack_messages(messages: list[list[Any]]) -> list[list[Any]]:
    """The ZeroMQ messages to send for `messages`, in order: runs of small ones packed."""
    out: list[list[Any]] = []
    run: list[list[Any]] = []
    run_bytes = 0
    for message in messages:
        size = _size(message)
        if size > PACK_MESSAGE_LIMIT:
            if run:
                out.append(run[0] if len(run) == 1 else _pack(run))
                run, run_bytes = [], 0
            out.append(message)
            continue
        run.append(message)
        run_bytes += size
        if len(run) == PACK_COUNT_LIMIT or run_bytes >= PACK_BYTES_LIMIT:
            out.append(run[0] if len(run) == 1 else _pack(run))
            run, run_bytes = [], 0
    if run:
        out.append(run[0] if len(run) == 1 else _pack(run))
    return out


def unpacked(frames: list[Any]) -> list[list[Any]]:
    """The messages in what arrived: itself, or each message of a pack (as it would have
    arrived alone). A malformed pack is logged and yields what precedes the damage."""
    if len(frames) < 2 or frames[-2] != PACK_DELIMITER:
        return [frames]
    prefix = [*frames[:-2], DELIMITER]
    body = frames[-1]
    if not isinstance(body, bytes):
        body = bytes(body)
    unpack_u32 = _U32.unpack_from
    messages: list[list[Any]] = []
    at, end = 0, len(body)
    try:
        while at < end:
            (count,) = unpack_u32(body, at)
            at += 4
            message = list(prefix)
            for _ in range(count):
                (size,) = unpack_u32(body, at)
                at += 4
                if at + size > end:
                    raise ValueError("a frame runs past the end of the pack")
                message.append(body[at : at + size])
                at += size
            messages.append(message)
    except (struct.error, ValueError) as exc:
        log.warning("dropped the rest of a malformed pack from the controller: %s", exc)
    return messages


def receive_waiting(socket: zmq.Socket, handle: Callable[[list[Any]], None], limit: int = 1000) -> None:
    """Hand each message waiting on `socket` (those of a pack one by one) to `handle`, at most
    `limit` ZeroMQ messages at a time; an exception in `handle` is logged and skips one message."""
    for _ in range(limit):
        try:
            frames = recv_frames(socket)
        except zmq.Again:
            return
        for message in unpacked(frames):
            try:
                handle(message)
            except Exception:
                log.exception("failed to handle a message from the controller")


class Outbox:
    """Messages from any thread to the IO thread that owns a socket.

    Producers call `put(frames)`; the IO thread polls `reader` and calls `take()` when it is
    readable, then sends what it got. `put(None)` asks the IO thread to stop.
    """

    def __init__(self, context: zmq.Context, name: str) -> None:
        self._queue: collections.deque[list[Any] | None] = collections.deque()
        self._lock = threading.Lock()
        self._wake_pending = False
        address = f"inproc://parallax-{name}-{id(self):x}"
        self.reader = context.socket(zmq.PULL)
        self.reader.bind(address)
        self._writer = context.socket(zmq.PUSH)
        self._writer.setsockopt(zmq.LINGER, 0)
        self._writer.connect(address)
        self._closed = False

    def put(self, frames: list[Any] | None) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the connection is closed")
            self._queue.append(frames)
            if not self._wake_pending:
                # The flag is set only once the byte is sent: a KeyboardInterrupt can land in the
                # send (the stop button while a task prints), and a flag set before it would keep
                # every later put from waking the IO thread, so nothing queued would ever leave.
                self._writer.send(b"")
                self._wake_pending = True

    def take(self) -> list[list[Any] | None]:
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
        return items

    def send_waiting(self, socket: zmq.Socket) -> bool:
        """Send what was queued (small messages packed) on `socket` (IO thread only); True when
        asked to stop."""
        items = self.take()
        for frames in pack_messages([item for item in items if item is not None]):
            try:
                send_frames(socket, frames)
            except zmq.ZMQError:
                log.exception("could not send a message to the controller")
        return None in items

    def close(self) -> None:
        """Close the producer side (the IO thread closes `reader` itself)."""
        with self._lock:
            self._closed = True
            self._writer.close(linger=0)
