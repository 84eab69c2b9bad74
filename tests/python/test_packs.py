"""Packs through the real controller: a burst of load-balanced `apply_async` calls from
`parallax.Client` leaves the client packed, and the replies come back packed, while every task
keeps its own result, output, engine and timing.

The counts are taken where the client's IO thread packs and unpacks (`parallax._zmqio`), so the
test fails if the controller or the engine supports stop packing, or the client stops asking.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from compat_env import interactive, parallax_cluster

pytestmark = pytest.mark.parallax_only

TASKS = 500
DEADLINE = 60.0


@interactive
def shout(i: int) -> int:
    print("task", i)
    return i * i


@pytest.fixture
def rc() -> Iterator[Any]:
    with parallax_cluster() as compat:
        yield compat.rc


def test_a_burst_of_tasks_travels_packed_each_with_its_own_reply(rc: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import parallax._zmqio as zmqio

    sent: list[tuple[int, int]] = []  # (messages queued, ZeroMQ messages sent)
    received: list[int] = []  # messages per ZeroMQ message received
    pack_messages, unpacked = zmqio.pack_messages, zmqio.unpacked

    def counting_pack(messages: list[list[Any]]) -> list[list[Any]]:
        out = pack_messages(messages)
        sent.append((len(messages), len(out)))
        return out

    def counting_unpack(frames: list[Any]) -> list[list[Any]]:
        out = unpacked(frames)
        received.append(len(out))
        return out

    monkeypatch.setattr(zmqio, "pack_messages", counting_pack)
    monkeypatch.setattr(zmqio, "unpacked", counting_unpack)

    lview = rc.load_balanced_view()
    results = [lview.apply_async(shout, i) for i in range(TASKS)]
    assert [ar.get(timeout=DEADLINE) for ar in results] == [i * i for i in range(TASKS)]

    for i, ar in enumerate(results):
        assert ar.stdout == f"task {i}\n"
        assert ar.engine_id in rc.ids
        assert ar.started <= ar.completed <= ar.received
    assert len({ar.started for ar in results}) > TASKS // 2, "each task has its own timing"

    assert sum(queued for queued, _ in sent) >= TASKS
    assert any(out < queued for queued, out in sent), f"submissions never left packed: {sent}"
    assert sum(received) >= TASKS
    assert max(received) > 1, "replies never arrived packed"
