"""The Jupyter wire format as the cluster protocol uses it: signing, framing, parsing, packs.

Every link of a cluster (client → controller, engine support → controller) is a DEALER carrying
messages as the frames

    [b"<IDS|MSG>", signature, header, parent_header, metadata, content, *buffers]

where `signature` is the hex HMAC-SHA256 of the four JSON frames under the cluster key. Between
Parallax's own ends a burst of messages goes as one pack (the controller's `wire::pack`):

    [b"<PX|PACK>", signature, index, buffers]
    index = [[header, parent_header, metadata, content, [size, ...]], ...]    (one JSON array)

where `signature` is the HMAC of the index and `buffers` holds every message's buffers one after
the other (each record gives the sizes of its own). One signature, one JSON document and four
frames per pack is what makes a thousand small tasks cheap: in Python, most of a small message's
cost is its four `json` calls, its HMAC and a socket call per frame.

This module does no I/O. `Session.serialize` turns one message into frames, `Session.to_send`
turns what an IO thread found waiting (drafts and serialised messages) into the ZeroMQ messages to
send, packed where it can, and `Session.receive` turns what arrived back into `Message`s,
dropping (and logging) anything malformed or badly signed. It is written by hand rather than with
`jupyter_client.Session` because the client and the engine support handle thousands of messages a
second: a pre-keyed HMAC is copied per message, JSON is dumped compactly, and buffers are never
touched.
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
PACK_DELIMITER = b"<PX|PACK>"
PACK_VERSION = 2  # the pack format, as `connect_request` and `attach_request` name it
PACK_MESSAGE_LIMIT = 64 * 1024  # the largest message (its frames, or a draft's buffers) that is packed
PACK_COUNT_LIMIT = 512  # the most messages in one pack
PACK_BYTES_LIMIT = 1 << 20  # a pack is closed once it holds this many bytes
PROTOCOL_VERSION = "5.3"
USERNAME = "parallax"

# An outgoing message that is not serialised yet: (header, parent_header, metadata, content,
# buffers), JSON-ready dicts and a list of buffers. An IO thread serialises drafts together, as
# one pack, so only messages whose dicts hold plain JSON values (the ones Parallax builds itself)
# may be drafts; anything else is serialised when it is sent (`Session.serialize`).
Draft = tuple

# A received frame is bytes (copy=True) or a zmq.Frame (copy=False); both work here.
Frame = Any

# NaN and the infinities are not JSON (the controller rejects them), so they are an error here.
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
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
    """A received message."""

    __slots__ = ("header", "parent_header", "metadata", "content", "buffers")

    def __init__(
        self,
        header: dict[str, Any],
        parent_header: dict[str, Any],
        metadata: dict[str, Any],
        content: dict[str, Any],
        buffers: list[Frame],
    ) -> None:
        self.header = header
        self.parent_header = parent_header
        self.metadata = metadata
        self.content = content
        self.buffers = buffers

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
        parent: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        buffers: Sequence[Any] = (),
        header: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], list[Any]]:
        """(header, frames) of a new message."""
        header = header or self.header(msg_type)
        parts = [
            dumps(header),
            dumps(parent or {}),
            dumps(metadata or {}),
            dumps(content if content is not None else {}),
        ]
        return header, [DELIMITER, self.sign(parts), *parts, *buffers]

    def _frames_of(self, item: Draft | list[Any]) -> list[Any]:
        """The frames of one outgoing item, sent alone."""
        if type(item) is not tuple:
            return item
        header, parent, metadata, content, buffers = item
        parts = [dumps(header), dumps(parent), dumps(metadata), dumps(content)]
        return [DELIMITER, self.sign(parts), *parts, *buffers]

    def to_send(self, items: Sequence[Draft | list[Any]]) -> list[list[Any]]:
        """The ZeroMQ messages for `items` (drafts, or the frames of serialised messages), in
        order: runs of small ones go as packs, the others alone. A draft that cannot be
        serialised is logged and dropped, never the others."""
        out: list[list[Any]] = []
        run: list[Draft | list[Any]] = []
        run_bytes = 0
        for item in items:
            size = _size(item)
            if size > PACK_MESSAGE_LIMIT:
                if run:
                    self._flush(run, out)
                    run, run_bytes = [], 0
                self._flush([item], out)
                continue
            run.append(item)
            run_bytes += size
            if len(run) == PACK_COUNT_LIMIT or run_bytes >= PACK_BYTES_LIMIT:
                self._flush(run, out)
                run, run_bytes = [], 0
        if run:
            self._flush(run, out)
        return out

    def _flush(self, run: list[Draft | list[Any]], out: list[list[Any]]) -> None:
        try:
            out.append(self._frames_of(run[0]) if len(run) == 1 else self._pack(run))
            return
        except (TypeError, ValueError, BufferError):
            if len(run) == 1:
                log.exception("could not serialise a message to send; it was dropped")
                return
        for item in run:  # find the draft that spoilt the pack; send the others alone
            self._flush([item], out)

    def _pack(self, run: list[Draft | list[Any]]) -> list[Any]:
        """One pack of several items."""
        pieces: list[bytes] = []
        buffers: list[Any] = []
        drafts: list[list[Any]] = []
        for item in run:
            if type(item) is tuple:
                header, parent, metadata, content, own = item
                drafts.append([header, parent, metadata, content, [_nbytes(b) for b in own]])
                buffers.extend(own)
                continue
            if drafts:
                pieces.append(_dumps(drafts)[1:-1].encode())
                drafts = []
            own = item[6:]
            sizes = ",".join(str(_nbytes(b)) for b in own).encode()
            pieces.append(b"[%b,%b,%b,%b,[%b]]" % (item[2], item[3], item[4], item[5], sizes))
            buffers.extend(own)
        if drafts:
            pieces.append(_dumps(drafts)[1:-1].encode())
        index = b"[" + b",".join(pieces) + b"]"
        return [PACK_DELIMITER, self.sign((index,)), index, b"".join(buffers)]

    # -- incoming ---------------------------------------------------------------------------------

    def receive(self, frames: Sequence[Frame]) -> list[Message]:
        """The messages in received frames (any identity prefix is skipped): one message, or
        those of a pack. Anything malformed or badly signed is logged and dropped."""
        for at, frame in enumerate(frames):
            first = _as_bytes_if_short(frame)
            if first == DELIMITER:
                message = self._unpack_at(frames, at)
                return [] if message is None else [message]
            if first == PACK_DELIMITER:
                return self._unpack_pack(frames, at)
        log.debug("dropped a message without the <IDS|MSG> delimiter (%d frames)", len(frames))
        return []

    def unpack(self, frames: Sequence[Frame]) -> Message | None:
        """Check and parse one received message (any identity prefix is skipped). Returns None,
        and logs at debug level, when the message is malformed or its signature is wrong."""
        try:
            at = next(i for i, f in enumerate(frames) if _as_bytes_if_short(f) == DELIMITER)
        except StopIteration:
            log.debug("dropped a message without the <IDS|MSG> delimiter (%d frames)", len(frames))
            return None
        return self._unpack_at(frames, at)

    def _unpack_at(self, frames: Sequence[Frame], index: int) -> Message | None:
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
        return Message(header, parent, metadata, content, buffers)

    def _unpack_pack(self, frames: Sequence[Frame], at: int) -> list[Message]:
        if len(frames) != at + 4:
            log.warning("dropped a pack with %d frames after its delimiter (3 expected)", len(frames) - at - 1)
            return []
        signature = _as_bytes(frames[at + 1])
        index = _as_bytes(frames[at + 2])
        if self._hmac is not None and not hmac.compare_digest(self.sign((index,)), signature):
            log.warning("dropped a pack with a bad signature")
            return []
        try:
            records = loads(index)
        except (ValueError, UnicodeDecodeError) as exc:
            log.warning("dropped a pack whose index is not JSON: %s", exc)
            return []
        buffers = _as_bytes(frames[at + 3])
        if not (type(records) is list and all(type(r) is list and len(r) == 5 and type(r[4]) is list
                                              and all(type(n) is int and n >= 0 for n in r[4]) for r in records)
                and sum(sum(r[4]) for r in records) == len(buffers)):
            log.warning("dropped a malformed pack (its index does not match its %d bytes of buffers)", len(buffers))
            return []
        messages: list[Message] = []
        end = 0
        for header, parent, metadata, content, sizes in records:
            own = []
            for size in sizes:  # each buffer its own bytes: a kept result holds no one else's
                start, end = end, end + size
                own.append(buffers[start:end])
            if type(header) is dict and type(parent) is dict and type(metadata) is dict and type(content) is dict:
                messages.append(Message(header, parent, metadata, content, own))
            else:
                log.debug("dropped a message of a pack whose JSON parts are not all objects")
        return messages


def _nbytes(buffer: Any) -> int:
    return len(buffer) if isinstance(buffer, bytes) else memoryview(buffer).nbytes


def _size(item: Draft | list[Any]) -> int:
    """Bytes in an item's frames (a draft's buffers), or more than the pack limit for a frame of
    unknown size."""
    frames = item[4] if type(item) is tuple else item
    try:
        return sum(_nbytes(frame) for frame in frames)
    except TypeError:
        return PACK_MESSAGE_LIMIT + 1


def _as_bytes_if_short(frame: Frame) -> bytes | None:
    """The frame's bytes if it could be the delimiter (avoids copying large buffers)."""
    if isinstance(frame, bytes):
        return frame
    if len(frame) != len(DELIMITER):
        return None
    return frame.bytes
