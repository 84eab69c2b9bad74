"""Packs through the real controller: a burst of load-balanced `apply_async` calls from
`parallax.Client` leaves the client packed, and the replies come back packed, while every task
keeps its own result, output, engine and timing.

The counts are taken where the client's IO thread packs and unpacks (its `Session`), so the test
fails if the controller or the engine supports stop packing, or the client stops asking.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from compat_env import PARALLAX_PROFILE, interactive, parallax_cluster

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
    sent: list[tuple[int, int]] = []  # (messages queued, ZeroMQ messages sent)
    received: list[int] = []  # messages per ZeroMQ message received
    session = rc.session
    to_send, receive = session.to_send, session.receive

    def counting_to_send(items: list[Any]) -> list[list[Any]]:
        out = to_send(items)
        sent.append((len(items), len(out)))
        return out

    def counting_receive(frames: list[Any]) -> list[Any]:
        out = receive(frames)
        received.append(len(out))
        return out

    monkeypatch.setattr(session, "to_send", counting_to_send)
    monkeypatch.setattr(session, "receive", counting_receive)

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


def test_a_client_of_another_pack_format_is_refused_with_the_reason(rc: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client whose package reads another pack format than the controller (a stale install)
    is told why at connect time, instead of losing the messages it cannot read."""
    import parallax
    import parallax.client as client_module

    monkeypatch.setattr(client_module, "PACK_VERSION", 1)
    with pytest.raises(parallax.RemoteError, match="speaks pack format 1 and the controller format 2") as failure:
        parallax.Client(profile=PARALLAX_PROFILE)
    assert failure.value.ename == "VersionMismatch"
    assert "from the same release" in str(failure.value)
    # The cluster serves clients of its own format as before.
    monkeypatch.undo()
    with parallax.Client(profile=PARALLAX_PROFILE) as other:
        assert other.load_balanced_view().apply_sync(shout, 3) == 9
