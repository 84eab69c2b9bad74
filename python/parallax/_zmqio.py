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
"""

from __future__ import annotations

import collections
import threading
from typing import Any

import zmq

_MORE = int(zmq.SNDMORE)
_NOBLOCK = int(zmq.NOBLOCK)
_RCVMORE = int(zmq.RCVMORE)
_COPIED_FRAMES = 7  # delimiter, signature, header, parent, metadata, content, first buffer


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
                self._wake_pending = True
                self._writer.send(b"")

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

    def close(self) -> None:
        """Close the producer side (the IO thread closes `reader` itself)."""
        with self._lock:
            self._closed = True
            self._writer.close(linger=0)
