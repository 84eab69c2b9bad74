"""Large buffers through shared memory, between a client and the engines on its host.

Every byte of an apply request or reply otherwise crosses the controller, and each process a
message passes through at least halves the throughput of large messages (docs: "What a relay
process costs"). A client and an engine that share a /dev/shm can do better: the writer puts each
out-of-band buffer of at least `THRESHOLD` bytes into a file there and sends only its name.

How a buffer travels
- The writer opens an unnamed file in /dev/shm (`O_TMPFILE`, mode 0600), writes the buffer, and
  only then names it with `link`, which, like `O_CREAT | O_EXCL`, never replaces an existing file.
  So no reader ever sees a partly written segment, and a writer that dies while writing leaves
  nothing behind. A segment is named `parallax-<msg_id>-<index>` for a request's buffers and
  `parallax-<msg_id>-r<index>` for its reply's, after the request's msg_id (a random uuid): both
  sides know from the request alone which names could exist for it. A call sent to several
  engines is written once and linked under one name per request, every name made before the
  first request leaves: a reader unlinks its name at once, and a file left with no name cannot
  be named again.
- In the message, the buffer's frame is replaced by a descriptor, JSON `{"name": .., "size": ..}`,
  and a header frame goes first: `MAGIC` followed by JSON `{"segments": [frame indices]}`, counted
  in the frames after the header. The pickle frame that otherwise comes first always starts with
  the PROTO opcode (0x80), so the two cannot be confused. The header travels with the frames
  rather than in the message metadata because the controller's task database keeps small reply
  frames without their metadata: a reply read back from it is still recognised (and explained,
  since its segments were consumed when the reply was first read).
- The reader opens each segment, unlinks it at once, and maps it copy-on-write
  (`mmap.ACCESS_COPY`): the arrays pickle rebuilds live in the mapping without a copy, stay
  writable, and changes stay private to the reader (engines mapping the same segment do not see
  each other's writes). The mapping lives as long as something uses it.

Who uses shared memory
- Peers share memory when they have the same `domain()`: the same kernel (boot id), the same
  /dev/shm mount, and the same pid namespace (so a pid names the same process to both).
- Client → engine: direct apply requests, to an engine whose replies said it has the client's
  domain (the reply to a request offering shared memory carries the engine's domain in its
  metadata) or, before its first reply, whose `EngineInfo.host` is this host's name (an engine in a
  container with the host's name but its own /dev/shm then fails that one request, saying why).
  Not load-balanced requests: the controller may hand a task to another engine after one took it
  (retries, reclaiming a queued task), and a segment can be read only once.
- Engine → client: the reply to any apply request whose metadata offers the client's domain.
- Whenever shared memory is unavailable (no /dev/shm or no `O_TMPFILE`, too little space, any
  error while writing) the buffers travel as frames through the controller, as they would anyway.

Leftovers
- The reader unlinks a segment as soon as it has opened it: an engine when the request arrives
  (before the task runs), a client when the reply arrives.
- The client unlinks its request's segments when the reply (or a failure) arrives, in case the
  engine never read them, and on a failed task also any reply segment of that request (an engine
  that died between naming its reply's segments and sending the reply).
- An engine keeps the names of the reply segments it wrote (`Unclaimed`) and unlinks those whose
  client process has exited without reading them.
- Left behind only when both sides fail: a request's segments when its client exits (or closes)
  and its engine dies before the request reaches it; a reply's segments when its client closes
  without exiting, or exits after its engine did, before the reply reaches it.
"""

from __future__ import annotations

import functools
import json
import logging
import mmap
import os
import re
import socket
import stat
import threading
from typing import Any, Iterable

log = logging.getLogger("parallax.shm")
_fallback_logged = False

SHM_DIR = "/dev/shm"
# Smaller buffers go as frames: each segment costs a dozen system calls and a mapping of its own
# (a process may hold only about 65,000 mappings).
THRESHOLD = 1 << 20
PREFIX = "parallax-"
MAGIC = b"parallax-shm\n"
_NAME = re.compile(r"parallax-[0-9A-Za-z-]{1,200}")


class SegmentError(OSError):
    """A shared-memory segment a message refers to cannot be read."""


@functools.lru_cache(maxsize=1)
def domain() -> str | None:
    """Who shares memory with this process: processes with the same string. None when shared
    memory cannot be used here (no /dev/shm, no /proc, or unnamed files unsupported)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            boot_id = boot.read().strip()
        shm = os.stat(SHM_DIR)
        pid_namespace = os.stat("/proc/self/ns/pid").st_ino
        probe = os.open(SHM_DIR, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        os.close(probe)
    except (OSError, AttributeError):  # AttributeError: no os.O_TMPFILE on this platform
        return None
    return f"{boot_id}:{shm.st_dev}:{shm.st_ino}:{pid_namespace}"


@functools.lru_cache(maxsize=1)
def hostname() -> str:
    """This host's name, as engines report it in EngineInfo.host."""
    return socket.gethostname()


def request_prefix(msg_id: str) -> str:
    return f"{PREFIX}{msg_id}-"


def reply_prefix(msg_id: str) -> str:
    return f"{PREFIX}{msg_id}-r"


# -- the wire encoding (no I/O) --------------------------------------------------------------------


def encode(frames: list[Any], descriptors: dict[int, dict[str, Any]]) -> list[Any]:
    """`frames` with frame `i` replaced by `descriptors[i]`, behind the header that lists them."""
    header = MAGIC + json.dumps({"segments": sorted(descriptors)}).encode()
    encoded = list(frames)
    for index, descriptor in descriptors.items():
        encoded[index] = json.dumps(descriptor).encode()
    return [header, *encoded]


def is_encoded(frames: list[Any]) -> bool:
    """Whether `frames` start with a shared-memory header."""
    if not frames:
        return False
    first = frames[0]
    return len(first) >= len(MAGIC) and bytes(first[: len(MAGIC)]) == MAGIC


def decode(frames: list[Any]) -> tuple[list[Any], dict[int, dict[str, Any]]]:
    """(the frames after the header, {index: descriptor}) of encoded frames. Raises SegmentError
    for a malformed header or descriptor."""
    try:
        header = json.loads(bytes(frames[0][len(MAGIC) :]))
        indices = header["segments"]
        rest = list(frames[1:])
        descriptors = {}
        for index in indices:
            if not isinstance(index, int) or not 0 < index < len(rest):
                raise ValueError(f"segment index {index!r} out of range")
            descriptor = json.loads(bytes(rest[index]))
            name, size = descriptor["name"], descriptor["size"]
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise ValueError(f"invalid segment name {name!r}")
            if not isinstance(size, int) or size <= 0:
                raise ValueError(f"invalid segment size {size!r}")
            descriptors[index] = {"name": name, "size": size}
    except (ValueError, KeyError, TypeError) as exc:
        raise SegmentError(f"malformed shared-memory description in a message: {exc}") from None
    return rest, descriptors


# -- reading ---------------------------------------------------------------------------------------


def attach(frames: list[Any]) -> list[Any]:
    """The frames of a message with each segment mapped in place of its descriptor (each segment
    is unlinked as it is opened). Frames without a header are returned as they are."""
    if not is_encoded(frames):
        return frames
    rest, descriptors = decode(frames)
    mapped = []
    try:
        for index, descriptor in descriptors.items():
            rest[index] = _map(descriptor["name"], descriptor["size"])
            mapped.append(descriptor["name"])
    except BaseException:
        # Segments after the failing one would otherwise stay behind.
        unlink(d["name"] for d in descriptors.values() if d["name"] not in mapped)
        raise
    return rest


def _map(name: str, size: int) -> memoryview:
    path = os.path.join(SHM_DIR, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SegmentError(
            f"shared-memory segment {path} does not exist. A segment is read once, when its message "
            "arrives: a result read back from the controller's task database is no longer there "
            "(compute it again), and an engine that does not share the client's /dev/shm cannot "
            "read it (repeat the call: the client has learnt this and sends through the controller)"
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            raise SegmentError(f"{path} is not a shared-memory segment written by this user")
        unlink((name,))
        if info.st_size != size:
            raise SegmentError(f"{path} holds {info.st_size} bytes where its message says {size}")
        return memoryview(mmap.mmap(fd, size, access=mmap.ACCESS_COPY))
    finally:
        os.close(fd)


def unlink(names: Iterable[str]) -> None:
    """Remove segments that may still exist. Failures are logged, not raised: this runs while
    cleaning up after something else, which must go on."""
    for name in names:
        try:
            os.unlink(os.path.join(SHM_DIR, name))
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove shared-memory segment %s: %s", name, exc)


def unlink_prefix(prefix: str) -> None:
    """Remove any segment whose name starts with `prefix`."""
    try:
        names = [n for n in os.listdir(SHM_DIR) if n.startswith(prefix)]
    except OSError:
        return
    unlink(names)


# -- writing ---------------------------------------------------------------------------------------


class Outgoing:
    """The frames of one outgoing call or result, its large buffers written to shared memory once
    and named for each message that carries it (`name`)."""

    def __init__(self, frames: list[Any]) -> None:
        self.frames = frames
        self.fallback: str | None = None  # why the large buffers travel as frames, if they do

    def _fall_back(self, reason: str) -> None:
        """Note that this message's large buffers travel as frames, and why (logged once per
        process: the transfer still works, only slower)."""
        self.fallback = reason
        global _fallback_logged
        if not _fallback_logged:
            _fallback_logged = True
            log.warning("large buffers travel through the controller instead of shared memory: %s", reason)

    def _large(self) -> dict[int, memoryview]:
        views = {}
        for index, frame in enumerate(self.frames[1:], start=1):
            view = memoryview(frame)
            if view.nbytes >= THRESHOLD and view.c_contiguous:
                views[index] = view if view.format == "B" and view.ndim == 1 else view.cast("B")
        return views

    def _write(self, large: dict[int, memoryview]) -> dict[int, tuple[int, int]]:
        """Write the large buffers to unnamed files (frame index → (fd, size)); none when there
        is no room for them."""
        total = sum(view.nbytes for view in large.values())
        space = os.statvfs(SHM_DIR)
        free = space.f_bavail * space.f_frsize
        if free < total:
            self._fall_back(f"{SHM_DIR} has {free} bytes free, {total} needed")
            return {}
        files: dict[int, tuple[int, int]] = {}
        try:
            for index, view in large.items():
                fd = os.open(SHM_DIR, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600)
                files[index] = (fd, view.nbytes)
                written = 0
                while written < view.nbytes:
                    written += os.write(fd, view[written:])
        except BaseException:
            _close(files)
            raise
        return files

    def name(self, prefixes: list[str]) -> list[tuple[list[Any], list[str]]]:
        """For each prefix, (frames of one message, names of the segments made for it): each
        large buffer named `prefix<index>`. The plain frames, and no names, for every message
        when shared memory is unavailable. Call it once, before any of the messages is sent:
        their readers unlink the names they read, and a file whose every name has been removed
        can never be named again (linkat refuses an unlinked file with ENOENT; only an
        `O_TMPFILE` file that was never linked is exempt), so a name made after the first
        reader has read its own would fail at random."""
        plain: list[tuple[list[Any], list[str]]] = [(self.frames, []) for _ in prefixes]
        large = self._large()
        if not large or not prefixes:
            return plain
        try:
            files = self._write(large)
        except OSError as exc:
            self._fall_back(f"cannot write to {SHM_DIR}: {exc}")
            return plain
        if not files:
            return plain
        named: list[str] = []
        try:
            directory = os.open(SHM_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                messages = []
                for prefix in prefixes:
                    descriptors: dict[int, dict[str, Any]] = {}
                    for index, (fd, size) in files.items():
                        name = f"{prefix}{index}"
                        # With a directory fd, os.link is linkat(AT_SYMLINK_FOLLOW), which names
                        # the file the /proc link points to (plain link() fails with EXDEV).
                        os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=directory)
                        named.append(name)
                        descriptors[index] = {"name": name, "size": size}
                    messages.append((encode(self.frames, descriptors), [d["name"] for d in descriptors.values()]))
            finally:
                os.close(directory)
        except OSError as exc:
            unlink(named)
            self._fall_back(f"cannot name a segment in {SHM_DIR}: {exc}")
            return plain
        finally:
            _close(files)
        return messages


def _close(files: dict[int, tuple[int, int]]) -> None:
    for fd, _size in files.values():
        os.close(fd)


# -- reply segments an engine wrote ------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Unclaimed:
    """Reply segments an engine wrote that their client has not read yet, with the client's pid:
    `sweep()` forgets those the client has read (unlinked) and unlinks those whose client has
    exited. Thread-safe: the main thread adds, the IO thread sweeps."""

    SWEEP_INTERVAL = 1.0  # seconds

    def __init__(self) -> None:
        self._segments: dict[str, int] = {}
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._segments)

    def add(self, names: list[str], client_pid: int) -> None:
        with self._lock:
            for name in names:
                self._segments[name] = client_pid

    def discard(self, names: list[str]) -> None:
        """Unlink segments whose reply could not be sent."""
        with self._lock:
            for name in names:
                self._segments.pop(name, None)
        unlink(names)

    def sweep(self) -> None:
        with self._lock:
            segments = list(self._segments.items())
        gone, orphaned = [], []
        for name, pid in segments:
            if not os.path.exists(os.path.join(SHM_DIR, name)):
                gone.append(name)
            elif not pid_alive(pid):
                orphaned.append(name)
        unlink(orphaned)
        with self._lock:
            for name in gone + orphaned:
                self._segments.pop(name, None)


def offer() -> dict[str, Any] | None:
    """What a client puts in an apply request's metadata (`"shm"`) so that the reply may come
    through shared memory; None when it cannot use shared memory."""
    here = domain()
    return None if here is None else {"domain": here, "pid": os.getpid()}


def client_pid_if_shared(metadata: dict[str, Any]) -> int | None:
    """The pid of the client that sent a request with `metadata`, if it offered shared memory
    and shares it with this process."""
    offered = metadata.get("shm")
    here = domain()
    if here is None or not isinstance(offered, dict) or offered.get("domain") != here:
        return None
    pid = offered.get("pid")
    return pid if isinstance(pid, int) and pid > 0 else None
