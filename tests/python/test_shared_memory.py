"""Large buffers through shared memory between a client and the engines on its host (`parallax._shm`).

- units: the wire encoding of segment descriptors, writing and mapping segments, the fallbacks to
  frames (small buffers, no /dev/shm, a full /dev/shm), a consumed segment's error, the engine's
  sweep of reply segments whose client exited;
- the client against the in-process `FakeController` (engines on this host): requests carry
  segments, and the segments of a request that was never run, or of a reply that never came, are
  removed when the task fails;
- end to end on a real 2-engine cluster: push / pull / scatter / gather of arrays above the
  threshold round-trip equal and live in the mappings; an engine killed before reading a request,
  and a client killed before reading a reply, leave no segment behind.

Segments are named after their request's msg_id, so each test checks for leftovers of its own
requests only (other processes on this machine may use shared memory meanwhile).
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import parallax
from parallax import _shm
from parallax.serialize import deserialize_result, serialize_call, serialize_result

from compat_env import wait_until
from kernel_env import STARTUP_TIMEOUT, IsolatedEnv, start_cluster, stop_cluster
from test_client_units import FakeController

pytestmark = pytest.mark.skipif(_shm.domain() is None, reason="no usable /dev/shm here")

BIG = (3 * _shm.THRESHOLD) // 8  # float64 items: 3 MiB
DEADLINE = 60.0
UNIT = f"parallax-unit{os.getpid()}"  # segment names of the unit tests, unique to this process


def segments_of(msg_ids: list[str]) -> list[str]:
    """The segments in /dev/shm that belong to these requests (or their replies)."""
    return [n for n in os.listdir(_shm.SHM_DIR) if any(n.startswith(_shm.request_prefix(m)) for m in msg_ids)]


def unit_segments(*tags: str) -> list[str]:
    """The segments of the unit tests in this process (with any of `tags` after the prefix)."""
    return [n for n in os.listdir(_shm.SHM_DIR)
            if n.startswith(UNIT) and (not tags or any(n.startswith(f"{UNIT}-{t}-") for t in tags))]


@pytest.fixture(autouse=True)
def no_unit_segments_left() -> Iterator[None]:
    """Each test leaves no segment of the unit tests behind (removed, and reported, if it does)."""
    yield
    left = unit_segments()
    _shm.unlink(left)
    assert not left, f"segments left behind: {left}"


def in_mapping(array: np.ndarray) -> bool:
    """Whether `array`'s memory is a shared-memory mapping (rather than a copy or a frame)."""
    base: Any = array
    while base is not None:
        if isinstance(base, memoryview):
            return isinstance(base.obj, mmap.mmap)
        base = getattr(base, "base", None)
    return False


# -- units: encoding ---------------------------------------------------------------------------------


def test_descriptors_are_listed_in_a_header_frame_before_the_pickle() -> None:
    frames = [b"\x80\x05pickle", b"small", memoryview(b"x" * 10)]
    encoded = _shm.encode(frames, {2: {"name": "parallax-abc-2", "size": 10}})
    assert encoded[0] == _shm.MAGIC + b'{"segments": [2]}'
    assert encoded[1:3] == frames[:2]
    assert json.loads(encoded[3]) == {"name": "parallax-abc-2", "size": 10}
    assert _shm.is_encoded(encoded) and _shm.is_encoded([memoryview(encoded[0])])
    rest, descriptors = _shm.decode(encoded)
    assert rest[:2] == frames[:2] and descriptors == {2: {"name": "parallax-abc-2", "size": 10}}


def test_plain_frames_are_never_taken_for_a_header() -> None:
    assert not _shm.is_encoded(serialize_result(np.zeros(4)))
    assert not _shm.is_encoded(serialize_call(len, ([1],)))
    assert not _shm.is_encoded([])
    assert _shm.attach(frames := [b"\x80\x05x"]) is frames


@pytest.mark.parametrize(
    "header, descriptor",
    [
        (b"not json", None),
        (b'{"segments": [5]}', None),  # no such frame
        (b'{"segments": [0]}', None),  # the pickle is never a segment
        (b'{"segments": [1]}', {"name": "parallax-../../etc/passwd", "size": 1}),
        (b'{"segments": [1]}', {"name": "/tmp/x", "size": 1}),
        (b'{"segments": [1]}', {"name": "parallax-a-1", "size": 0}),
        (b'{"segments": [1]}', {"size": 1}),
    ],
)
def test_malformed_descriptions_are_refused(header: bytes, descriptor: Any) -> None:
    frames = [_shm.MAGIC + header, b"\x80\x05", json.dumps(descriptor).encode()]
    with pytest.raises(_shm.SegmentError, match="malformed shared-memory description"):
        _shm.attach(frames)


# -- units: writing and reading ------------------------------------------------------------------------


def test_a_large_buffer_is_written_once_and_mapped_by_each_reader() -> None:
    array = np.arange(BIG, dtype=np.float64)
    outgoing = _shm.Outgoing(serialize_result({"a": array, "small": np.ones(3)}))
    (first, first_names), (second, second_names) = outgoing.name([f"{UNIT}-one-", f"{UNIT}-two-"])
    assert first_names == [f"{UNIT}-one-1"] and second_names == [f"{UNIT}-two-1"]
    assert os.stat(f"/dev/shm/{first_names[0]}").st_ino == os.stat(f"/dev/shm/{second_names[0]}").st_ino
    assert os.stat(f"/dev/shm/{first_names[0]}").st_mode & 0o777 == 0o600
    one, two = deserialize_result(first), deserialize_result(second)
    assert not unit_segments(), "readers unlink what they mapped"
    assert np.array_equal(one["a"], array) and in_mapping(one["a"])
    one["a"][0] = -1.0  # writable, and private to its reader
    assert two["a"][0] == 0.0


def test_small_buffers_stay_frames() -> None:
    frames = serialize_call(len, (np.zeros(1000),))
    assert _shm.Outgoing(frames).name([f"{UNIT}-small-"]) == [(frames, [])]


def test_without_dev_shm_buffers_travel_as_frames(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(_shm, "SHM_DIR", str(tmp_path / "missing"))
    frames = serialize_result(np.zeros(BIG))
    assert _shm.Outgoing(frames).name([f"{UNIT}-none-"]) == [(frames, [])]


class _Os:
    """`os` as `_shm` sees it, with some functions replaced."""

    def __init__(self, **replaced: Any) -> None:
        self._replaced = replaced

    def __getattr__(self, name: str) -> Any:
        return self._replaced[name] if name in self._replaced else getattr(os, name)


def _no_space(fd: int, data: Any) -> int:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_dev_shm_falls_back_to_frames_and_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_shm, "os", _Os(write=_no_space))
    frames = serialize_result(np.zeros(BIG))
    outgoing = _shm.Outgoing(frames)
    assert outgoing.name([f"{UNIT}-full-", f"{UNIT}-full2-"]) == [(frames, []), (frames, [])]
    assert outgoing.fallback is not None and "No space left" in outgoing.fallback
    assert not unit_segments("full", "full2")


def test_too_little_room_in_dev_shm_falls_back_to_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    room = os.statvfs_result((4096, 4096, 100, 10, 10, 100, 10, 10, 0, 255))
    monkeypatch.setattr(_shm, "os", _Os(statvfs=lambda path: room))
    frames = serialize_result(np.zeros(BIG))
    assert _shm.Outgoing(frames).name([f"{UNIT}-room-"]) == [(frames, [])]


def test_a_consumed_segment_is_explained() -> None:
    ((frames, _names),) = _shm.Outgoing(serialize_result(np.zeros(BIG))).name([f"{UNIT}-once-"])
    deserialize_result(frames)
    with pytest.raises(_shm.SegmentError, match="does not exist. A segment is read once"):
        deserialize_result(frames)


def test_the_engine_sweeps_reply_segments_of_exited_clients() -> None:
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    outgoing = _shm.Outgoing(serialize_result(np.zeros(BIG)))
    (_, orphaned), (_, waiting), (_, read) = outgoing.name([f"{UNIT}-{tag}-" for tag in ("orphan", "waiting", "read")])
    unclaimed = _shm.Unclaimed()
    unclaimed.add(orphaned, exited.pid)
    unclaimed.add(waiting + read, os.getpid())
    _shm.unlink(read)  # as the client does when it maps them
    unclaimed.sweep()
    assert unit_segments("orphan", "read") == []
    assert unit_segments("waiting") == waiting
    _shm.unlink(waiting)
    unclaimed.sweep()
    assert not unclaimed


# -- the client against the fake controller ------------------------------------------------------------


@pytest.fixture
def local_fake() -> Iterator[FakeController]:
    """A fake controller whose engines say they run on this host."""
    controller = FakeController()
    for info in controller.engines.values():
        info["host"] = socket.gethostname()
    try:
        yield controller
    finally:
        controller.stop()


@pytest.fixture
def fake_rc(local_fake: FakeController, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[parallax.Client]:
    monkeypatch.setenv("PARALLAX_DIR", str(tmp_path))
    client = parallax.Client({"url": local_fake.url, "key": local_fake.key, "profile": "default"}, timeout=5)
    try:
        yield client
    finally:
        client.close()


def test_requests_to_engines_on_this_host_carry_segments(
    fake_rc: parallax.Client, local_fake: FakeController, monkeypatch: pytest.MonkeyPatch
) -> None:
    fallbacks: list[str] = []
    fall_back = _shm.Outgoing._fall_back
    monkeypatch.setattr(_shm.Outgoing, "_fall_back", lambda self, why: (fallbacks.append(why), fall_back(self, why)))
    array = np.random.rand(BIG)
    # A browser test on the other worker may fill a small /dev/shm for a moment: then the push
    # rightly travels as frames, and is tried again once there is room.
    for _attempt in range(5):
        fallbacks.clear()
        ar = fake_rc[:].push({"a": array}, block=False)
        ar.get(5)
        if not (fallbacks and all("bytes free" in why for why in fallbacks)):
            break
        time.sleep(1)
    for engine_id in (0, 1):
        pushed = local_fake.namespaces[engine_id]["a"]
        assert np.array_equal(pushed, array)
        assert in_mapping(pushed), f"engine {engine_id} got a copy; shares memory: " \
            f"{fake_rc._shares_memory(engine_id)}, fell back: {fallbacks}"
    assert not segments_of(ar.msg_ids)


def test_an_engine_that_reads_its_segment_at_once_leaves_the_others_theirs(
    fake_rc: parallax.Client, local_fake: FakeController, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a push to two engines named the second engine's segment only after sending
    the first request. When the first reader had already unlinked its name, the file had no name
    left and could not be named again (`linkat` fails with ENOENT), so the second engine got a
    copy. Here each request is read before the next is sent, the worst case of that race."""
    fallbacks: list[str] = []
    fall_back = _shm.Outgoing._fall_back
    monkeypatch.setattr(_shm.Outgoing, "_fall_back", lambda self, why: (fallbacks.append(why), fall_back(self, why)))
    send = fake_rc._send

    def send_and_wait_until_read(item: Any) -> int:
        number = send(item)
        names = fake_rc._segments.get(item[0]["msg_id"], []) if isinstance(item, tuple) else []
        wait_until(lambda: not any(os.path.exists(os.path.join(_shm.SHM_DIR, n)) for n in names), DEADLINE,
                   f"the fake engine to read {names}")
        return number

    monkeypatch.setattr(fake_rc, "_send", send_and_wait_until_read)
    array = np.random.rand(BIG)
    ar = fake_rc[:].push({"a": array}, block=False)
    ar.get(5)
    assert not fallbacks
    for engine_id in (0, 1):
        pushed = local_fake.namespaces[engine_id]["a"]
        assert np.array_equal(pushed, array) and in_mapping(pushed), f"engine {engine_id} got a copy"
    assert not segments_of(ar.msg_ids)


def test_segments_of_a_request_never_run_are_removed(fake_rc: parallax.Client, local_fake: FakeController) -> None:
    local_fake.hold(True)
    ar = fake_rc[0].push({"a": np.zeros(BIG)}, block=False)
    # An engine that died after naming its reply's segments, before sending the reply:
    reply_segment = Path(_shm.SHM_DIR, f"{_shm.reply_prefix(ar.msg_ids[0])}1")
    reply_segment.touch(mode=0o600)
    assert len(segments_of(ar.msg_ids)) == 2
    ar.abort()
    with pytest.raises(parallax.TaskAborted):
        ar.get(5)
    assert not segments_of(ar.msg_ids)


class _ElsewhereController(FakeController):
    """A fake controller whose engines answer shared-memory offers with another domain, as an
    engine in a container with this host's name but a /dev/shm of its own would."""

    def _send(self, identity: list[bytes], msg_type: str, content: dict[str, Any], parent: Any,
              metadata: dict[str, Any] | None = None, buffers: list[Any] = ()) -> None:  # type: ignore[assignment]
        if msg_type == "apply_reply" and "shm" in parent.metadata:
            metadata = {**(metadata or {}), "shm": {"domain": "elsewhere"}}
        super()._send(identity, msg_type, content, parent, metadata, buffers)


def test_an_engine_that_says_it_does_not_share_memory_gets_frames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLAX_DIR", str(tmp_path))
    controller = _ElsewhereController()
    controller.engines[0]["host"] = socket.gethostname()
    try:
        with parallax.Client({"url": controller.url, "key": controller.key}, timeout=5) as client:
            client[0].push({"a": np.zeros(BIG)}, block=True)
            assert in_mapping(controller.namespaces[0]["a"]), "before its first reply, the host name decides"
            client[0].push({"a": np.zeros(BIG)}, block=True)
            assert not in_mapping(controller.namespaces[0]["a"]), "after it, the engine's own word"
    finally:
        controller.stop()


# -- end to end ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[IsolatedEnv, parallax.Client]]:
    env = IsolatedEnv()
    env.apply()
    try:
        running = start_cluster(env, "shm", n=2)
        client = None
        try:
            client = parallax.Client(profile="shm")
            client.wait_for_engines(2, timeout=STARTUP_TIMEOUT)
            client[:].apply_sync(os.getpid)  # the engines' replies say which memory they share
            yield env, client
            assert not segments_of(client.history), "no segment of this client's requests is left"
        finally:
            if client is not None:
                client.close()
            stop_cluster(running)
    finally:
        env.cleanup()


def engine_holds_a_mapping(name: str) -> bool:
    import mmap

    base = globals()[name]
    while base is not None:
        if isinstance(base, memoryview):
            return isinstance(base.obj, mmap.mmap)
        base = getattr(base, "base", None)
    return False


engine_holds_a_mapping.__module__ = "__main__"  # run in the engine's namespace, as if interactive


@pytest.mark.parallax_only
def test_push_and_pull_round_trip_through_shared_memory(cluster: tuple[IsolatedEnv, parallax.Client]) -> None:
    _env, rc = cluster
    array = np.random.rand(BIG)
    rc[0].push({"a": array}, block=True)
    assert rc[0].apply_sync(engine_holds_a_mapping, "a")
    pulled = rc[0].pull("a", block=True)
    assert np.array_equal(pulled, array) and in_mapping(pulled)


@pytest.mark.parallax_only
def test_scatter_and_gather_round_trip_through_shared_memory(cluster: tuple[IsolatedEnv, parallax.Client]) -> None:
    _env, rc = cluster
    array = np.random.rand(4 * BIG)
    rc[:].scatter("x", array, block=True)
    assert rc[:].apply_sync(engine_holds_a_mapping, "x") == [True, True]
    assert np.array_equal(rc[:].gather("x", block=True), array)


def set_first(name: str, value: float) -> None:
    globals()[name][0] = value


set_first.__module__ = "__main__"


@pytest.mark.parallax_only
def test_engines_sharing_a_segment_keep_their_changes_private(cluster: tuple[IsolatedEnv, parallax.Client]) -> None:
    _env, rc = cluster
    rc[:].push({"b": np.zeros(BIG)}, block=True)
    rc[0].apply_sync(set_first, "b", 7.0)
    assert rc[:].pull("b", block=True)[1][0] == 0.0
    assert rc[0].pull("b", block=True)[0] == 7.0


@pytest.mark.parallax_only
def test_small_arrays_travel_as_frames(cluster: tuple[IsolatedEnv, parallax.Client]) -> None:
    _env, rc = cluster
    rc[0].push({"s": np.arange(1000.0)}, block=True)
    assert not rc[0].apply_sync(engine_holds_a_mapping, "s")
    assert not in_mapping(rc[0].pull("s", block=True))


CLIENT_THAT_STOPS = textwrap.dedent(
    """
    import os, signal, sys, time
    import parallax

    def slow_array(n):
        import time
        import numpy
        time.sleep(3)
        return numpy.zeros(n)

    rc = parallax.Client(profile="shm")
    ar = rc[0].apply_async(slow_array, int(sys.argv[1]))
    time.sleep(1)  # the request is sent; the reply comes two seconds later
    print(ar.msg_id, flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)
    """
)


@pytest.mark.parallax_only
def test_a_client_killed_before_reading_its_reply_leaves_no_segment(cluster: tuple[IsolatedEnv, parallax.Client]) -> None:
    env, _rc = cluster
    client = subprocess.Popen([sys.executable, "-c", CLIENT_THAT_STOPS, str(BIG)], env=env.environ(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout is not None
        msg_id = client.stdout.readline().strip()
        assert msg_id, "the client process printed its request's msg_id"
        wait_until(lambda: segments_of([msg_id]), DEADLINE, "the engine to write its reply's segment")
    finally:
        client.kill()
        client.wait()
    wait_until(lambda: not segments_of([msg_id]), 5, "the engine to remove the segment of the killed client")


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


@pytest.fixture
def own_cluster() -> Iterator[parallax.Client]:
    """A cluster of this test's own, whose engines it may kill."""
    env = IsolatedEnv()
    env.apply()
    try:
        running = start_cluster(env, "shm-kill", n=2)
        client = None
        try:
            client = parallax.Client(profile="shm-kill")
            client.wait_for_engines(2, timeout=STARTUP_TIMEOUT)
            yield client
        finally:
            if client is not None:
                client.close()
            stop_cluster(running)
    finally:
        env.cleanup()


@pytest.mark.parallax_only
def test_an_engine_killed_before_reading_a_push_leaves_no_segment(own_cluster: parallax.Client) -> None:
    rc = own_cluster
    kernel = rc[1].apply_sync(os.getpid)
    engine = parent_of(kernel)
    os.kill(kernel, signal.SIGSTOP)  # its support can no longer read anything
    try:
        ar = rc[1].push({"a": np.zeros(BIG)}, block=False)
        assert segments_of(ar.msg_ids), "the push went through shared memory"
    finally:
        for pid in (engine, kernel):
            os.kill(pid, signal.SIGKILL)
    with pytest.raises(parallax.EngineError):
        ar.get(DEADLINE)
    wait_until(lambda: not segments_of(ar.msg_ids), 5, "the client to remove the unread segment")
