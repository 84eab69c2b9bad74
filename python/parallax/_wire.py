"""The Jupyter wire format as the cluster protocol uses it: signing, framing, parsing.

Every link of a cluster (client → controller, engine support → controller) is a DEALER carrying
messages as the frames

    [b"<IDS|MSG>", signature, header, parent_header, metadata, content, *buffers]

where `signature` is the hex HMAC-SHA256 of the four JSON frames under the cluster key. This
module does no I/O: `Session.serialize` turns a message into frames and `Session.unpack` turns
received frames back into a `Message`, returning None for anything malformed or badly signed
(callers drop those). It is written by hand rather than with `jupyter_client.Session` because
the client and the engine support handle thousands of messages a second: a pre-keyed HMAC is
copied per message, JSON is dumped compactly, and buffers are never touched.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import random
import re
import time
from datetime import datetime, timezone
from typing import Any, Sequence

log = logging.getLogger("parallax.wire")

DELIMITER = b"<IDS|MSG>"
PROTOCOL_VERSION = "5.3"
USERNAME = "parallax"

# A received frame is bytes (copy=True) or a zmq.Frame (copy=False); both work here.
Frame = Any

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_scan = json.JSONDecoder().scan_once


def loads(data: bytes) -> Any:
    """Parse a JSON frame. The scanner is called directly: json.loads spends as long again
    detecting the encoding and checking for trailing whitespace on every small frame."""
    text = data.decode()
    try:
        value, end = _scan(text, 0)
    except StopIteration as exc:
        raise ValueError(f"invalid JSON at position {exc.value}") from None
    if end != len(text):
        return json.loads(text)  # trailing whitespace, or garbage json.loads will reject
    return value


def dumps(obj: Any) -> bytes:
    """Compact JSON as UTF-8 bytes."""
    if not obj:
        return b"{}" if isinstance(obj, dict) else _dumps(obj).encode()
    return _dumps(obj).encode()


# Message ids need uniqueness, not secrecy: a private generator seeded from os.urandom is an
# order of magnitude cheaper than a syscall per id. Private, so that user code calling
# random.seed() cannot make two processes produce the same ids; reseeded in forked children.
_ids = random.Random(os.urandom(32))
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(32)))


def new_id() -> str:
    """A fresh message or session id, formatted as a uuid4."""
    h = f"{_ids.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


class _Clock:
    """ISO-8601 UTC timestamps with microseconds ("2026-11-23T10:00:00.123456Z").

    Formatting the date part is the slow bit, so it is cached for the current second.
    """

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        t = time.time()
        second = int(t)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._prefix}.{int((t - second) * 1e6):06d}Z"


iso_now = _Clock().now

_ISO_PATTERN = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:?\d{2})?$"
)


def parse_date(value: Any) -> Any:
    """An ISO-8601 string as a timezone-aware datetime (naive strings count as UTC); anything
    else (None, a datetime, an unparseable string) is returned unchanged."""
    if not isinstance(value, str):
        return value
    match = _ISO_PATTERN.match(value)
    if match is None:
        return value
    day, clock, fraction, zone = match.groups()
    micros = (fraction or "0")[:6].ljust(6, "0")
    if zone in (None, "Z"):
        zone = "+00:00"
    elif ":" not in zone:
        zone = f"{zone[:3]}:{zone[3:]}"
    try:
        return datetime.fromisoformat(f"{day}T{clock}.{micros}{zone}")
    except ValueError:
        return value


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _as_bytes(frame: Frame) -> bytes:
    return frame if isinstance(frame, bytes) else frame.bytes


def _as_buffer(frame: Frame) -> Any:
    """A buffer view of a frame without copying it (memoryview of a zmq.Frame)."""
    return getattr(frame, "buffer", frame)


class Message:
    """A received message. `parent_raw` keeps the parent header's JSON bytes, so a reply can
    reuse the request's header frame verbatim as its own parent header."""

    __slots__ = ("header", "parent_header", "metadata", "content", "buffers", "header_raw")

    def __init__(
        self,
        header: dict[str, Any],
        parent_header: dict[str, Any],
        metadata: dict[str, Any],
        content: dict[str, Any],
        buffers: list[Frame],
        header_raw: bytes,
    ) -> None:
        self.header = header
        self.parent_header = parent_header
        self.metadata = metadata
        self.content = content
        self.buffers = buffers
        self.header_raw = header_raw

    @property
    def msg_type(self) -> str:
        return str(self.header.get("msg_type", ""))

    @property
    def msg_id(self) -> str:
        return str(self.header.get("msg_id", ""))

    @property
    def parent_id(self) -> str | None:
        return self.parent_header.get("msg_id")

    def __repr__(self) -> str:
        return f"<Message {self.msg_type} {self.msg_id} parent={self.parent_id}>"


class Session:
    """Signs and builds outgoing messages and checks and parses incoming ones, for one key.

    One session id per Session object: the controller uses it to tell clients apart.
    """

    def __init__(self, key: str | bytes, session_id: str | None = None) -> None:
        if isinstance(key, str):
            key = key.encode()
        self.key = key
        self.session_id = session_id or new_id()
        self._hmac = hmac.new(key, digestmod=hashlib.sha256) if key else None

    # -- outgoing ---------------------------------------------------------------------------------

    def header(self, msg_type: str) -> dict[str, Any]:
        return {
            "msg_id": new_id(),
            "msg_type": msg_type,
            "session": self.session_id,
            "username": USERNAME,
            "date": iso_now(),
            "version": PROTOCOL_VERSION,
        }

    def sign(self, parts: Sequence[Any]) -> bytes:
        """The hex signature of the four JSON frames (empty when the key is empty)."""
        if self._hmac is None:
            return b""
        digest = self._hmac.copy()
        for part in parts:
            digest.update(part)
        return digest.hexdigest().encode()

    def serialize(
        self,
        msg_type: str,
        content: dict[str, Any] | None = None,
        *,
        parent: dict[str, Any] | bytes | None = None,
        metadata: dict[str, Any] | None = None,
        buffers: Sequence[Any] = (),
        header: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], list[Any]]:
        """(header, frames) of a new message. `parent` may be the parent header's JSON bytes (as
        received), which are then used as they are."""
        header = header or self.header(msg_type)
        if isinstance(parent, (bytes, bytearray, memoryview)):
            parent_raw = bytes(parent)
        else:
            parent_raw = dumps(parent or {})
        parts = [
            dumps(header),
            parent_raw,
            dumps(metadata or {}),
            dumps(content if content is not None else {}),
        ]
        return header, [DELIMITER, self.sign(parts), *parts, *buffers]

    # -- incoming ---------------------------------------------------------------------------------

    def unpack(self, frames: Sequence[Frame]) -> Message | None:
        """Check and parse received frames (any identity prefix is skipped). Returns None, and
        logs at debug level, when the message is malformed or its signature is wrong."""
        try:
            index = next(i for i, f in enumerate(frames) if _as_bytes_if_short(f) == DELIMITER)
        except StopIteration:
            log.debug("dropped a message without the <IDS|MSG> delimiter (%d frames)", len(frames))
            return None
        if len(frames) < index + 6:
            log.debug("dropped a message with %d frames after the delimiter", len(frames) - index - 1)
            return None
        signature = _as_bytes(frames[index + 1])
        raw = [_as_bytes(f) for f in frames[index + 2 : index + 6]]
        if self._hmac is not None and not hmac.compare_digest(self.sign(raw), signature):
            log.debug("dropped a message with a bad signature")
            return None
        try:
            header, parent, metadata, content = (loads(part) for part in raw)
        except (ValueError, UnicodeDecodeError) as exc:
            log.debug("dropped a message with malformed JSON: %s", exc)
            return None
        if not all(isinstance(part, dict) for part in (header, parent, metadata, content)):
            log.debug("dropped a message whose JSON frames are not all objects")
            return None
        buffers = [_as_buffer(f) for f in frames[index + 6 :]]
        return Message(header, parent, metadata, content, buffers, raw[0])


def _as_bytes_if_short(frame: Frame) -> bytes | None:
    """The frame's bytes if it could be the delimiter (avoids copying large buffers)."""
    if isinstance(frame, bytes):
        return frame
    if len(frame) != len(DELIMITER):
        return None
    return frame.bytes
