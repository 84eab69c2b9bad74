"""The Python client API, held to ipyparallel 9's behaviour: every test runs twice, against
ipyparallel 9.2 and against parallax, each with a 2-engine cluster, and asserts the same exact
results, reprs and errors. Code written for ipyparallel must run with `import parallax as ipp`.

Where ipyparallel's behaviour is surprising, the test says so ("ipyparallel: ..."): parallax matches
it anyway, because user code depends on it. Values that are legitimately implementation-specific
(msg_id formats, timings, which engine a load-balanced task lands on) are checked by type and shape.

Every function sent to the engines is decorated with `interactive` (compat_env.py): it is then sent
the way a notebook's function is, and looks up its globals in the engine's namespace.

Run against ipyparallel alone (about 20 s):
    .venv/bin/python -m pytest tests/python/test_compat.py -k ipyparallel -q -p no:cacheprovider
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterator
from typing import Any

import numpy
import pytest

from compat_env import Compat, interactive, ipyparallel_cluster, parallax_cluster, wait_until
from kernel_env import REPLY_TIMEOUT

pytestmark = pytest.mark.timeout(90)

T = REPLY_TIMEOUT  # every wait for a result has this bound; normal waits take milliseconds


@pytest.fixture(
    scope="module",
    params=["ipyparallel", pytest.param("parallax", marks=pytest.mark.parallax_only)],
)
def ipp(request: pytest.FixtureRequest) -> Iterator[Compat]:
    """The implementation under test with a client of its 2-engine cluster. The parallax package is
    imported only here, so the ipyparallel half runs whatever state parallax is in."""
    start = ipyparallel_cluster if request.param == "ipyparallel" else parallax_cluster
    with start() as compat:
        yield compat


@pytest.fixture
def rc(ipp: Compat) -> Iterator[Any]:
    """The shared client, with its block flag back to the default after each test."""
    yield ipp.rc
    ipp.rc.block = False


# --- functions run on the engines -----------------------------------------------------------------


@interactive
def mul(a: Any, b: Any) -> Any:
    return a * b


@interactive
def sleep_for(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


@interactive
def slow_when_zero(i: int) -> int:
    import time

    time.sleep(0.5 if i == 0 else 0.0)
    return i


@interactive
def echo(x: Any) -> Any:
    import sys

    print(f"out {x}")
    print(f"err {x}", file=sys.stderr)
    return x


@interactive
def divide_by_zero() -> float:
    return 1 / 0


@interactive
def read_a() -> Any:
    return a  # type: ignore[name-defined]  # noqa: F821 -- `a` lives in the engine's namespace


@interactive
def numpy_name() -> str:
    return numpy.__name__  # the engine's `numpy`, imported there by sync_imports


@interactive
def pi_digits() -> str:
    return f"{pi:.4f}"  # type: ignore[name-defined]  # noqa: F821 -- from `from math import pi`


ZERO_DIVISION = "ZeroDivisionError: division by zero"


def with_output(ar: Any) -> Any:
    """The value of `ar` once its stdout/stderr are in too. ipyparallel: output travels apart from
    the result, so get() may return before the task's output arrives; wait_for_output() waits."""
    value = ar.get(T)
    assert ar.wait_for_output(T) is True
    return value


def aware(value: Any) -> bool:
    """A timezone-aware datetime (ipyparallel's metadata dates all carry a timezone)."""
    return isinstance(value, datetime.datetime) and value.tzinfo is not None


# === the module ===================================================================================


def test_names_are_exported(ipp: Compat) -> None:
    mod = ipp.mod
    for name in ("Client", "DirectView", "LoadBalancedView", "AsyncResult", "AsyncMapResult",
                 "AsyncHubResult", "RemoteError", "CompositeError", "TaskAborted", "TaskTimeout",
                 "EngineError", "NoEnginesRegistered"):  # fmt: skip
        assert hasattr(mod, name), name
    assert mod.error.RemoteError is mod.RemoteError
    assert mod.error.TaskAborted is mod.TaskAborted
    # ipyparallel: a CompositeError is a RemoteError too (`except RemoteError` catches both).
    assert issubclass(mod.CompositeError, mod.RemoteError)


# === Client and views =============================================================================


def test_client_ids_and_len(rc: Any) -> None:
    assert rc.ids == [0, 1]
    assert len(rc) == 2


def test_view_reprs(ipp: Compat, rc: Any) -> None:
    assert repr(rc[0]) == "<DirectView 0>"
    assert repr(rc[-1]) == "<DirectView 1>"
    assert repr(rc[:]) == "<DirectView [0, 1]>"
    # ipyparallel: a slice is a list of targets even when it holds one engine.
    assert repr(rc[::2]) == "<DirectView [0]>"
    assert repr(rc.direct_view([0, 1])) == "<DirectView [0, 1]>"
    assert repr(rc.load_balanced_view()) == "<LoadBalancedView None>"
    assert isinstance(rc[0], ipp.mod.DirectView)
    assert isinstance(rc.load_balanced_view(), ipp.mod.LoadBalancedView)
    assert (len(rc[0]), len(rc[:]), len(rc[::2])) == (1, 2, 1)


def test_direct_view_all_is_lazy(rc: Any) -> None:
    """'all' stays 'all' (engines that join later are included), resolved at each call."""
    for view in (rc.direct_view("all"), rc.direct_view()):
        assert view.targets == "all"
        assert repr(view) == "<DirectView all>"
        assert view.apply_async(mul, 2, 3).get(T) == [6, 6]


def test_views_do_not_block_by_default(rc: Any) -> None:
    assert rc.block is False
    assert (rc[0].block, rc[:].block, rc.load_balanced_view().block) == (False, False, False)


def test_client_block_flag_is_the_default_of_new_views(rc: Any) -> None:
    existing = rc[:]
    rc.block = True
    assert (rc[0].block, rc[:].block, rc.load_balanced_view().block) == (True, True, True)
    assert existing.block is False  # views made before keep their own flag
    assert rc[:].apply(mul, 1, 2) == [2, 2]


def test_set_flags_and_temp_flags(rc: Any) -> None:
    view = rc[:]
    assert view.set_flags(block=True) is view
    assert view.apply(mul, 2, 2) == [4, 4]
    view.set_flags(block=False)
    with view.temp_flags(block=True):
        assert view.block is True
        assert view.apply(mul, 3, 3) == [9, 9]
    assert view.block is False
    with pytest.raises(KeyError) as excinfo:
        view.set_flags(bogus=1)
    assert excinfo.value.args == ("Invalid name: 'bogus'",)


def test_load_balanced_retries_and_timeout_flags(rc: Any) -> None:
    lview = rc.load_balanced_view()
    assert lview.retries == 0
    assert not lview.timeout  # ipyparallel: 0.0, meaning no timeout
    lview.set_flags(retries=2, timeout=5)
    assert (lview.retries, lview.timeout) == (2, 5)
    assert lview.apply_async(mul, 2, 3).get(T) == 6
    with lview.temp_flags(retries=1, timeout=10):
        assert (lview.retries, lview.timeout) == (1, 10)
        assert lview.apply_async(mul, 3, 3).get(T) == 9
    assert (lview.retries, lview.timeout) == (2, 5)
    with pytest.raises(ValueError, match=r"^Invalid timeout: -1$"):
        lview.set_flags(timeout=-1)


# === apply ========================================================================================


def test_apply_on_one_engine(ipp: Compat, rc: Any) -> None:
    view = rc[0]
    ar = view.apply(mul, 5, 6)  # not blocking: an AsyncResult
    assert isinstance(ar, ipp.mod.AsyncResult)
    assert ar.get(T) == 30
    assert view.apply_sync(mul, 5, 6) == 30
    assert view.apply_async(mul, b=7, a=2).get(T) == 14


def test_apply_on_all_engines_gives_a_list(rc: Any) -> None:
    assert rc[:].apply_sync(mul, 5, 6) == [30, 30]
    assert rc[:].apply_async(mul, "ab", 2).get(T) == ["abab", "abab"]
    assert rc[:].apply_sync(sum, [1, 2, 3]) == [6, 6]  # builtins travel too


def test_apply_on_load_balanced_view_gives_one_value(rc: Any) -> None:
    lview = rc.load_balanced_view()
    assert lview.apply_sync(mul, 5, 6) == 30
    ar = lview.apply_async(sum, [1, 2, 3])
    assert ar.get(T) == 6
    assert repr(ar) == "<AsyncResult(sum): finished>"


def test_interactive_functions_see_the_engine_namespace(rc: Any) -> None:
    """A function from __main__ looks up its globals among the engine's variables."""
    rc[:].push({"a": 1}, block=True)
    rc[1].push({"a": 2}, block=True)
    assert rc[:].apply_sync(read_a) == [1, 2]


# === AsyncResult ==================================================================================


def test_async_result_of_a_sleeping_task(rc: Any) -> None:
    ar = rc[0].apply_async(sleep_for, 0.5)
    assert repr(ar) == "<AsyncResult(sleep_for): pending>"
    with pytest.raises(TimeoutError) as excinfo:
        ar.get(timeout=0.01)
    assert str(excinfo.value) == "Result not ready."
    assert ar.ready() is False
    assert ar.wait(0.01) is False
    assert ar.progress == 0
    assert ar.wait(T) is True
    assert ar.ready() is True
    assert repr(ar) == "<AsyncResult(sleep_for): finished>"
    assert ar.successful() is True
    assert ar.get(0.01) == 0.5
    assert ar.result() == 0.5
    assert ar.get_dict() == {0: 0.5}
    assert (ar.progress, len(ar)) == (1, 1)


def test_async_result_timings(rc: Any) -> None:
    ar = rc.load_balanced_view().apply_async(sleep_for, 0.2)
    ar.get(T)
    for name in ("elapsed", "serial_time", "wall_time"):
        value = getattr(ar, name)
        assert isinstance(value, float), name
        assert 0.19 <= value < T, (name, value)


def test_async_result_of_several_engines(rc: Any) -> None:
    ar = rc[:].apply_async(mul, 2, 21)
    assert ar.get(T) == [42, 42]
    assert len(ar) == 2
    assert ar.progress == 2
    assert ar.get_dict() == {0: 42, 1: 42}
    assert list(ar) == [42, 42]  # iteration yields the values, in engine order
    assert ar.engine_id == [0, 1]
    assert len(ar.msg_ids) == 2 and all(isinstance(m, str) for m in ar.msg_ids)
    assert len(set(ar.msg_ids)) == 2


def test_async_result_of_one_task_is_not_iterable(rc: Any) -> None:
    ar = rc[0].apply_async(mul, 1, 1)
    ar.get(T)
    assert ar.engine_id == 0
    with pytest.raises(TypeError, match=r"^AsyncResults with a single result are not iterable\.$"):
        list(ar)


def test_progress_counts_finished_tasks(rc: Any) -> None:
    amr = rc[:].map_async(sleep_for, [1.5, 0.0])  # one task per engine; engine 1 finishes first
    wait_until(lambda: amr.progress >= 1, T, "the quick task")
    assert amr.progress == 1
    assert amr.ready() is False
    assert repr(amr) == "<AsyncMapResult(sleep_for): pending>"
    assert amr.get(T) == [1.5, 0.0]
    assert amr.progress == 2


def test_get_dict_needs_one_task_per_engine(rc: Any) -> None:
    amr = rc.load_balanced_view().map_async(mul, [1, 2, 3], [1, 1, 1])
    assert amr.get(T) == [1, 2, 3]
    with pytest.raises(ValueError, match=r"^Cannot build dict, [23] jobs ran on engine #[01]$"):
        amr.get_dict()


def test_metadata_of_one_task(rc: Any) -> None:
    ar = rc[1].apply_async(echo, 5)
    assert with_output(ar) == 5
    md = ar.metadata  # one task: one dict-like record
    for key in ("msg_id", "engine_id", "status", "submitted", "started", "completed", "received",
                "stdout", "stderr", "outputs", "error", "execute_result"):  # fmt: skip
        assert key in md, key
    assert md["msg_id"] == ar.msg_ids[0]
    assert (md["engine_id"], md["status"]) == (1, "ok")
    assert (md["stdout"], md["stderr"]) == ("out 5\n", "err 5\n")
    assert md["error"] is None
    assert md["outputs"] == []
    for key in ("submitted", "started", "completed", "received"):
        assert aware(md[key]), (key, md[key])
    assert md["started"] <= md["completed"]
    assert md.engine_id == 1  # metadata fields are attributes too


@interactive
def shows(x: Any) -> Any:
    from IPython.display import HTML, display

    display({"text/plain": f"shown {x}"}, raw=True)
    print("printed", x)
    display(HTML(f"<b>{x}</b>"))
    return x


def test_displays_in_a_task_are_its_outputs(rc: Any) -> None:
    """`display()` inside a task: each display is one of the task's outputs (its content), on a
    direct view and a load-balanced one, and the kernel's own output is left alone."""
    expected = [
        {"data": {"text/plain": "shown {x}"}, "metadata": {}, "transient": {}},
        {"data": {"text/plain": "<IPython.core.display.HTML object>", "text/html": "<b>{x}</b>"},
         "metadata": {}, "transient": {}},
    ]
    for x, view in ((1, rc[0]), (2, rc.load_balanced_view())):
        ar = view.apply_async(shows, x)
        assert with_output(ar) == x
        outputs = ar.metadata["outputs"]
        assert [o["data"] for o in outputs] == [
            {key: value.format(x=x) for key, value in e["data"].items()} for e in expected
        ]
        assert all(o["metadata"] == {} for o in outputs)
        assert ar.metadata["stdout"] == f"printed {x}\n"
    # A task that displays nothing has no outputs, though one before it did.
    quiet = rc[0].apply_async(mul, 2, 3)
    assert with_output(quiet) == 6 and quiet.metadata["outputs"] == []


def test_stdout_is_captured_per_task(rc: Any) -> None:
    """Two tasks in a row on one engine: each record holds only what its own task printed."""
    view = rc[0]
    first, second = view.apply_async(echo, "a"), view.apply_async(echo, "b")
    assert (with_output(first), with_output(second)) == ("a", "b")
    assert (first.metadata["stdout"], second.metadata["stdout"]) == ("out a\n", "out b\n")
    assert (first.stderr, second.stderr) == ("err a\n", "err b\n")


def test_stdout_is_a_list_for_several_tasks(rc: Any) -> None:
    """ipyparallel: `ar.stdout` is a str for one task and a list (one entry per task) otherwise."""
    ar = rc[:].apply_async(echo, 1)
    with_output(ar)
    assert ar.stdout == ["out 1\n", "out 1\n"]
    assert ar.stderr == ["err 1\n", "err 1\n"]
    assert [md["engine_id"] for md in ar.metadata] == [0, 1]
    one = rc.load_balanced_view().apply_async(echo, 2)
    with_output(one)
    assert one.stdout == "out 2\n"
    amr = rc.load_balanced_view().map_async(echo, [1, 2, 3])
    with_output(amr)
    assert amr.stdout == ["out 1\n", "out 2\n", "out 3\n"]


# === map ==========================================================================================


@pytest.mark.parametrize("kind", ["direct", "load-balanced"])
def test_map(rc: Any, kind: str) -> None:
    view = rc[:] if kind == "direct" else rc.load_balanced_view()
    assert view.map_sync(mul, [5, 6, 7, 8], [8, 9, 10, 11]) == [40, 54, 70, 88]
    amr = view.map_async(mul, [5, 6, 7, 8], [8, 9, 10, 11])
    assert len(amr) == 4  # counts items, not tasks
    assert amr.get(T) == [40, 54, 70, 88]
    assert repr(amr) == "<AsyncMapResult(mul): finished>"
    amr = view.map(mul, [1, 2], [3, 4])  # not blocking by default
    assert amr.get(T) == [3, 8]
    assert view.map(mul, [1, 2], [3, 4], block=True) == [3, 8]
    assert list(view.imap(mul, [1, 2, 3], [1, 2, 3])) == [1, 4, 9]
    assert list(amr) == [3, 8]


def test_map_result_type(ipp: Compat, rc: Any) -> None:
    amr = rc.load_balanced_view().map_async(mul, [1], [1])
    assert isinstance(amr, ipp.mod.AsyncMapResult)
    assert isinstance(amr, ipp.mod.AsyncResult)
    assert amr.get(T) == [1]


def test_direct_map_sends_one_task_per_engine(rc: Any) -> None:
    amr = rc[:].map_async(mul, range(10), range(10))
    assert amr.get(T) == [i * i for i in range(10)]
    assert (len(amr), len(amr.msg_ids)) == (10, 2)
    assert amr.engine_id == [0, 1]


def test_direct_map_has_no_load_balancing_options(rc: Any) -> None:
    """ipyparallel: DirectView.map takes neither chunksize nor ordered."""
    for option in ("chunksize", "ordered"):
        with pytest.raises(TypeError, match=f"unexpected keyword argument '{option}'"):
            rc[:].map(mul, [1], [2], **{option: 1})


def test_load_balanced_map_chunksize(rc: Any) -> None:
    lview = rc.load_balanced_view()
    amr = lview.map_async(mul, range(10), range(10), chunksize=3)
    assert amr.get(T) == [i * i for i in range(10)]
    assert (len(amr), len(amr.msg_ids)) == (10, 4)  # ceil(10 / 3) tasks
    amr = lview.map_async(mul, range(5), range(5))
    amr.get(T)
    assert len(amr.msg_ids) == 5  # chunksize 1 by default


def test_load_balanced_map_unordered_yields_in_arrival_order(rc: Any) -> None:
    """Item 0 sleeps on one engine while the other engine does 1, 2 and 3, so 0 comes last
    (results that are in by the time the iterator looks come in no particular order)."""
    lview = rc.load_balanced_view()
    amr = lview.map_async(slow_when_zero, range(4), ordered=False)
    arrived = list(amr)
    assert sorted(arrived) == [0, 1, 2, 3] and arrived[-1] == 0, arrived
    assert amr.get(T) == [0, 1, 2, 3]  # get() keeps submission order
    assert list(lview.map_async(slow_when_zero, range(4), ordered=True)) == [0, 1, 2, 3]
    # imap submits lazily (one task per engine at a time), so its arrival order is its own.
    assert sorted(lview.imap(slow_when_zero, range(4), ordered=False)) == [0, 1, 2, 3]
    assert list(lview.imap(slow_when_zero, range(4))) == [0, 1, 2, 3]


# === task dependencies ============================================================================


def remote_failure(ipp: Compat, ar: Any) -> Any:
    """The RemoteError that `ar.get()` raises (ipyparallel: a plain RemoteError naming the
    controller's error in `ename`)."""
    with pytest.raises(ipp.mod.RemoteError) as caught:
        ar.get(T)
    return caught.value


def test_dependency_objects(ipp: Compat) -> None:
    dependency = ipp.mod.Dependency(["a", "b"])
    assert (dependency.all, dependency.success, dependency.failure) == (True, True, False)
    assert dependency.check({"a", "b", "c"}) and not dependency.check({"a"})
    assert dependency.unreachable(set(), {"b"}) and not dependency.unreachable({"a"}, set())
    anyone = ipp.mod.Dependency("a", all=False, success=False, failure=True)
    assert anyone.check(set(), {"a"}) and anyone.unreachable({"a"}, set())
    as_dict = ipp.mod.Dependency(["b", "a"], all=False).as_dict()
    assert sorted(as_dict.pop("dependencies")) == ["a", "b"]
    assert as_dict == {"all": False, "success": True, "failure": False}
    with pytest.raises(ValueError, match="^Must depend on at least one of successes or failures!$"):
        ipp.mod.Dependency(["a"], success=False, failure=False)
    with pytest.raises(TypeError, match="^invalid dependency type"):
        ipp.mod.Dependency([5])


def test_after_waits_for_its_tasks(rc: Any) -> None:
    lview = rc.load_balanced_view()
    slow = lview.apply_async(sleep_for, 0.5)
    with lview.temp_flags(after=slow):
        assert lview.after is slow
        later = lview.apply_async(mul, 2, 3)
    assert lview.after is None
    assert later.get(T) == 6
    assert slow.ready()
    assert later.metadata["started"] >= slow.metadata["completed"]
    # A list of AsyncResults and msg_ids; and the `after` of a single call.
    first, second = lview.apply_async(mul, 1, 1), lview.apply_async(sleep_for, 0.2)
    both = lview.set_flags(after=[first, second.msg_ids[0]]).apply_async(mul, 4, 4)
    assert both.get(T) == 16 and second.ready()
    lview.set_flags(after=None)


def test_a_failed_dependency_is_impossible(ipp: Compat, rc: Any) -> None:
    lview = rc.load_balanced_view()
    failed = lview.apply_async(divide_by_zero)
    assert remote_failure(ipp, failed).ename == "ZeroDivisionError"
    with lview.temp_flags(after=failed):
        never = lview.apply_async(mul, 2, 3)
    error = remote_failure(ipp, never)
    assert error.ename == "ImpossibleDependency"
    assert never.metadata["engine_id"] is None  # it never reached an engine
    # ... and that failure is in turn a failure for what depends on it.
    with lview.temp_flags(after=never):
        assert remote_failure(ipp, lview.apply_async(mul, 2, 3)).ename == "ImpossibleDependency"
    # Counting failures, or any one of several tasks, it runs.
    ok = lview.apply_async(mul, 1, 2)
    on_failure = ipp.mod.Dependency([failed], success=False, failure=True)
    assert lview.set_flags(after=on_failure).apply_async(mul, 3, 3).get(T) == 9
    assert lview.set_flags(after=ipp.mod.Dependency([failed, ok], all=False)).apply_async(mul, 4, 4).get(T) == 16
    with lview.temp_flags(after=ipp.mod.Dependency([ok], success=False, failure=True)):
        assert remote_failure(ipp, lview.apply_async(mul, 5, 5)).ename == "ImpossibleDependency"


def test_unknown_dependencies_are_invalid(ipp: Compat, rc: Any) -> None:
    lview = rc.load_balanced_view()
    with lview.temp_flags(after=["no-such-task"]):
        assert remote_failure(ipp, lview.apply_async(mul, 2, 3)).ename == "InvalidDependency"
    with pytest.raises(ValueError, match=r"^Invalid dependency: 5$"):
        rc.load_balanced_view().set_flags(after=5)


def test_a_dependency_that_outlasts_the_timeout(ipp: Compat, rc: Any) -> None:
    lview = rc.load_balanced_view()
    slow = lview.apply_async(sleep_for, 1.0)
    with lview.temp_flags(after=slow, timeout=0.1):
        late = lview.apply_async(mul, 2, 3)
    assert remote_failure(ipp, late).ename == "TaskTimeout"
    assert slow.get(T) == 1.0


def test_follow_runs_where_its_tasks_ran(ipp: Compat, rc: Any) -> None:
    lview = rc.load_balanced_view()
    leader = lview.apply_async(sleep_for, 0.1)
    leader.get(T)
    with lview.temp_flags(follow=leader):
        followers = lview.map_async(mul, range(6), range(6))
    assert followers.get(T) == [i * i for i in range(6)]
    assert {md["engine_id"] for md in followers.metadata} == {leader.metadata["engine_id"]}
    on_0 = rc.load_balanced_view(targets=[0]).apply_async(mul, 1, 1)
    on_1 = rc.load_balanced_view(targets=[1]).apply_async(mul, 1, 1)
    # All of them: no engine ran both.
    with lview.temp_flags(follow=[on_0, on_1]):
        assert remote_failure(ipp, lview.apply_async(mul, 2, 3)).ename == "ImpossibleDependency"
    # Any of them: either engine.
    with lview.temp_flags(follow=ipp.mod.Dependency([on_0, on_1], all=False)):
        anywhere = lview.apply_async(mul, 2, 3)
    assert anywhere.get(T) == 6 and anywhere.metadata["engine_id"] in (0, 1)


# === remote namespaces ============================================================================


def test_execute_and_pull(rc: Any) -> None:
    view = rc[:]
    ar = view.execute("a = 5")
    assert repr(ar).startswith("<AsyncResult(execute): ")
    ar.get(T)
    assert repr(ar) == "<AsyncResult(execute): finished>"
    # ipyparallel: a blocking execute returns the finished AsyncResult, not None.
    ar = view.execute("b = a * 2", block=True)
    assert repr(ar) == "<AsyncResult(execute): finished>"
    assert view.pull("b", block=True) == [10, 10]
    assert view.pull(("a", "b"), block=True) == [[5, 10], [5, 10]]
    assert rc[0].pull("b", block=True) == 10
    assert rc[0].pull(["a", "b"], block=True) == [5, 10]
    assert rc[1].pull("a").get(T) == 5


def test_execute_output_is_captured(rc: Any) -> None:
    """A blocking execute waits for the output too (a non-blocking one's get() may return first)."""
    ar = rc[:].execute("print('hi')", block=True)
    assert ar.stdout == ["hi\n", "hi\n"]


def test_run_executes_a_file(rc: Any, tmp_path: Any) -> None:
    script = tmp_path / "myscript.py"
    script.write_text("a = 5\n\ndef square(x):\n    return x * x\n")
    ar = rc[:].run(str(script))
    ar.get(T)
    assert repr(ar) == "<AsyncResult(execute): finished>"
    assert rc[:].pull("a", block=True) == [5, 5]
    rc[:].execute("s = square(4)", block=True)
    assert rc[:]["s"] == [16, 16]


def test_push_and_pull(rc: Any) -> None:
    view = rc[:]
    assert view.push({"x": 1, "y": 2}, block=True) == [None, None]
    assert view.pull(["x", "y"], block=True) == [[1, 2], [1, 2]]
    assert rc[0].push({"x": 3}, block=True) is None
    assert view.pull("x", block=True) == [3, 1]
    # ipyparallel: push and pull name their AsyncResults after internal helpers.
    push, pull = view.push({"x": 4}), view.pull("x")
    assert (push.get(T), pull.get(T)) == ([None, None], [4, 4])
    assert (repr(push), repr(pull)) == ("<AsyncResult(_push): finished>", "<AsyncResult(_pull): finished>")


def test_tracked_sends(rc: Any) -> None:
    """`ar.sent` / `wait_for_send()` once the requests have left, with and without `track=True`.
    (That a tracked array may then be changed in place is checked in test_client_units: with
    ipyparallel 9.2 the change still reaches the engine.)"""
    array = numpy.arange(1 << 20, dtype=numpy.float64)  # 8 MB
    pushed = rc[:].push({"tracked": array}, block=False, track=True)
    assert pushed.wait_for_send(T) is None and pushed.sent is True
    assert pushed.get(T) == [None, None]
    lview = rc.load_balanced_view()
    with lview.temp_flags(track=True):
        total = lview.apply_async(numpy.sum, numpy.ones(1 << 20))
    assert total.wait_for_send(T) is None and total.sent is True
    assert total.get(T) == float(1 << 20)
    untracked = rc[0].apply_async(mul, 2, 3)
    assert untracked.wait_for_send(T) is None and untracked.sent is True
    assert untracked.get(T) == 6


def test_dictionary_interface(rc: Any) -> None:
    view = rc[:]
    view["z"] = 9
    assert view["z"] == [9, 9]
    rc[1]["z"] = 10
    assert (rc[0]["z"], rc[1]["z"]) == (9, 10)
    assert view["z"] == [9, 10]


def test_numpy_arrays_round_trip(rc: Any) -> None:
    array = numpy.arange(12.0).reshape(3, 4)
    rc[0]["array"] = array
    back = rc[0]["array"]
    assert isinstance(back, numpy.ndarray)
    assert (back.dtype, back.shape) == (array.dtype, array.shape)
    assert numpy.array_equal(back, array)
    assert numpy.array_equal(rc[0].apply_sync(mul, array, 2), array * 2)


# === scatter and gather ===========================================================================


def test_scatter_gives_the_first_engines_the_extra_items(rc: Any) -> None:
    view = rc[:]
    assert view.scatter("s", list(range(7)), block=True) is None
    assert rc[0].pull("s", block=True) == [0, 1, 2, 3]
    assert rc[1].pull("s", block=True) == [4, 5, 6]
    assert view["s"] == [[0, 1, 2, 3], [4, 5, 6]]
    assert view.gather("s", block=True) == list(range(7))


def test_scatter_and_gather_results(ipp: Compat, rc: Any) -> None:
    view = rc[:]
    scattered = view.scatter("s", list(range(4)))
    scattered.get(T)
    assert repr(scattered) == "<AsyncResult(scatter): finished>"
    gathered = view.gather("s")
    assert isinstance(gathered, ipp.mod.AsyncMapResult)
    assert gathered.get(T) == [0, 1, 2, 3]
    assert repr(gathered) == "<AsyncMapResult(gather): finished>"


def test_scatter_a_range(rc: Any) -> None:
    """ipyparallel: a range is split into ranges, not lists."""
    rc[:].scatter("r", range(7), block=True)
    assert rc[:]["r"] == [range(0, 4), range(4, 7)]


def test_scatter_and_gather_numpy_arrays(rc: Any) -> None:
    view = rc[:]
    array = numpy.arange(14.0).reshape(7, 2)
    view.scatter("A", array, block=True)
    parts = view["A"]
    assert [type(p) for p in parts] == [numpy.ndarray, numpy.ndarray]
    assert [p.shape for p in parts] == [(4, 2), (3, 2)]  # split along axis 0
    assert numpy.array_equal(parts[0], array[:4]) and numpy.array_equal(parts[1], array[4:])
    gathered = view.gather("A", block=True)
    assert isinstance(gathered, numpy.ndarray)
    assert numpy.array_equal(gathered, array)


def test_scatter_flatten(rc: Any) -> None:
    view = rc[:]
    view.scatter("f", [10, 20], block=True)
    assert view["f"] == [[10], [20]]
    view.scatter("f", [10, 20], flatten=True, block=True)
    assert view["f"] == [10, 20]


# === sync_imports, remote and parallel ============================================================


def test_sync_imports(rc: Any, capsys: pytest.CaptureFixture[str]) -> None:
    view = rc[:]
    with view.sync_imports():
        import numpy  # noqa: F401, F811 -- the import under test
    assert capsys.readouterr().out == "importing numpy on engine(s)\n"
    assert view.apply_sync(numpy_name) == ["numpy", "numpy"]
    with view.sync_imports():
        from math import pi  # noqa: F401 -- the import under test
    assert capsys.readouterr().out == "importing pi from math on engine(s)\n"
    assert view.apply_sync(pi_digits) == ["3.1416", "3.1416"]
    with view.sync_imports(quiet=True):
        import json  # noqa: F401 -- the import under test
    assert capsys.readouterr().out == ""


def test_remote_decorator(ipp: Compat, rc: Any) -> None:
    @rc[:].remote(block=True)
    @interactive
    def twice(x: int) -> int:
        return 2 * x

    assert twice(4) == [8, 8]

    @rc.load_balanced_view().remote(block=True)
    @interactive
    def square(x: int) -> int:
        return x * x

    assert square(4) == 16

    @rc[:].remote()
    @interactive
    def one() -> int:
        return 1

    ar = one()  # the view's block flag: not blocking
    assert isinstance(ar, ipp.mod.AsyncResult)
    assert ar.get(T) == [1, 1]
    assert repr(ar) == "<AsyncResult(one): finished>"


def test_parallel_decorator(rc: Any) -> None:
    """ipyparallel: calling a parallel function hands each engine its whole partition (and joins
    the returned lists); `.map` applies it element by element."""

    @rc[:].parallel(block=True)
    @interactive
    def partition_length(x: list[int]) -> list[int]:
        return [len(x)]

    assert partition_length(list(range(7))) == [4, 3]

    @rc[:].parallel(block=True)
    @interactive
    def double(x: Any) -> Any:
        return 2 * x

    assert double([1, 2, 3]) == [1, 2, 1, 2, 3, 3]  # [1, 2] * 2 + [3] * 2
    assert double.map([1, 2, 3]) == [2, 4, 6]

    @rc.load_balanced_view().parallel(block=True)
    @interactive
    def triple(x: int) -> int:
        return 3 * x

    assert triple.map([1, 2, 3]) == [3, 6, 9]


# === errors =======================================================================================


def test_remote_error_from_one_engine(ipp: Compat, rc: Any) -> None:
    with pytest.raises(ipp.mod.RemoteError) as excinfo:
        rc[0].apply_sync(divide_by_zero)
    error = excinfo.value
    assert not isinstance(error, ipp.mod.CompositeError)
    assert str(error) == f"[0:apply] {ZERO_DIVISION}"
    assert repr(error) == "<RemoteError[0]:ZeroDivisionError(division by zero)>"
    assert (error.ename, error.evalue) == ("ZeroDivisionError", "division by zero")
    assert error.engine_info["engine_id"] == 0
    assert "divide_by_zero" in error.traceback


def test_failed_async_result(ipp: Compat, rc: Any) -> None:
    ar = rc[1].apply_async(divide_by_zero)
    assert ar.wait(T) is True
    assert repr(ar) == "<AsyncResult(divide_by_zero): failed>"
    assert ar.successful() is False
    with pytest.raises(ipp.mod.RemoteError, match=r"^\[1:apply\] ZeroDivisionError"):
        ar.get(T)
    with pytest.raises(ipp.mod.RemoteError):
        ar.result()
    assert ar.wait_for_output(T) is True  # ipyparallel: the error record comes with the output
    md = ar.metadata
    assert md["status"] == "error"
    assert isinstance(md["error"], ipp.mod.RemoteError)
    assert (md["error"].ename, md["error"].evalue) == ("ZeroDivisionError", "division by zero")


def test_remote_error_from_a_load_balanced_task(ipp: Compat, rc: Any) -> None:
    with pytest.raises(ipp.mod.RemoteError) as excinfo:
        rc.load_balanced_view().apply_sync(divide_by_zero)
    assert not isinstance(excinfo.value, ipp.mod.CompositeError)
    assert re.fullmatch(rf"\[[01]:apply\] {ZERO_DIVISION}", str(excinfo.value))


def test_composite_error_from_several_engines(ipp: Compat, rc: Any) -> None:
    with pytest.raises(ipp.mod.CompositeError) as excinfo:
        rc[:].apply_sync(divide_by_zero)
    error = excinfo.value
    assert str(error) == (
        "one or more exceptions raised in: divide_by_zero\n"
        f"[0:apply]{ZERO_DIVISION}\n"
        f"[1:apply]{ZERO_DIVISION}"
    )
    assert repr(error) == "CompositeError(2)"
    assert len(error.elist) == 2
    ename, evalue, traceback, engine_info = error.elist[1]
    assert (ename, evalue, engine_info["engine_id"]) == ("ZeroDivisionError", "division by zero", 1)
    assert "divide_by_zero" in traceback
    with pytest.raises(ipp.mod.RemoteError) as first:
        error.raise_exception()
    assert str(first.value) == f"[0:apply] {ZERO_DIVISION}"
    with pytest.raises(ipp.mod.RemoteError) as second:
        error.raise_exception(1)
    assert str(second.value) == f"[1:apply] {ZERO_DIVISION}"


def test_errors_of_execute(ipp: Compat, rc: Any) -> None:
    with pytest.raises(ipp.mod.CompositeError) as composite:
        rc[:].execute("1/0", block=True)
    assert str(composite.value) == (
        f"one or more exceptions raised in: execute\n[0:execute]{ZERO_DIVISION}\n[1:execute]{ZERO_DIVISION}"
    )
    with pytest.raises(ipp.mod.RemoteError) as single:
        rc[0].execute("1/0", block=True)
    assert not isinstance(single.value, ipp.mod.CompositeError)
    assert str(single.value) == f"[0:execute] {ZERO_DIVISION}"


def test_abort_queued_load_balanced_tasks(ipp: Compat, rc: Any) -> None:
    lview = rc.load_balanced_view()
    busy = [lview.apply_async(sleep_for, 1.0) for _ in rc.ids]  # one per engine
    queued = lview.apply_async(sleep_for, 0)
    also_queued = [lview.apply_async(sleep_for, 0) for _ in range(2)]
    kept = lview.apply_async(mul, 2, 3)
    assert queued.abort() is None
    lview.abort(also_queued)
    for ar in (queued, *also_queued):
        with pytest.raises(ipp.mod.TaskAborted) as excinfo:
            ar.get(T)
        # ipyparallel: the exception's text is the aborted task's msg_id.
        assert str(excinfo.value) == ar.msg_ids[0]
        assert repr(ar) == "<AsyncResult(sleep_for): failed>"
        assert (ar.ready(), ar.successful()) == (True, False)
        assert ar.metadata["status"] == "aborted"
    assert [ar.get(T) for ar in busy] == [1.0, 1.0]
    assert kept.get(T) == 6


# === the hub: queue status, stored results, queries ===============================================


def test_queue_status_shape(rc: Any) -> None:
    rc[:].apply_sync(mul, 1, 1)
    status = rc.queue_status()
    assert set(status) == {"unassigned", 0, 1}
    assert isinstance(status["unassigned"], int)
    for engine in (0, 1):
        assert set(status[engine]) == {"queue", "completed", "tasks"}
        assert all(isinstance(n, int) for n in status[engine].values())
        assert status[engine]["completed"] >= 1

    # The hub hears of a finished task a little after the client does, then the counts settle.
    def idle() -> bool:
        now = rc.queue_status()
        return now["unassigned"] == 0 and all(now[e]["queue"] == now[e]["tasks"] == 0 for e in (0, 1))

    wait_until(idle, T, "no task queued or running in queue_status()")


def test_get_result_from_a_later_client(ipp: Compat, rc: Any) -> None:
    ar = rc.load_balanced_view().apply_async(echo, 7)
    assert with_output(ar) == 7
    msg_id, engine_id = ar.msg_ids[0], ar.engine_id
    later = ipp.connect()
    hub_result = later.get_result(msg_id)
    assert isinstance(hub_result, ipp.mod.AsyncHubResult)
    assert isinstance(hub_result, ipp.mod.AsyncResult)
    assert hub_result.get(T) == 7
    assert repr(hub_result) == "<AsyncHubResult(unknown): finished>"
    assert hub_result.metadata["engine_id"] == engine_id
    assert hub_result.metadata["stdout"] == "out 7\n"
    assert hub_result.get_dict() == {engine_id: 7}
    # ipyparallel: block=True waits, and still returns the AsyncHubResult.
    assert repr(later.get_result(msg_id, block=True)) == "<AsyncHubResult(unknown): finished>"


def test_get_result_of_an_unknown_task(ipp: Compat, rc: Any) -> None:
    """ipyparallel: get_result does not fail; the result's get() raises a RemoteError wrapping
    the hub's KeyError, and its text says "Engine Exception" although no engine was involved."""
    hub_result = ipp.connect().get_result("no-such-task")
    with pytest.raises(ipp.mod.RemoteError) as excinfo:
        hub_result.get(T)
    assert (excinfo.value.ename, excinfo.value.evalue) == ("KeyError", "'No such message: no-such-task'")
    assert str(excinfo.value) == "[Engine Exception] KeyError: 'No such message: no-such-task'"


def test_db_query(ipp: Compat, rc: Any) -> None:
    ars = [rc[0].apply_async(mul, 1, 2), rc.load_balanced_view().apply_async(mul, 3, 4)]
    assert [ar.get(T) for ar in ars] == [2, 12]
    msg_ids = [ar.msg_ids[0] for ar in ars]
    records = ipp.connect().db_query({"msg_id": {"$in": msg_ids}}, keys=["msg_id", "completed"])
    assert isinstance(records, list)
    assert all(set(record) == {"msg_id", "completed"} for record in records)
    assert sorted(record["msg_id"] for record in records) == sorted(msg_ids)
    assert all(aware(record["completed"]) for record in records)
    assert rc.db_query({"msg_id": {"$in": ["no-such-task"]}}, keys=["msg_id"]) == []


def test_purge_results(ipp: Compat, rc: Any) -> None:
    lview = rc.load_balanced_view()
    ar = lview.apply_async(mul, 2, 2)
    assert ar.get(T) == 4
    msg_id = ar.msg_ids[0]
    running = lview.apply_async(sleep_for, 0.5)
    # ipyparallel: a client does not purge while it waits for a task of its own.
    with pytest.raises(RuntimeError, match=r"^Can't purge outstanding tasks: "):
        rc.purge_results("all")
    running.get(T)
    assert rc.purge_results("all") is None
    assert rc.db_query({"msg_id": msg_id}) == []
    with pytest.raises(ipp.mod.RemoteError) as excinfo:
        ipp.connect().get_result(msg_id).get(T)
    # ipyparallel: a purged task's error names just its msg_id (an unknown one says "No such message").
    # ipyparallel's text is the msg_id's repr; parallax's is the same as for any unknown task.
    assert excinfo.value.ename == "KeyError" and msg_id in excinfo.value.evalue


# === engines and the client's life ================================================================


def test_wait_for_engines(rc: Any) -> None:
    assert rc.wait_for_engines(2, timeout=T) is None
    with pytest.raises(TimeoutError) as excinfo:
        rc.wait_for_engines(3, timeout=0.5)
    assert str(excinfo.value) == "3 engines not ready in 0.5 seconds. Currently ready: 2"


def test_close(ipp: Compat) -> None:
    client = ipp.connect()
    assert client[:].apply_sync(mul, 1, 2) == [2, 2]
    client.close()
    client.close()  # closing twice is fine
    # The type is what code catches; the wording may say more (ipyparallel: "Client cannot be used
    # after its sockets have been closed").
    with pytest.raises(RuntimeError, match="closed"):
        client[0].apply_sync(mul, 1, 2)


def test_context_manager_closes_the_client(ipp: Compat) -> None:
    with ipp.connect() as client:
        assert client.ids == [0, 1]
        assert client[0].apply_sync(mul, 2, 5) == 10
    with pytest.raises(RuntimeError, match="closed"):
        client[0].apply_sync(mul, 1, 2)


# --- APIs ipyparallel's own tests use -----------------------------------------------------------


def test_clear_empties_the_engines_namespaces(ipp: Compat) -> None:
    rc = ipp.rc
    rc[:].push({"leftover": 1}, block=True)
    # ipyparallel: not blocking by default (the client's `block`), it returns a future.
    rc.clear().result(timeout=T)
    assert rc.clear(block=True) is None
    missing = rc[:].apply_async(interactive(lambda: "leftover" in globals()))
    assert missing.get(timeout=T) == [False, False]
    rc[0].push({"kept": 2}, block=True)
    rc.clear(targets=[1], block=True)
    assert rc[:].apply_sync(interactive(lambda: "kept" in globals())) == [True, False]


def test_db_query_takes_datetimes(ipp: Compat) -> None:
    """ipyparallel: `$lt` with a datetime works (its in-memory database answers `$gt` with
    nothing at all, so that is not compared here)."""
    rc = ipp.rc
    before = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=1)
    ar = rc[0].apply_async(int)
    ar.get(timeout=T)
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)

    def submitted_before(when: datetime.datetime) -> list[str]:
        return [r["msg_id"] for r in rc.db_query({"submitted": {"$lt": when}}, keys=["msg_id"])]

    wait_until(lambda: ar.msg_ids[0] in submitted_before(later), T, "the task submitted before `later`")
    assert ar.msg_ids[0] not in submitted_before(before)


def test_wait_takes_plain_futures(ipp: Compat) -> None:
    import concurrent.futures

    plain: concurrent.futures.Future = concurrent.futures.Future()
    assert ipp.rc.wait([plain], timeout=0.1) is False
    plain.set_result(1)
    assert ipp.rc.wait([plain, ipp.rc[0].apply_async(int)], timeout=T) is True
