"""An engine killed (SIGKILL, its engine process and its kernel) in the middle of a 200-task
load-balanced map: with `retries=1` every result still arrives; with `retries=0` the tasks it was
running fail with EngineError naming it (an `EngineError` that is also a `RemoteError`, as
ipyparallel raises it), and every other task is delivered. No call hangs: every
wait has a deadline.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from compat_env import interactive, parallax_cluster, wait_until

pytestmark = pytest.mark.parallax_only

TASKS = 200
DEADLINE = 60.0


@interactive
def square_slowly(x: int) -> int:
    import time

    time.sleep(0.02)
    return x * x


@pytest.fixture
def rc() -> Iterator[Any]:
    with parallax_cluster() as compat:
        yield compat.rc


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def kill_engine(rc: Any, engine_id: int) -> None:
    """SIGKILL engine `engine_id`'s kernel and its engine process, as a crashed host would."""
    kernel = rc[engine_id].apply_sync(os.getpid)
    engine = parent_of(kernel)
    for pid in (engine, kernel):
        os.kill(pid, signal.SIGKILL)


def map_and_kill(rc: Any, retries: int) -> Any:
    """Starts the map, kills engine 1 once a tenth of the tasks are done, waits for the rest."""
    lview = rc.load_balanced_view()
    lview.set_flags(retries=retries)
    amr = lview.map_async(square_slowly, range(TASKS), chunksize=1)
    assert len(amr.msg_ids) == TASKS
    wait_until(lambda: amr.progress >= TASKS // 10, DEADLINE, "a tenth of the map")
    kill_engine(rc, 1)
    started = time.monotonic()
    assert amr.wait(timeout=DEADLINE), f"the map did not finish within {DEADLINE} s of the kill"
    assert time.monotonic() - started < DEADLINE
    return amr


def test_with_retries_every_result_arrives(rc: Any) -> None:
    amr = map_and_kill(rc, retries=1)
    assert amr.get(timeout=1) == [x * x for x in range(TASKS)]
    engines = {md["engine_id"] for md in amr.metadata}
    assert engines == {0, 1}, "both engines ran tasks before the kill"
    wait_until(lambda: rc.ids == [0], 10, "engine 1 to be reported gone")


def test_without_retries_lost_tasks_name_the_dead_engine(rc: Any) -> None:
    import parallax

    amr = map_and_kill(rc, retries=0)
    delivered: dict[int, list[int]] = {}
    lost: list[tuple[int, BaseException]] = []
    # Each task of a map runs a chunk (here of one item) and returns a list, as in ipyparallel.
    for index, msg_id in enumerate(amr.msg_ids):
        try:
            delivered[index] = rc.get_result(msg_id).get(timeout=1)
        except parallax.EngineError as error:
            lost.append((index, error))
    assert lost, "engine 1 was running tasks when it was killed"
    assert len(lost) + len(delivered) == TASKS
    for index, error in lost:
        assert "engine 1" in str(error), str(error)
    for index, value in delivered.items():
        assert value == [index * index]
    # The map as a whole fails like ipyparallel's: a CompositeError of the lost tasks' errors.
    with pytest.raises(parallax.CompositeError) as composite:
        amr.get(timeout=1)
    assert len(composite.value.elist) == len(lost)
    assert all(ename == "EngineError" for ename, *_ in composite.value.elist)
