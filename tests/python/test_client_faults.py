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


def engine_pids(rc: Any, engine_id: int) -> tuple[int, int]:
    """(engine process, kernel) of engine `engine_id`."""
    kernel = rc[engine_id].apply_sync(os.getpid)
    return parent_of(kernel), kernel


def kill_engine(rc: Any, engine_id: int, pids: tuple[int, int] | None = None) -> None:
    """SIGKILL engine `engine_id`'s kernel and its engine process, as a crashed host would."""
    for pid in pids or engine_pids(rc, engine_id):
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


def test_tasks_that_depend_on_a_dead_engine_fail_and_the_others_run(rc: Any) -> None:
    """Dependencies and a killed engine: a task that follows a task its engine was running when
    it died can never run (ImpossibleDependency); one that follows a task the dead engine had
    finished has nowhere to run (EngineError); one waiting `after` a task that is aborted fails
    with ImpossibleDependency; a waiting task can be aborted itself. Nothing hangs."""
    import parallax

    lview = rc.load_balanced_view()
    on_1 = rc.load_balanced_view(targets=[1])
    done_on_1 = on_1.apply_async(square_slowly, 2)
    assert done_on_1.get(timeout=DEADLINE) == 4
    pids = engine_pids(rc, 1)
    running_on_1 = on_1.apply_async(time.sleep, 30)
    with lview.temp_flags(follow=running_on_1):
        follows_running = lview.apply_async(square_slowly, 3)
    kill_engine(rc, 1, pids)
    with pytest.raises(parallax.ImpossibleDependency) as impossible:
        follows_running.get(timeout=DEADLINE)
    assert isinstance(impossible.value, parallax.RemoteError)
    assert "task " + running_on_1.msg_ids[0] + " failed" in str(impossible.value)
    with pytest.raises(parallax.EngineError, match="no engine this task may run on is alive"):
        lview.set_flags(follow=done_on_1).apply_async(square_slowly, 4).get(timeout=DEADLINE)
    lview.set_flags(follow=None)
    # A task waiting for its dependencies can be aborted, and that fails the tasks waiting on it.
    gate = lview.apply_async(square_slowly, 8)
    with lview.temp_flags(after=gate):
        waiting = lview.apply_async(square_slowly, 5)
    with lview.temp_flags(after=waiting):
        waiting_too = lview.apply_async(square_slowly, 6)
    waiting.abort()
    with pytest.raises(parallax.TaskAborted):
        waiting.get(timeout=DEADLINE)
    with pytest.raises(parallax.ImpossibleDependency):
        waiting_too.get(timeout=DEADLINE)
    assert gate.get(timeout=DEADLINE) == 64


def test_a_frame_over_the_controllers_limit_fails_at_once_and_the_client_goes_on() -> None:
    """A request whose frame the controller would refuse (over its --max-message-size) raises
    MessageTooLargeError before anything is sent, instead of getting the client disconnected and
    its requests left waiting; what goes through shared memory is not a frame and passes."""
    import numpy
    import parallax

    with parallax_cluster(extra=["--max-message-size", str(1 << 20)]) as compat:
        rc = compat.rc
        assert rc.max_message_size == 1 << 20
        big = numpy.zeros(2 << 20, dtype=numpy.uint8)
        lview = rc.load_balanced_view()
        with pytest.raises(parallax.error.MessageTooLargeError, match=r"2\.0 MiB .* \(1\.0 MiB, its --max-message-size\)"):
            lview.apply_async(len, big)
        with pytest.raises(parallax.error.MessageTooLargeError):
            lview.apply_async(len, big.tobytes())
        # Direct to an engine on this host, the buffer travels as a shared-memory segment.
        assert rc[0].apply_sync(len, big) == len(big)
        assert lview.apply_sync(len, b"small") == 5
        assert rc[:].apply_sync(lambda: 7) == [7, 7]


@interactive
def poison(x: int) -> int:
    """Kills the kernel of whatever engine runs it when x is 0."""
    import os
    import time

    if x == 0:
        os._exit(1)
    time.sleep(0.05)
    return x


@interactive
def fails_once(marker: str) -> str:
    """Raises the first time it runs anywhere (the marker file records it), then succeeds."""
    import os

    if not os.path.exists(marker):
        open(marker, "w").close()
        raise ValueError("first attempt")
    return "ok"


def test_a_poison_task_stops_after_three_engine_deaths_and_the_rest_of_the_map_finishes() -> None:
    """retries=5 on 4 engines that restart: the task that kills its engine fails after 3 deaths
    with TaskKilledEngines naming them (it does not take down every engine, nor run 6 times),
    and every other task of the map returns."""
    import parallax
    from kernel_env import IsolatedEnv, start_cluster, stop_cluster

    env = IsolatedEnv()
    env.apply()
    try:
        cluster = start_cluster(env, "poison", n=4, extra=["--restart-engines"])
        try:
            rc = parallax.Client(profile="poison")
            try:
                rc.wait_for_engines(4, timeout=DEADLINE)
                lview = rc.load_balanced_view()
                lview.retries = 5
                ars = [lview.apply_async(poison, x) for x in range(12)]
                with pytest.raises(parallax.error.TaskKilledEngines) as killed:
                    ars[0].get(timeout=DEADLINE)
                assert isinstance(killed.value, parallax.error.EngineError)
                message = str(killed.value)
                assert "3 deaths, the limit" in message, message
                named = message.split("engines ", 1)[1].split(" when", 1)[0].split(", ")
                assert len(set(named)) == 3, message
                assert [ar.get(timeout=DEADLINE) for ar in ars[1:]] == list(range(1, 12))
                # The engines came back under their ids.
                wait_until(lambda: sorted(rc.ids) == [0, 1, 2, 3], DEADLINE, "the engines to come back")
            finally:
                rc.close()
        finally:
            stop_cluster(cluster)
    finally:
        env.cleanup()


def test_retries_run_a_task_that_raised_again_on_another_engine(rc: Any, tmp_path: Path) -> None:
    lview = rc.load_balanced_view()
    marker = str(tmp_path / "attempted")
    with pytest.raises(Exception, match="first attempt"):
        lview.apply_sync(fails_once, marker)
    os.unlink(marker)
    lview.retries = 1
    ar = lview.apply_async(fails_once, marker)
    assert ar.get(timeout=DEADLINE) == "ok"
    assert os.path.exists(marker), "the first attempt ran and raised"


def test_async_with_cluster_starts_and_stops_it() -> None:
    """`async with Cluster(n=1) as rc:` (as in ipyparallel) yields a connected client and stops
    the cluster on leaving the block."""
    import asyncio

    import parallax
    from kernel_env import IsolatedEnv, assert_no_processes_left

    env = IsolatedEnv()
    env.apply()
    try:

        async def run() -> list[int]:
            async with parallax.Cluster(n=1, profile="aio") as rc:
                return rc[:].apply_sync(lambda: 7)

        assert asyncio.run(run()) == [7]
        assert not (Path(env.vars["PARALLAX_DIR"]) / "profile_aio" / "cluster.json").exists()
        assert_no_processes_left(env.vars["PARALLAX_DIR"])
    finally:
        env.cleanup()
