"""Unit tests of the Python client package (no cluster, no kernel).

- the wire format: signing, verification (bad signatures and malformed frames are dropped),
  framing, timestamps;
- serialization of calls and results: functions by reference and by value, interactive
  functions bound to the engine namespace, numpy arrays as out-of-band buffers without copies;
- partitioning (scatter / gather / map) and load-balanced chunking;
- the errors' texts;
- AsyncResult / AsyncMapResult driven by replies fed to their tasks by hand;
- the Client against `FakeController`, a ROUTER in this process that speaks the client protocol
  and runs the calls itself, so views, data movement and notifications are exercised end to end
  without the Rust controller.
"""

from __future__ import annotations

import builtins
import concurrent.futures
import contextlib
import hashlib
import hmac
import io
import json
import os
import queue
import re
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import zmq

import parallax
import parallax as ipp
from parallax import _partition, error
from parallax._wire import (DELIMITER, PACK_BYTES_LIMIT, PACK_COUNT_LIMIT, PACK_DELIMITER, PACK_MESSAGE_LIMIT,
                            Session, iso_now, parse_date)
from parallax._zmqio import Outbox, Tracked
from parallax.asyncresult import AsyncMapResult, AsyncResult, Task
from parallax.engine import error_content
from parallax.serialize import (
    OUT_OF_BAND_THRESHOLD,
    Reference,
    bound_to,
    deserialize_call,
    deserialize_result,
    serialize_call,
    serialize_result,
)


def interactive_function(source: str, name: str, namespace: dict[str, Any] | None = None) -> Any:
    """A function defined as in a notebook (module `__main__`), with `namespace` as globals."""
    namespace = {"__name__": "__main__", "__builtins__": builtins} if namespace is None else namespace
    exec(source, namespace)
    return namespace[name]


# -- wire ------------------------------------------------------------------------------------------


def test_frames_are_signed_and_round_trip() -> None:
    session = Session("secret")
    header, frames = session.serialize("apply_request", {"a": 1}, metadata={"engine": 0}, buffers=[b"payload"])
    assert frames[0] == DELIMITER
    assert len(frames) == 7
    msg = Session("secret").unpack(frames)
    assert msg is not None
    assert msg.header == header
    assert msg.content == {"a": 1}
    assert msg.metadata == {"engine": 0}
    assert msg.parent_header == {}
    assert bytes(msg.buffers[0]) == b"payload"
    # The signature is the hex HMAC-SHA256 of the four JSON frames.
    import hashlib
    import hmac

    expected = hmac.new(b"secret", b"".join(frames[2:6]), hashlib.sha256).hexdigest().encode()
    assert frames[1] == expected


def test_header_fields_and_compact_json() -> None:
    header, frames = Session("k").serialize("connect_request", {})
    assert set(header) == {"msg_id", "msg_type", "session", "username", "date", "version"}
    assert header["version"] == "5.3" and header["username"] == "parallax"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", header["date"])
    assert b": " not in frames[2] and b", " not in frames[2]
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", header["msg_id"])


def test_bad_signature_and_malformed_frames_are_dropped() -> None:
    session = Session("secret")
    _, frames = session.serialize("stream", {"text": "x"})
    assert Session("other key").unpack(frames) is None
    tampered = list(frames)
    tampered[5] = b'{"text":"y"}'
    assert session.unpack(tampered) is None
    assert session.unpack(frames[1:]) is None  # no delimiter
    assert session.unpack(frames[:5]) is None  # too few frames
    bad_json = list(frames[:2]) + [b"{", b"{}", b"{}", b"{}"]
    bad_json[1] = session.sign(bad_json[2:6])
    assert session.unpack(bad_json) is None
    not_objects = [DELIMITER, b"", b"[]", b"{}", b"{}", b"{}"]
    not_objects[1] = session.sign(not_objects[2:6])
    assert session.unpack(not_objects) is None
    # Routing identities before the delimiter are skipped.
    assert session.unpack([b"identity", *frames]) is not None


def test_replies_carry_the_request_header_as_parent() -> None:
    session = Session("k")
    request_header, frames = session.serialize("apply_request", {})
    request = session.unpack(frames)
    assert request is not None
    _, reply_frames = session.serialize("apply_reply", {"status": "ok"}, parent=request.header)
    reply = session.unpack(reply_frames)
    assert reply is not None and reply.parent_header == request_header


def _draft(session: Session, i: int, buffers: list[Any]) -> tuple:
    return (session.header("apply_request"), {}, {"i": i}, {"n": i, "text": "é \" ]"}, buffers)


def test_small_messages_are_packed_in_order_and_large_ones_go_alone() -> None:
    session = Session("key")
    small = [_draft(session, i, [b"x" * i]) for i in range(3)]
    serialised = session.serialize("apply_request", {"n": 3}, metadata={"i": 3}, buffers=[b"s"])[1]
    large = _draft(session, 4, [np.zeros(20_000)])
    sent = session.to_send([small[0], small[1], serialised, large, small[2]])
    assert len(sent) == 3, "three packed (drafts and a serialised message), the large one alone, the last alone"
    assert sent[0][0] == PACK_DELIMITER and sent[1][0] == DELIMITER and sent[2][0] == DELIMITER
    # One signature covers the index, which holds every message of the pack.
    pack = sent[0]
    expected = hmac.new(b"key", pack[2], hashlib.sha256).hexdigest().encode()
    assert pack[1] == expected and len(json.loads(pack[2])) == 3
    arrived = session.receive([b"peer", *pack])
    assert [m.content["n"] for m in arrived] == [0, 1, 3]
    assert [m.metadata["i"] for m in arrived] == [0, 1, 3]
    assert [[bytes(b) for b in m.buffers] for m in arrived] == [[b""], [b"x"], [b"s"]]
    assert arrived[0].header == small[0][0] and arrived[0].content["text"] == "é \" ]"
    (alone,) = session.receive(sent[2])
    assert alone.content["n"] == 2, "a message that is not a pack is itself"
    assert session.receive(sent[1])[0].buffers[0].nbytes == 160_000
    # A long burst is cut into packs of about PACK_BYTES_LIMIT.
    burst = [_draft(session, i, [b"y" * 40_000]) for i in range(100)]
    packs = session.to_send(burst)
    assert 1 < len(packs) < 10
    assert all(len(p) == 4 and len(p[3]) < PACK_BYTES_LIMIT + PACK_MESSAGE_LIMIT for p in packs)
    assert [m.content["n"] for p in packs for m in session.receive(p)] == list(range(100))
    assert len(session.to_send(small[:1] * (PACK_COUNT_LIMIT + 1))) == 2, "at most PACK_COUNT_LIMIT to a pack"


def test_bad_packs_are_dropped_whole_and_bad_records_alone(caplog: pytest.LogCaptureFixture) -> None:
    session = Session("key")
    pack = session.to_send([_draft(session, i, [b"z"]) for i in range(3)])[0]
    with caplog.at_level("WARNING", logger="parallax"):
        assert Session("other key").receive(pack) == [], "signed with another key"
        assert session.receive([*pack[:3], pack[3][:-1]]) == [], "a byte of buffers short"
        assert session.receive([*pack, b""]) == [], "a frame too many"
        assert session.receive(pack[:2]) == [], "no index"
        tampered = [*pack[:2], pack[2].replace(b'"n":1', b'"n":7'), *pack[3:]]
        assert session.receive(tampered) == []
    assert "bad signature" in caplog.text and "malformed pack" in caplog.text

    def signed(index: bytes, buffers: bytes = b"") -> list[Any]:
        return [PACK_DELIMITER, session.sign((index,)), index, buffers]

    for index in (b"{}", b"[[{}]]", b"[[{},{},{},{},0]]", b"[[{},{},{},{},[-1]]]", b"[1]", b"[",
                  b"[[{},{},{},{},[true]]]", b"[[{},{},{},{},[1]]]"):
        assert session.receive(signed(index)) == [], index
    header = json.dumps({"msg_id": "a", "msg_type": "t"}).encode()
    mixed = b"[[%b,{},{},{},[1]],[[],{},{},{},[1]],[%b,{},{},{},[1,0]]]" % (header, header)
    arrived = session.receive(signed(mixed, b"xyz"))
    assert [(m.msg_id, m.buffers) for m in arrived] == [("a", [b"x"]), ("a", [b"z", b""])]
    assert session.receive(signed(b"[]")) == []


def test_a_draft_that_cannot_be_serialised_is_dropped_alone(caplog: pytest.LogCaptureFixture) -> None:
    session = Session("key")
    drafts = [_draft(session, i, []) for i in range(3)]
    drafts[1][3]["bad"] = float("nan")  # not JSON
    with caplog.at_level("ERROR", logger="parallax"):
        sent = session.to_send(drafts)
    assert [m.content["n"] for frames in sent for m in session.receive(frames)] == [0, 2]
    assert "could not serialise" in caplog.text


def test_an_interrupted_put_does_not_silence_the_outbox() -> None:
    """A KeyboardInterrupt that lands in Outbox.put's wake-up send (the stop button while a task
    prints) must not keep later messages from waking the IO thread."""
    context = zmq.Context()
    outbox = Outbox(context, "test")
    real_writer = outbox._writer

    class Interrupted:
        def send(self, data: bytes) -> None:
            raise KeyboardInterrupt

    try:
        outbox._writer = Interrupted()
        with pytest.raises(KeyboardInterrupt):
            outbox.put([b"first"])
        outbox._writer = real_writer
        outbox.put([b"second"])
        assert outbox.reader.poll(1000), "the IO thread is woken"
        assert outbox.take() == [[b"first"], [b"second"]]
    finally:
        outbox.close()
        outbox.reader.close(linger=0)
        context.term()


def test_the_outbox_counts_what_has_left_and_tracks_zero_copy_sends() -> None:
    """`put` numbers messages and `wait_sent` says when the IO thread has sent them; a Tracked
    message leaves alone, with a tracker of its zero-copy buffer, and its neighbours still pack."""
    context = zmq.Context()
    outbox = Outbox(context, "test")
    session = Session("key")
    dealer, router = context.socket(zmq.DEALER), context.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    big = np.arange(1 << 17, dtype=np.float64)  # 1 MiB: sent without a copy
    try:
        def draft(n: int, buffers: list[Any] = []) -> Any:  # noqa: B006 -- never mutated
            return (session.header("apply_request"), {}, {}, {"n": n}, buffers)

        numbers = [outbox.put(draft(n)) for n in range(3)]
        tracked = Tracked(draft(3, [big]))
        numbers.append(outbox.put(tracked))
        numbers.append(outbox.put(draft(4)))
        assert numbers == [1, 2, 3, 4, 5]
        assert outbox.wait_sent(1, timeout=0) is False, "nothing has left yet"
        assert tracked.tracker is None and not tracked.done
        assert outbox.send_waiting(dealer, session) is False
        assert outbox.sent == 5 and outbox.wait_sent(5, timeout=0)
        assert tracked.tracker is not None
        tracked.tracker.wait(5)
        assert tracked.done
        received = []
        while len(received) < 3:
            assert router.poll(5000), f"only {len(received)} messages arrived"
            frames = router.recv_multipart()[1:]
            received.append([m.content["n"] for m in session.receive(frames)])
        assert received == [[0, 1, 2], [3], [4]]
    finally:
        outbox.close()
        outbox.reader.close(linger=0)
        dealer.close(linger=0)
        router.close(linger=0)
        context.term()


def test_dates() -> None:
    parsed = parse_date("2026-11-23T10:00:00.123456Z")
    assert parsed == datetime(2026, 11, 23, 10, 0, 0, 123456, tzinfo=timezone.utc)
    assert parse_date("2026-11-23T10:00:00.123456789+00:00").microsecond == 123456
    assert parse_date("2026-11-23T10:00:00").tzinfo is not None
    assert parse_date(None) is None and parse_date("soon") == "soon"
    now = parse_date(iso_now())
    assert abs((datetime.now(timezone.utc) - now).total_seconds()) < 5


# -- serialization ---------------------------------------------------------------------------------


def test_module_functions_travel_by_reference() -> None:
    frames = serialize_call(os.getpid)
    assert len(frames[0]) < 100
    f, args, kwargs = deserialize_call(frames, {})
    assert f is os.getpid and args == () and kwargs == {}


def test_lambdas_and_closures() -> None:
    offset = 10

    def add(x: int) -> int:
        return x + offset

    frames = serialize_call(add, (1,))
    f, args, _ = deserialize_call(frames, {})
    assert f(*args) == 11
    frames = serialize_call(lambda x, y=2: x * y, (3,), {"y": 4})
    f, args, kwargs = deserialize_call(frames, {})
    assert f(*args, **kwargs) == 12


def test_interactive_functions_use_the_engine_namespace() -> None:
    f = interactive_function("def f():\n    return a\n", "f")
    engine_ns: dict[str, Any] = {"a": 1}
    g, _, _ = deserialize_call(serialize_call(f), engine_ns)
    assert g.__globals__ is engine_ns
    assert g() == 1


def test_captured_globals_fill_gaps_and_interactive_helpers_replace() -> None:
    client_ns = {"__name__": "__main__", "__builtins__": builtins, "a": "client", "b": "client"}
    interactive_function("def helper():\n    return 'new helper'\n", "helper", client_ns)
    f = interactive_function("def f():\n    return a, b, helper()\n", "f", client_ns)
    old_helper = interactive_function("def helper():\n    return 'old helper'\n", "helper")
    engine_ns: dict[str, Any] = {"a": "engine", "helper": old_helper}
    g, _, _ = deserialize_call(serialize_call(f), engine_ns)
    assert g() == ("engine", "client", "new helper")
    assert engine_ns["b"] == "client"


def test_recursive_interactive_function() -> None:
    f = interactive_function("def fact(n):\n    return 1 if n < 2 else n * fact(n - 1)\n", "fact")
    g, args, _ = deserialize_call(serialize_call(f, (5,)), {})
    assert g(*args) == 120


def test_references_resolve_on_the_engine() -> None:
    frames = serialize_call(len, (Reference("data"),))
    _, args, _ = deserialize_call(frames, {"data": [1, 2, 3]})
    assert args == ([1, 2, 3],)
    with pytest.raises(TypeError):
        Reference(3)  # type: ignore[arg-type]


def test_large_arrays_travel_out_of_band_without_copies() -> None:
    big = np.arange(100_000, dtype=np.float64)
    small = np.arange(10, dtype=np.float64)
    frames = serialize_call(np.sum, (big, small))
    assert len(frames) == 2, "only the large array leaves the pickle"
    assert frames[1].nbytes == big.nbytes
    assert np.shares_memory(np.frombuffer(frames[1], dtype=np.float64), big), "the buffer is the array's memory"
    assert len(frames[0]) < OUT_OF_BAND_THRESHOLD
    f, (a, b), _ = deserialize_call([frames[0], bytearray(frames[1])], {})
    assert np.array_equal(a, big) and np.array_equal(b, small)
    assert a.flags.writeable


def test_results_round_trip_with_engine_defined_functions() -> None:
    array = np.ones((300, 300))
    frames = serialize_result({"x": array, "n": 3})
    assert len(frames) == 2
    back = deserialize_result(frames)
    assert back["n"] == 3 and np.array_equal(back["x"], array)
    func = deserialize_result(serialize_result(lambda: 42))
    assert func() == 42
    # A function defined in the engine's __main__ (by %px or run) cannot be imported here.
    engine_defined = interactive_function("def square(x):\n    return x * x\n", "square")
    assert deserialize_result(serialize_result(engine_defined))(3) == 9


def test_engine_error_content_keeps_user_frames_only() -> None:
    def user_code() -> None:
        1 / 0

    def runner() -> None:
        # Stands in for the support: frames from files in the parallax package are dropped.
        exec(compile("user_code()", parallax.engine.__file__, "exec"), {"user_code": user_code})

    try:
        runner()
    except ZeroDivisionError as exc:
        content = error_content(exc)
    assert content["ename"] == "ZeroDivisionError" and content["evalue"] == "division by zero"
    text = "\n".join(content["traceback"])
    assert "user_code" in text and "engine.py" not in text
    assert content["traceback"][-1] == "ZeroDivisionError: division by zero"


# -- partitioning ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "q", "expected"),
    [
        (7, 2, [[0, 1, 2, 3], [4, 5, 6]]),
        (24, 4, [list(range(i, i + 6)) for i in range(0, 24, 6)]),
        (5, 3, [[0, 1], [2, 3], [4]]),
        (2, 4, [[0], [1], [], []]),
    ],
)
def test_partitions_are_contiguous_with_extras_first(n: int, q: int, expected: list[list[int]]) -> None:
    parts = [_partition.partition(list(range(n)), p, q) for p in range(q)]
    assert parts == expected
    assert _partition.join([p for p in parts if p]) == list(range(n))


def test_arrays_split_along_axis_0_and_join_with_numpy() -> None:
    matrix = np.arange(14).reshape(7, 2)
    parts = [_partition.partition(matrix, p, 2) for p in range(2)]
    assert all(isinstance(p, np.ndarray) for p in parts)
    assert [p.shape for p in parts] == [(4, 2), (3, 2)]
    joined = _partition.join(parts)
    assert isinstance(joined, np.ndarray) and np.array_equal(joined, matrix)


def test_round_robin_and_scalars() -> None:
    parts = [_partition.round_robin(list(range(7)), p, 2) for p in range(2)]
    assert parts == [[0, 2, 4, 6], [1, 3, 5]]
    assert _partition.join_round_robin(parts) == list(range(7))
    assert _partition.join([1, 2]) == [1, 2]  # flattened scalars come back as a list
    with pytest.raises(ValueError, match="dist must be"):
        _partition.distribution("x")


@pytest.mark.parametrize(
    ("items", "engines", "chunksize"),
    [(5000, 2, 313), (10, 2, 1), (16, 2, 1), (17, 2, 2), (0, 2, 1), (100, 0, 13), (1, 8, 1)],
)
def test_automatic_chunk_size(items: int, engines: int, chunksize: int) -> None:
    assert _partition.auto_chunksize(items, engines) == chunksize


def test_chunk_count() -> None:
    assert _partition.chunk_count(10, 3) == 4
    assert _partition.chunk_count(9, 3) == 3
    assert _partition.chunk_count(0, 3) == 0


# -- errors ----------------------------------------------------------------------------------------


def _zero_division(engine_id: int, method: str = "apply") -> error.RemoteError:
    return error.remote_error(
        {"ename": "ZeroDivisionError", "evalue": "division by zero",
         "traceback": ["Traceback (most recent call last):", '  File "<cell>", line 1', "ZeroDivisionError: division by zero"]},
        {"engine_id": engine_id, "method": method},
    )


def test_remote_error_text() -> None:
    err = _zero_division(0)
    assert str(err) == "[0:apply] ZeroDivisionError: division by zero"
    assert repr(err) == "<RemoteError[0]:ZeroDivisionError(division by zero)>"
    assert err.render_traceback()[0] == "[0:apply]"
    assert err.render_traceback()[-1] == "ZeroDivisionError: division by zero"
    assert str(error.RemoteError("E", "v", None)) == "[Engine Exception] E: v"


def test_composite_error_text() -> None:
    errors = [_zero_division(0, "execute"), _zero_division(1, "execute")]
    with pytest.raises(error.CompositeError) as caught:
        error.collect_exceptions(errors, "%px")
    composite = caught.value
    assert str(composite) == (
        "one or more exceptions raised in: %px\n"
        "[0:execute]ZeroDivisionError: division by zero\n"
        "[1:execute]ZeroDivisionError: division by zero"
    )
    assert repr(composite) == "CompositeError(2)"
    lines = composite.render_traceback()
    assert lines[0] == "[0:execute]:" and "" in lines
    with pytest.raises(error.RemoteError) as single:
        composite.raise_exception(1)
    assert single.value.engine_info["engine_id"] == 1
    many = error.CompositeError("m", [("E", "v", None, {"engine_id": i, "method": "apply"}) for i in range(6)])
    assert str(many).endswith(".... 2 more exceptions ...")


def test_controller_failures_are_remote_errors_of_their_kind() -> None:
    died = error.remote_error({"ename": "EngineError", "evalue": "engine 1 died while running this request"},
                              {"engine_id": 1, "method": "apply"})
    assert isinstance(died, error.RemoteError) and isinstance(died, ipp.EngineError)
    assert repr(died) == "<RemoteError[1]:EngineError(engine 1 died while running this request)>"
    assert isinstance(error.remote_error({"ename": "TaskTimeout", "evalue": "x"}), ipp.TaskTimeout)
    assert isinstance(error.remote_error({"ename": "TaskAborted", "evalue": "x"}), ipp.TaskAborted)
    assert isinstance(error.remote_error({"ename": "NoEngines", "evalue": "x"}), ipp.NoEnginesRegistered)
    assert "wait_for_engines" in str(ipp.NoEnginesRegistered())


# -- AsyncResult, fed by hand ----------------------------------------------------------------------


def _reply(task: Task, value: Any = None, engine_id: int = 0, failure: dict[str, Any] | None = None) -> None:
    started = iso_now()
    if failure is None:
        content: dict[str, Any] = {"status": "ok"}
        buffers = serialize_result(value)
    else:
        content = {"status": "error", **failure}
        buffers = []
    task.complete(content, {"engine_id": engine_id, "started": started, "completed": iso_now()}, iso_now(), buffers)


def test_async_result_lifecycle() -> None:
    task = Task("m1")
    ar = AsyncResult(None, task, fname="mul")
    assert repr(ar) == "<AsyncResult(mul): pending>"
    assert not ar.ready()
    with pytest.raises(TimeoutError, match="Result not ready."):
        ar.get(timeout=0.01)
    task.add_output("stream", {"name": "stdout", "text": "hello\n"}, 0)
    _reply(task, 30, engine_id=0)
    assert ar.ready() and ar.successful()
    assert ar.get() == 30 and ar.result() == 30 and ar.r == 30
    assert repr(ar) == "<AsyncResult(mul): finished>"
    assert ar.stdout == "hello\n"
    assert ar.engine_id == 0
    md = ar.metadata
    assert md.msg_id == "m1" and md.status == "ok"
    assert all(isinstance(md[k], datetime) for k in ("submitted", "started", "completed", "received"))
    assert ar.serial_time >= 0 and ar.wall_time >= 0 and ar.elapsed >= 0
    assert ar.get_dict() == {0: 30}
    assert ar.progress == 1 and len(ar) == 1


def test_async_result_failure_single_and_several() -> None:
    failure = {"ename": "ZeroDivisionError", "evalue": "division by zero", "traceback": ["ZeroDivisionError: division by zero"]}
    task = Task("m1")
    ar = AsyncResult(None, task, fname="f")
    _reply(task, failure=failure, engine_id=0)
    assert repr(ar) == "<AsyncResult(f): failed>"
    assert not ar.successful()
    with pytest.raises(error.RemoteError) as caught:
        ar.get()
    assert str(caught.value) == "[0:apply] ZeroDivisionError: division by zero"
    assert isinstance(ar.exception(), error.RemoteError)
    assert isinstance(ar.metadata["error"], error.RemoteError)

    tasks = [Task("a"), Task("b")]
    multi = AsyncResult(None, tasks, fname="f", targets=[0, 1])
    _reply(tasks[0], 1, engine_id=0)
    _reply(tasks[1], failure=failure, engine_id=1)
    with pytest.raises(error.CompositeError) as composite:
        multi.get()
    assert str(composite.value) == "one or more exceptions raised in: f\n[1:apply]ZeroDivisionError: division by zero"
    values = multi.get(return_exceptions=True)
    assert values[0] == 1 and isinstance(values[1], error.RemoteError)


def test_async_result_aborted_and_dead_engine() -> None:
    task = Task("m1")
    ar = AsyncResult(None, task, fname="f")
    task.complete({"status": "aborted", "ename": "TaskAborted", "evalue": "aborted"}, {"engine_id": 0}, None, [])
    with pytest.raises(ipp.TaskAborted) as aborted:
        ar.get()
    assert str(aborted.value) == "m1"  # as ipyparallel: the text is the msg_id
    assert repr(ar) == "<AsyncResult(f): failed>" and ar.metadata["status"] == "aborted"
    tasks = [Task("a"), Task("b")]
    several = AsyncResult(None, tasks, fname="f")
    _reply(tasks[0], 1)
    tasks[1].complete({"status": "aborted"}, {"engine_id": 1}, None, [])
    with pytest.raises(error.CompositeError, match=r"\[1:apply\]TaskAborted: b"):
        several.get()
    task = Task("m2")
    ar = AsyncResult(None, [task])
    task.complete({"status": "error", "ename": "EngineError", "evalue": "engine 1 died while running this request"},
                  {"engine_id": 1}, None, [])
    with pytest.raises(error.CompositeError) as caught:
        ar.get()
    assert "[1:apply]EngineError: engine 1 died while running this request" in str(caught.value)


def test_async_result_is_a_future() -> None:
    tasks = [Task("a"), Task("b")]
    ar = AsyncResult(None, tasks, targets=[0, 1])
    called = threading.Event()
    ar.add_done_callback(lambda f: called.set())
    assert not ar.cancel()
    done, pending = concurrent.futures.wait([ar], timeout=0.01)
    assert pending
    _reply(tasks[1], 2, engine_id=1)
    done, pending = ar.wait(0.01, return_when=concurrent.futures.FIRST_COMPLETED)
    assert len(done) == 1 and len(pending) == 1
    _reply(tasks[0], 1, engine_id=0)
    assert called.wait(1)
    assert ar.result() == [1, 2] and list(ar) == [1, 2]
    assert ar.get_dict() == {0: 1, 1: 2}


def test_async_map_result_joins_and_iterates() -> None:
    tasks = [Task("a", chunk=3), Task("b", chunk=2)]
    amr = AsyncMapResult(None, tasks, fname="square")
    assert len(amr) == 5 and amr.progress == 0
    _reply(tasks[0], [0, 1, 4])
    assert amr.progress == 3
    _reply(tasks[1], [9, 16])
    assert amr.get() == [0, 1, 4, 9, 16]
    assert list(amr) == [0, 1, 4, 9, 16]


def test_async_map_result_unordered_iteration_follows_arrival() -> None:
    tasks = [Task("a"), Task("b"), Task("c")]
    amr = AsyncMapResult(None, tasks, ordered=False)
    arrived: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def consume() -> None:
        for item in amr:
            arrived.put(item)

    consumer = threading.Thread(target=consume)
    consumer.start()
    _reply(tasks[2], ["c"])
    assert arrived.get(timeout=5) == "c"
    _reply(tasks[0], ["a"])
    assert arrived.get(timeout=5) == "a"
    _reply(tasks[1], ["b"])
    assert arrived.get(timeout=5) == "b"
    consumer.join(5)


def test_execute_results_and_outputs_in_metadata() -> None:
    task = Task("e", kind="execute", engine_id=1)
    ar = AsyncResult(None, [task], fname="execute", targets=[1])
    task.add_output("execute_input", {"code": "10"}, 1)
    task.add_output("stream", {"name": "stdout", "text": "50%\r"}, 1)
    task.add_output("stream", {"name": "stdout", "text": "100%\n"}, 1)
    task.add_output("execute_result", {"data": {"text/plain": "10"}, "metadata": {}, "execution_count": 9}, 1)
    task.complete({"status": "ok", "execution_count": 9}, {"engine_id": 1}, iso_now(), [])
    assert ar.stdout == ["100%\n"]
    reply = ar.get()[0]
    assert repr(reply) == "<ExecuteReply[9]: 10>"
    assert reply._plaintext() == "Out[1:9]: 10"
    assert ar.execute_result[0]["data"]["text/plain"] == "10"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        ar.display_outputs()
    assert out.getvalue() == "[stdout:1] \n100%\n"


# -- Client without a cluster ----------------------------------------------------------------------


def test_client_without_a_cluster_says_how_to_start_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLAX_DIR", str(tmp_path))
    monkeypatch.delenv("PARALLAX_PROFILE", raising=False)
    with pytest.raises(OSError) as caught:
        ipp.Client()
    assert isinstance(caught.value, ipp.NoClusterError)
    assert "parallax cluster start -n 4 --profile default" in str(caught.value)
    with pytest.raises(ipp.NoClusterError, match="--profile lab"):
        ipp.Client(profile="lab")


def test_client_with_a_stale_connection_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLAX_DIR", str(tmp_path))
    security = tmp_path / "profile_default" / "security"
    security.mkdir(parents=True)
    dead_pid = _dead_pid()
    (security / "controller-client.json").write_text(json.dumps(
        {"url": "tcp://127.0.0.1:9", "key": "k", "signature_scheme": "hmac-sha256", "profile": "default",
         "controller_pid": dead_pid}))
    with pytest.raises(ipp.NoClusterError, match=f"pid {dead_pid}, which has exited"):
        ipp.Client()


def _dead_pid() -> int:
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# -- Client against a fake controller --------------------------------------------------------------


class FakeController:
    """A controller in a thread: answers the client protocol and runs calls itself, each engine
    with its own namespace. `hold()` queues apply requests instead of running them (for abort)."""

    def __init__(self, n_engines: int = 2) -> None:
        self.key = "fake-key"
        self.session = Session(self.key)
        self.context = zmq.Context()
        self.router = self.context.socket(zmq.ROUTER)
        port = self.router.bind_to_random_port("tcp://127.0.0.1")
        self.url = f"tcp://127.0.0.1:{port}"
        self.engines: dict[int, dict[str, Any]] = {}
        self.namespaces: dict[int, dict[str, Any]] = {}
        self.clients: list[bytes] = []
        self.records: dict[str, tuple[dict[str, Any], list[Any]]] = {}
        self.commands: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.held: list[tuple[list[bytes], Any, int]] = []
        self.holding = False
        self.next_balanced = 0
        self.received: list[str] = []
        self.completed = {i: 0 for i in range(64)}
        for _ in range(n_engines):
            self._add_engine()
        self.running = True
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()

    # Commands run in the controller's thread (it owns the socket); each returns once done.
    def _do(self, command: str, arg: Any) -> None:
        done = threading.Event()
        self.commands.put((command, arg, done))
        assert done.wait(5), f"the fake controller did not run {command}"

    def add_engine(self) -> None:
        self._do("add", None)

    def kill_engine(self, engine_id: int) -> None:
        self._do("kill", engine_id)

    def hold(self, on: bool) -> None:
        self._do("hold", on)

    def stop(self) -> None:
        self.running = False
        self.thread.join(5)
        self.router.close(linger=0)
        self.context.term()

    def _add_engine(self) -> dict[str, Any]:
        engine_id = len(self.engines)
        info = {"id": engine_id, "uuid": f"uuid-{engine_id}", "host": "localhost", "pid": os.getpid(), "kernel": "python3",
                "kernel_pid": os.getpid(), "state": "idle", "registered": iso_now(), "last_heartbeat": iso_now(),
                "tasks_done": 0, "queue": 0}
        self.engines[engine_id] = info
        self.namespaces[engine_id] = {"__name__": "__main__", "__builtins__": builtins}
        return info

    def _main(self) -> None:
        while self.running:
            while True:
                try:
                    command, arg, done = self.commands.get_nowait()
                except queue.Empty:
                    break
                self._command(command, arg)
                done.set()
            if self.router.poll(20):
                # A client packs what it sends in a burst, as it does to the real controller.
                frames = self.router.recv_multipart()
                identity = frames[:1]
                for msg in self.session.receive(frames):
                    self._handle(identity, msg)

    def _command(self, command: str, arg: Any) -> None:
        if command == "add":
            info = self._add_engine()
            self._notify("engine_registered", info)
        elif command == "kill":
            self.engines[arg]["state"] = "dead"
            self._notify("engine_died", {"id": arg, "reason": "killed by the test", "restarting": False})
        elif command == "hold":
            self.holding = arg
            if not arg:
                held, self.held = self.held, []
                for identity, msg, engine_id in held:
                    self._run_apply(identity, msg, engine_id)

    def _notify(self, msg_type: str, content: dict[str, Any]) -> None:
        for identity in self.clients:
            _, frames = self.session.serialize(msg_type, content)
            self.router.send_multipart([identity, *frames])

    def _send(self, identity: list[bytes], msg_type: str, content: dict[str, Any], parent: Any,
              metadata: dict[str, Any] | None = None, buffers: list[Any] = ()) -> None:  # type: ignore[assignment]
        _, frames = self.session.serialize(msg_type, content, parent=parent.header, metadata=metadata, buffers=buffers)
        self.router.send_multipart([*identity, *frames])

    def _live(self) -> list[int]:
        return [i for i, e in self.engines.items() if e["state"] != "dead"]

    def _handle(self, identity: list[bytes], msg: Any) -> None:
        msg_type = msg.msg_type
        self.received.append(msg_type)
        if msg_type == "connect_request":
            self.clients.append(identity[0])
            self._send(identity, "connect_reply",
                       {"status": "ok", "engines": list(self.engines.values()), "profile": "default"}, msg)
        elif msg_type == "apply_request":
            if msg.metadata.get("balanced"):
                choices = msg.metadata.get("targets") or self._live()
                engine_id = choices[self.next_balanced % len(choices)]
                self.next_balanced += 1
            else:
                engine_id = msg.metadata["engine"]
            if self.holding:
                self.held.append((identity, msg, engine_id))
            else:
                self._run_apply(identity, msg, engine_id)
        elif msg_type == "execute_request":
            self._run_execute(identity, msg)
        elif msg_type == "abort_request":
            wanted = set(msg.content["msg_ids"])
            aborted = [h for h in self.held if h[1].msg_id in wanted]
            self.held = [h for h in self.held if h[1].msg_id not in wanted]
            for held_identity, held_msg, engine_id in aborted:
                self._send(held_identity, "apply_reply", {"status": "aborted", "ename": "TaskAborted", "evalue": "aborted"},
                           held_msg, {"engine_id": engine_id, "status": "aborted"})
            self._send(identity, "abort_reply", {"status": "ok", "aborted": [h[1].msg_id for h in aborted]}, msg)
        elif msg_type == "queue_request":
            engines = {str(i): {"queue": 0, "completed": self.completed[i], "tasks": 0} for i in self._live()}
            self._send(identity, "queue_reply", {"status": "ok", "unassigned": 0, "engines": engines}, msg)
        elif msg_type == "task_request":
            record = self.records.get(msg.content["msg_id"])
            if record is None:
                self._send(identity, "task_reply", {"status": "error", "ename": "KeyError", "evalue": "no such task"}, msg)
            else:
                self._send(identity, "task_reply", {"status": "ok", "task": record[0]}, msg, buffers=record[1])
        elif msg_type == "query_request":
            wanted = msg.content["query"].get("msg_id", {}).get("$in")
            keys = msg.content.get("keys")
            records = [r for m, (r, _) in self.records.items() if wanted is None or m in wanted]
            if keys:
                records = [{k: r[k] for k in {*keys, "msg_id"}} for r in records]
            self._send(identity, "query_reply", {"status": "ok", "records": records}, msg)
        else:
            self._send(identity, msg_type.replace("_request", "_reply"),
                       {"status": "error", "ename": "ValueError", "evalue": f"unknown {msg_type}"}, msg)

    def _run_apply(self, identity: list[bytes], msg: Any, engine_id: int) -> None:
        if self.engines[engine_id]["state"] == "dead":
            self._send(identity, "apply_reply", {"status": "error", "ename": "EngineError",
                                                 "evalue": f"engine {engine_id} is dead", "traceback": []},
                       msg, {"engine_id": engine_id, "status": "error"})
            return
        started = iso_now()
        namespace = self.namespaces[engine_id]
        printed = io.StringIO()
        try:
            with bound_to(namespace), contextlib.redirect_stdout(printed):
                f, args, kwargs = deserialize_call([bytes(b) for b in msg.buffers], namespace)
                result = f(*args, **kwargs)
            buffers = serialize_result(result)
            content: dict[str, Any] = {"status": "ok"}
        except Exception as exc:
            content, buffers = error_content(exc), []
        if printed.getvalue():
            self._send(identity, "stream", {"name": "stdout", "text": printed.getvalue()}, msg, {"engine_id": engine_id})
        metadata = {"engine_id": engine_id, "status": content["status"], "started": started, "completed": iso_now()}
        self.completed[engine_id] += 1
        record = {"msg_id": msg.msg_id, "client": msg.header["session"], "engine": engine_id, "msg_type": "apply_request",
                  "status": content["status"], "submitted": started, "started": started, "completed": iso_now(),
                  "received": iso_now(), "stdout": printed.getvalue(), "stderr": "",
                  "error": None if content["status"] == "ok" else content, "result": None}
        self.records[msg.msg_id] = (record, buffers)
        self._send(identity, "apply_reply", content, msg, metadata, buffers)

    def _run_execute(self, identity: list[bytes], msg: Any) -> None:
        engine_id = msg.metadata["engine"]
        namespace = self.namespaces[engine_id]
        printed = io.StringIO()
        md = {"engine_id": engine_id}
        try:
            with contextlib.redirect_stdout(printed):
                exec(msg.content["code"], namespace)
            content: dict[str, Any] = {"status": "ok", "execution_count": 1}
        except Exception as exc:
            content = {**error_content(exc), "execution_count": 1}
            self._send(identity, "error", content, msg, md)
        if printed.getvalue():
            self._send(identity, "stream", {"name": "stdout", "text": printed.getvalue()}, msg, md)
        self._send(identity, "status", {"execution_state": "idle"}, msg, md)
        self._send(identity, "execute_reply", content, msg, md)


@pytest.fixture
def fake() -> Iterator[FakeController]:
    controller = FakeController()
    try:
        yield controller
    finally:
        controller.stop()


@pytest.fixture
def rc(fake: FakeController, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ipp.Client]:
    monkeypatch.setenv("PARALLAX_DIR", str(tmp_path))
    security = tmp_path / "profile_default" / "security"
    security.mkdir(parents=True)
    (security / "controller-client.json").write_text(json.dumps(
        {"url": fake.url, "key": fake.key, "signature_scheme": "hmac-sha256", "profile": "default",
         "controller_pid": os.getpid()}))
    client = ipp.Client(timeout=5)
    try:
        yield client
    finally:
        client.close()


def test_client_views_and_reprs(rc: ipp.Client) -> None:
    assert rc.ids == [0, 1] and len(rc) == 2
    assert repr(rc[0]) == "<DirectView 0>"
    assert repr(rc[:]) == "<DirectView [0, 1]>"
    assert repr(rc[::2]) == "<DirectView [0]>"
    assert repr(rc[[0, 1]]) == "<DirectView [0, 1]>"
    assert repr(rc.direct_view()) == "<DirectView all>"
    assert repr(rc.load_balanced_view()) == "<LoadBalancedView None>"
    with pytest.raises(IndexError, match="No such engine: 7"):
        rc[7]


def test_apply_on_one_and_several_engines(rc: ipp.Client) -> None:
    mul = interactive_function("def mul(a, b):\n    return a * b\n", "mul")
    assert rc[0].apply_sync(mul, 5, 6) == 30
    assert rc[:].apply_sync(mul, 5, 6) == [30, 30]
    ar = rc[:].apply_async(mul, 2, 3)
    assert ar.get(timeout=5) == [6, 6]
    assert ar.get_dict() == {0: 6, 1: 6}
    assert repr(ar) == "<AsyncResult(mul): finished>"
    assert rc.load_balanced_view().apply_sync(sum, [1, 2, 3]) == 6
    assert not rc.outstanding
    assert rc.results[ar.msg_ids[0]] == 6
    assert rc.metadata[ar.msg_ids[0]]["engine_id"] == 0


def test_remote_errors(rc: ipp.Client) -> None:
    boom = interactive_function("def boom():\n    return 1 / 0\n", "boom")
    with pytest.raises(ipp.RemoteError) as single:
        rc[0].apply_sync(boom)
    assert str(single.value) == "[0:apply] ZeroDivisionError: division by zero"
    assert "boom" in single.value.traceback and "parallax" not in single.value.traceback
    with pytest.raises(ipp.CompositeError) as several:
        rc[:].apply_sync(boom)
    assert str(several.value).splitlines() == [
        "one or more exceptions raised in: boom",
        "[0:apply]ZeroDivisionError: division by zero",
        "[1:apply]ZeroDivisionError: division by zero",
    ]


def test_push_pull_and_namespace_access(rc: ipp.Client) -> None:
    dview = rc[:]
    dview.block = True
    assert dview.push({"a": 1, "b": [1, 2]}) == [None, None]
    assert dview.pull("a") == [1, 1]
    assert dview.pull(["a", "b"]) == [[1, [1, 2]], [1, [1, 2]]]
    dview["c"] = 5
    assert dview["c"] == [5, 5]
    uses_a = interactive_function("def uses_a():\n    return a + 1\n", "uses_a")
    assert dview.apply(uses_a) == [2, 2]
    with pytest.raises(ipp.CompositeError, match="NameError"):
        dview.pull("missing")


def test_scatter_and_gather(rc: ipp.Client) -> None:
    dview = rc[:]
    dview.scatter("x", list(range(7)), block=True)
    assert dview.pull("x", block=True) == [[0, 1, 2, 3], [4, 5, 6]]
    assert dview.gather("x", block=True) == list(range(7))
    dview.scatter("x", np.arange(14).reshape(7, 2), block=True)
    parts = dview.pull("x", block=True)
    assert [p.shape for p in parts] == [(4, 2), (3, 2)]
    gathered = dview.gather("x", block=True)
    assert isinstance(gathered, np.ndarray) and np.array_equal(gathered, np.arange(14).reshape(7, 2))
    dview.scatter("y", [10, 20], flatten=True, block=True)
    assert dview.pull("y", block=True) == [10, 20]
    ar = dview.scatter("z", [1, 2, 3])
    assert repr(ar).startswith("<AsyncResult(scatter)")
    ar.get(5)


def test_maps(rc: ipp.Client, fake: FakeController) -> None:
    square = interactive_function("def square(x):\n    return x * x\n", "square")
    dview = rc[:]
    amr = dview.map(square, range(7))
    assert len(amr) == 7 and len(amr.msg_ids) == 2
    assert amr.get(5) == [x * x for x in range(7)]
    lview = rc.load_balanced_view()
    amr = lview.map(square, range(100), chunksize=10)
    assert len(amr.msg_ids) == 10 and len(amr) == 100
    assert list(amr) == [x * x for x in range(100)]
    amr = lview.map(square, range(5000))
    assert len(amr.msg_ids) == 16 and len(amr) == 5000
    assert amr.get(10) == [x * x for x in range(5000)]
    assert lview.map_sync(lambda a, b: a + b, [1, 2], [10, 20]) == [11, 22]
    assert sorted(lview.map(square, range(10), ordered=False)) == sorted(x * x for x in range(10))
    assert list(lview.imap(square, iter(range(9)), chunksize=2)) == [x * x for x in range(9)]
    assert lview.map_sync(square, []) == []


def test_decorators(rc: ipp.Client) -> None:
    dview = rc[:]

    @dview.remote(block=True)
    def where() -> str:
        return "engine"

    assert where() == ["engine", "engine"]

    @dview.parallel(block=True)
    def total(chunk: list[int]) -> list[int]:
        return [sum(chunk)]

    assert total(list(range(7))) == [6, 15]


def test_execute_and_outputs(rc: ipp.Client) -> None:
    dview = rc[:]
    ar = dview.execute("x = 6 * 7\nprint('hi')", block=True)
    assert ar.stdout == ["hi\n", "hi\n"]
    assert dview.pull("x", block=True) == [42, 42]
    assert repr(ar) == "<AsyncResult(execute): finished>"
    with pytest.raises(ipp.CompositeError, match=r"\[0:execute\]ZeroDivisionError"):
        dview.execute("1/0", block=True)


def test_sync_imports_prints_and_imports(rc: ipp.Client, capsys: pytest.CaptureFixture[str]) -> None:
    dview = rc[:]
    with dview.sync_imports():
        import json as json_module  # noqa: F401
    assert "importing json on engine(s)" in capsys.readouterr().out
    assert [m.__name__ for m in dview.pull("json", block=True)] == ["json", "json"]


def test_queue_status_abort_and_wait(rc: ipp.Client, fake: FakeController) -> None:
    rc[:].apply_sync(int)
    status = rc.queue_status()
    assert status["unassigned"] == 0 and set(status) == {"unassigned", 0, 1}
    assert set(status[0]) == {"queue", "completed", "tasks"}
    assert rc.queue_status(targets=0)["completed"] >= 1
    fake.hold(True)
    lview = rc.load_balanced_view()
    first, second = lview.apply_async(int, 1), lview.apply_async(int, 2)
    assert not rc.wait([first, second], timeout=0.2)
    second.abort()
    with pytest.raises(ipp.TaskAborted):
        second.get(5)
    fake.hold(False)
    assert first.get(5) == 1
    assert rc.wait(timeout=5)


def test_get_result_from_the_database(rc: ipp.Client, fake: FakeController) -> None:
    ar = rc[0].apply_async(lambda: "stored")
    assert ar.get(5) == "stored"
    msg_id = ar.msg_ids[0]
    del ar
    rc.purge_local_results("all")
    fetched = rc.get_result(msg_id)
    assert fetched.get(5) == "stored"
    records = rc.db_query({"msg_id": {"$in": [msg_id]}}, keys=["msg_id", "completed"])
    assert records[0]["msg_id"] == msg_id and isinstance(records[0]["completed"], datetime)
    assert isinstance(fetched, ipp.AsyncHubResult) and repr(fetched) == "<AsyncHubResult(unknown): finished>"
    unknown = rc.get_result("no-such-task")
    with pytest.raises(ipp.RemoteError) as caught:
        unknown.get(5)
    assert str(caught.value) == "[Engine Exception] KeyError: no such task"


def test_engines_joining_and_dying(rc: ipp.Client, fake: FakeController) -> None:
    lazy = rc.direct_view("all")
    fixed = rc[:]
    fake.add_engine()
    rc.wait_for_engines(3, timeout=5)
    assert rc.ids == [0, 1, 2]
    assert lazy.apply_sync(int) == [0, 0, 0]
    assert fixed.apply_sync(int) == [0, 0]
    fake.kill_engine(2)
    deadline = time.monotonic() + 5
    while rc.ids != [0, 1] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert rc.ids == [0, 1]
    with pytest.raises(TimeoutError, match="3 engines not ready in 0.1 seconds"):
        rc.wait_for_engines(3, timeout=0.1)


def test_controller_errors_and_closing(rc: ipp.Client, fake: FakeController) -> None:
    with pytest.raises(ValueError, match="hub=True"):
        rc.shutdown()
    with pytest.raises(ipp.RemoteError, match="unknown history_request"):
        rc._request("history_request")
    dview = rc[:]
    rc.close()
    with pytest.raises(RuntimeError, match="closed"):
        dview.apply_sync(int)


def test_unchanging_functions_are_pickled_once() -> None:
    namespace = {"__name__": "__main__", "__builtins__": builtins, "os": os}
    uses_module = interactive_function("def uses_module():\n    return os.sep\n", "uses_module", namespace)
    first, second = serialize_call(uses_module), serialize_call(uses_module)
    assert first[0] == second[0]
    g, _, _ = deserialize_call(second, {})
    assert g() == os.sep
    # A function reading a data global is pickled afresh, so the engine sees the current value.
    namespace["limit"] = 1
    reads_data = interactive_function("def reads_data():\n    return limit\n", "reads_data", namespace)
    deserialize_call(serialize_call(reads_data), engine_ns := {})
    assert engine_ns["limit"] == 1
    namespace["limit"] = 2
    deserialize_call(serialize_call(reads_data), engine_ns := {})
    assert engine_ns["limit"] == 2
    # A redefinition (new code) is not served from the old entry.
    uses_module.__code__ = compile("def uses_module():\n    return 'changed'\n", "<cell>", "exec").co_consts[0]
    g, _, _ = deserialize_call(serialize_call(uses_module), {})
    assert g() == "changed"


def test_cluster_without_the_binary_says_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from parallax.cluster import parallax_binary

    monkeypatch.delenv("PARALLAX_BIN", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("sys.executable", str(tmp_path / "python"))
    monkeypatch.setattr("parallax.cluster.CHECKOUT_BINARY", tmp_path / "target" / "parallax")
    with pytest.raises(FileNotFoundError, match="set PARALLAX_BIN"):
        parallax_binary()
    monkeypatch.setenv("PARALLAX_BIN", "/opt/parallax")
    assert parallax_binary() == "/opt/parallax"


def _write_connection_file(directory: Path, url: str, key: str, pid: int) -> None:
    security = directory / "profile_default" / "security"
    security.mkdir(parents=True, exist_ok=True)
    (security / "controller-client.json").write_text(json.dumps(
        {"url": url, "key": key, "signature_scheme": "hmac-sha256", "profile": "default", "controller_pid": pid}))


def test_a_silent_controller_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLAX_DIR", str(tmp_path))
    with zmq.Context() as context, context.socket(zmq.ROUTER) as mute:
        port = mute.bind_to_random_port("tcp://127.0.0.1")
        _write_connection_file(tmp_path, f"tcp://127.0.0.1:{port}", "k", os.getpid())
        with pytest.raises(ipp.NoClusterError, match="did not answer within 0.5 s"):
            ipp.Client(timeout=0.5)
        mute.close(linger=0)


def test_waits_fail_when_the_controller_dies(fake: FakeController, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        monkeypatch.setenv("PARALLAX_DIR", str(tmp_path))
        _write_connection_file(tmp_path, fake.url, fake.key, stand_in.pid)
        with ipp.Client(timeout=5) as client:
            fake.hold(True)
            ar = client[0].apply_async(int)
            stand_in.kill()
            stand_in.wait()
            with pytest.raises(ipp.EngineError, match=f"pid {stand_in.pid}\\) has exited"):
                ar.get(10)
            with pytest.raises(ConnectionError, match="has exited"):
                client[0].apply_async(int)
    finally:
        stand_in.kill()


def test_large_arrays_join_into_populated_memory_equal_to_concatenate() -> None:
    """`join` of arrays over POPULATE_FROM bytes gives what numpy.concatenate gives (values,
    shape, dtype, writable), for 1-d and 2-d pieces and mixed dtypes; mismatched pieces fail
    as numpy fails."""
    import numpy as np

    from parallax._partition import POPULATE_FROM, join

    n = POPULATE_FROM // 8 + 3
    one = np.arange(n, dtype=np.float64)
    for pieces in ([one[:5], one[5:]], [one.reshape(-1, 1)[:7], one.reshape(-1, 1)[7:]],
                   [one[:10].astype(np.int32), one[10:]]):
        joined = join(pieces)
        expected = np.concatenate(pieces)
        assert joined.dtype == expected.dtype and joined.shape == expected.shape
        assert np.array_equal(joined, expected) and joined.flags.writeable
    with pytest.raises(ValueError):
        join([one.reshape(-1, 1), np.zeros((2, 2))])


def test_a_tracked_push_may_change_its_array_once_sent(rc: ipp.Client, fake: FakeController) -> None:
    """track=True: once wait_for_send() returns, every engine's message has left and ZeroMQ has
    let go of the array (sent without a copy), so changing it in place changes nothing remote."""
    array = np.arange(1 << 20, dtype=np.float64)
    ar = rc[:].push({"a": array}, block=False, track=True)
    assert ar.wait_for_send(5) is None and ar.sent
    array[:] = -1.0
    ar.get(5)
    for engine_id in (0, 1):
        assert fake.namespaces[engine_id]["a"][:3].tolist() == [0.0, 1.0, 2.0]
    assert all(task.tracked.done for task in ar._tasks)
    mapped = rc[:].map(lambda x: x, [1, 2], block=False, track=True)
    assert mapped.get(5) == [1, 2] and all(task.tracked is not None for task in mapped._tasks)
    assert all(task.tracked is None for task in rc[:].map(lambda x: x, [1, 2], block=False)._tasks)


def test_cluster_passes_the_launcher_and_where_the_controller_listens() -> None:
    """`Cluster(engines=..., controller_ip=..., controller_location=..., hosts=...)` (ipyparallel's
    names) start that launcher, not local engines; an unknown launcher is refused at once."""
    cluster = ipp.Cluster(n=4, profile="p", engines="ssh", controller_ip="0.0.0.0",
                          controller_location="10.0.0.1", hosts={"node1": 2, "node2": 2})
    args = cluster._start_args()
    assert args[:4] == ["start", "--profile", "p", "--daemonize"]
    pairs = dict(zip(args[4::2], args[5::2]))
    assert pairs == {"-n": "4", "--engines": "ssh", "--ip": "0.0.0.0", "--location": "10.0.0.1",
                     "--hosts": "node1:2,node2:2"}, args
    assert "--engines" not in ipp.Cluster(n=2)._start_args()
    with pytest.raises(ValueError, match="local, ssh, mpi"):
        ipp.Cluster(engines="slurm")
