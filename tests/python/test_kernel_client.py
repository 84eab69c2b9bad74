"""The kernel under test driven message by message with jupyter_client, each test with its own kernel.

Covers what the conformance suite does not: interrupts, restart and shutdown (no process left behind),
wire robustness (bad signatures, unknown message types), comms with binary buffers in both directions,
stdin, death of the local kernel, large output, execution counting, stop_on_error and busy/idle framing.
"""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from pathlib import Path

import pytest
from jupyter_client.session import Session

from kernel_env import IS_PARALLAX, PARALLAX_BIN, Exchange, Kernel, describe, is_alive, parent_id, wait_gone


def _assert_ok(ex: Exchange) -> None:
    assert ex.reply is not None and ex.reply["content"]["status"] == "ok", ex.summary()


def _wait_printed(kernel: Kernel, msg_id: str, text: str) -> None:
    """Wait until the code of `msg_id` has printed `text`."""
    kernel.driver.wait_iopub(
        lambda m: m["msg_type"] == "stream" and parent_id(m) == msg_id and text in m["content"]["text"]
    )


# --- interrupt ------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["interrupt_kernel", "sigint_to_pid", "interrupt_request"])
def test_interrupt_sleep(kernel: Kernel, how: str) -> None:
    """`time.sleep(60)` is interrupted within 2 s, by KernelManager.interrupt_kernel() (what frontends
    call; with interrupt_mode "signal" it sends SIGINT to the kernel's whole process group), by SIGINT
    to the kernel process alone (so parallax itself must pass it on), or by interrupt_request on control."""
    d = kernel.driver
    # Interrupt only once the cell is inside user code: ipykernel loses the reply if SIGINT lands
    # between publishing execute_input and starting the cell.
    msg_id = kernel.kc.execute("import time; print('sleeping', flush=True); time.sleep(60)")
    _wait_printed(kernel, msg_id, "sleeping")

    start = time.monotonic()
    if how == "interrupt_kernel":
        kernel.km.interrupt_kernel()
    elif how == "sigint_to_pid":
        os.kill(kernel.pid, signal.SIGINT)
    else:
        int_id = d.send("interrupt_request", {}, channel="control")
    reply = d.reply(msg_id, timeout=30)
    elapsed = time.monotonic() - start

    assert reply["content"]["status"] == "error", reply["content"]
    assert reply["content"]["ename"] == "KeyboardInterrupt", reply["content"]
    assert elapsed < 2.0, f"interrupt took {elapsed:.2f} s"
    if how == "interrupt_request":
        int_reply = d.reply(int_id, channel="control")
        assert int_reply["msg_type"] == "interrupt_reply"
        assert int_reply["content"]["status"] == "ok", int_reply["content"]
    d.idle(msg_id)

    after = d.execute("print('alive')")
    _assert_ok(after)
    assert after.stream() == "alive\n"


# --- restart and shutdown -------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_restart_gives_fresh_namespace(kernel: Kernel) -> None:
    d = kernel.driver
    _assert_ok(d.execute("canary = 42"))
    old_tree = kernel.tree()
    if IS_PARALLAX:
        assert len(old_tree) >= 2, f"expected parallax and its local kernel: {describe(old_tree)}"

    kernel.km.restart_kernel()
    kernel.kc.wait_for_ready(timeout=60)

    left = wait_gone(old_tree, 10)
    assert not left, f"processes of the old kernel left after restart: {describe(left)}"
    assert kernel.pid not in old_tree
    ex = d.execute("canary")
    assert ex.reply is not None and ex.reply["content"]["status"] == "error", ex.summary()
    assert ex.reply["content"]["ename"] == "NameError", ex.summary()
    _assert_ok(d.execute("canary = 1"))


@pytest.mark.timeout(60)
def test_shutdown_leaves_no_process(kernel: Kernel) -> None:
    tree = kernel.tree()
    if IS_PARALLAX:
        assert len(tree) >= 2, f"expected parallax and its local kernel: {describe(tree)}"
    proc = kernel.km.provisioner.process
    kernel.kc.stop_channels()

    kernel.km.shutdown_kernel()

    left = wait_gone(tree, 10)
    assert not left, f"processes left after shutdown_kernel(): {describe(left)}"
    # 0 means it exited on its own after shutdown_request; jupyter_client's fallback is SIGTERM/SIGKILL
    # to the whole process group, which would hide children the kernel failed to stop.
    assert proc.returncode == 0, f"kernel exit status {proc.returncode} (killed, not shut down)"


@pytest.mark.timeout(60)
def test_sigterm_leaves_no_process(kernel: Kernel) -> None:
    tree = kernel.tree()
    if IS_PARALLAX:
        assert len(tree) >= 2, f"expected parallax and its local kernel: {describe(tree)}"

    os.kill(kernel.pid, signal.SIGTERM)  # the kernel process only, not its process group

    left = wait_gone(tree, 5)
    assert not left, f"processes left 5 s after SIGTERM to the kernel: {describe(left)}"


@pytest.mark.parallax_only
@pytest.mark.timeout(120)
def test_local_kernel_death_is_reported_and_recovered(kernel: Kernel) -> None:
    """`os._exit(1)` kills the local kernel mid-cell: that cell ends with an error saying so, and the next
    cell runs on a new local kernel."""
    d = kernel.driver
    _assert_ok(d.execute("x = 1"))
    old_children = kernel.tree() - {kernel.pid}

    ex = d.execute("import os; os._exit(1)", timeout=60)

    assert ex.reply is not None and ex.reply["content"]["status"] == "error", ex.summary()
    said = " ".join(
        [str(ex.reply["content"].get(k, "")) for k in ("ename", "evalue", "traceback")]
        + [str(m["content"]) for m in ex.iopub if m["msg_type"] in ("error", "stream")]
    )
    assert re.search(r"kernel", said, re.I) and re.search(r"died|dead|exited|crashed", said, re.I), (
        f"the error does not say the local kernel died: {ex.summary()}"
    )
    inputs = [m["content"]["execution_count"] for m in ex.of_type("execute_input")]
    assert [ex.reply["content"]["execution_count"]] == inputs, (
        f"reply count differs from execute_input: {ex.summary()}"
    )
    assert not wait_gone(old_children, 10), "the dead local kernel is still around"

    nxt = d.execute("print(1+1)", timeout=60)
    _assert_ok(nxt)
    assert nxt.stream() == "2\n", nxt.summary()
    assert is_alive(kernel.pid)


# --- wire robustness ------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_bad_signature_is_dropped(kernel: Kernel) -> None:
    d = kernel.driver
    good_session = kernel.kc.session
    bad_session = Session(key=b"not-the-key", signature_scheme=good_session.signature_scheme)
    bad = bad_session.msg("execute_request", _execute_content("print('bad')"))
    bad_session.send(kernel.kc.shell_channel.socket, bad)
    bad_id = bad["header"]["msg_id"]

    ex = d.execute("print('good')")
    _assert_ok(ex)
    assert ex.stream() == "good\n", ex.summary()
    d.drain(1.0)  # anything the bad message caused would have arrived by now

    assert bad_id not in d.replies, f"bad-signature request was answered: {d.replies[bad_id]}"
    assert not d.for_parent(bad_id), f"bad-signature request caused iopub: {d.for_parent(bad_id)}"
    printed = [m for m in d.iopub if m["msg_type"] == "stream" and "bad" in m["content"]["text"]]
    assert not printed, "bad-signature request was executed"


@pytest.mark.parallax_only
@pytest.mark.timeout(60)
def test_unknown_message_type_gets_error_reply(kernel: Kernel) -> None:
    d = kernel.driver
    msg_id = d.send("foo_request", {"anything": 1})
    reply = d.reply(msg_id, timeout=10)
    assert reply["msg_type"] == "foo_reply", reply
    assert reply["content"]["status"] == "error", reply["content"]
    _assert_ok(d.execute("pass"))


def _execute_content(code: str) -> dict[str, object]:
    return {
        "code": code,
        "silent": False,
        "store_history": True,
        "user_expressions": {},
        "allow_stdin": False,
        "stop_on_error": True,
    }


# --- comms ----------------------------------------------------------------------------------------

ECHO_TARGET = """
def _echo_target(comm, open_msg):
    @comm.on_msg
    def _echo(msg):
        comm.send(msg["content"]["data"], buffers=msg["buffers"])

get_ipython().kernel.comm_manager.register_target("echo", _echo_target)
"""


@pytest.mark.timeout(60)
def test_comm_echo_with_binary_buffer(kernel: Kernel) -> None:
    """Frontend-opened comm (the ipywidgets direction): a 1 MiB buffer sent on shell comes back
    byte-identical on iopub, attached to the comm_msg that caused it."""
    d = kernel.driver
    _assert_ok(d.execute(ECHO_TARGET))
    comm_id = uuid.uuid4().hex
    open_id = d.send("comm_open", {"comm_id": comm_id, "target_name": "echo", "data": {}})
    d.idle(open_id)

    payload = os.urandom(1 << 20)
    msg = kernel.kc.session.msg("comm_msg", {"comm_id": comm_id, "data": {"n": 1}})
    msg["buffers"] = [payload]
    kernel.kc.shell_channel.send(msg)
    msg_id = msg["header"]["msg_id"]

    echo = d.wait_iopub(lambda m: m["msg_type"] == "comm_msg" and parent_id(m) == msg_id)
    assert echo["content"]["comm_id"] == comm_id
    assert echo["content"]["data"] == {"n": 1}
    assert len(echo["buffers"]) == 1
    got = bytes(echo["buffers"][0])
    assert len(got) == len(payload) and got == payload, "echoed buffer differs"
    d.idle(msg_id)


@pytest.mark.timeout(60)
def test_comm_opened_by_kernel(kernel: Kernel) -> None:
    d = kernel.driver
    code = (
        "from comm import create_comm\n"
        "c = create_comm(target_name='frontend.target', data={'hello': 'frontend'},\n"
        "                buffers=[b'\\x00\\x01\\xff'])\n"
        "c.send({'second': True})"
    )
    ex = d.execute(code)
    _assert_ok(ex)
    opens = ex.of_type("comm_open")
    assert len(opens) == 1, ex.summary()
    assert opens[0]["content"]["target_name"] == "frontend.target"
    assert opens[0]["content"]["data"] == {"hello": "frontend"}
    assert [bytes(b) for b in opens[0]["buffers"]] == [b"\x00\x01\xff"]
    msgs = ex.of_type("comm_msg")
    assert [m["content"]["data"] for m in msgs] == [{"second": True}], ex.summary()
    assert msgs[0]["content"]["comm_id"] == opens[0]["content"]["comm_id"]


@pytest.mark.timeout(60)
def test_every_message_names_one_kernel_session(kernel: Kernel) -> None:
    """Regression: the parallax kernel sent its own status messages under its session and the
    local kernel's outputs and replies under the local kernel's. JupyterLab drops a message whose
    header names another session than the last message it received, so a widget's comm_open that
    followed one of our statuses was lost, and the widget showed 'model not found'."""
    d = kernel.driver
    info = d.reply(d.send("kernel_info_request", {}))
    session = info["header"]["session"]
    ex = d.execute(
        "from comm import create_comm\n"
        "from IPython.display import display\n"
        "c = create_comm(target_name='frontend.target', data={})\n"
        "print('out'); display('shown'); 42",
    )
    _assert_ok(ex)
    comm_info = d.reply(d.send("comm_info_request", {}))
    msg_id = kernel.kc.execute("input('who? ')", allow_stdin=True)
    prompt = kernel.kc.get_stdin_msg(timeout=30)
    kernel.kc.input("x")
    d.finish(msg_id)

    messages = [*ex.iopub, ex.reply, comm_info, prompt]
    seen = {(m["msg_type"], m["header"]["session"]) for m in messages}
    assert {t for t, s in seen if s != session} == set(), f"kernel session {session}; seen {sorted(seen)}"
    types = {t for t, _ in seen}
    assert {"status", "stream", "display_data", "execute_result", "comm_open", "execute_reply",
            "comm_info_reply", "input_request"} <= types, types


# --- stdin ----------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_input_round_trip(kernel: Kernel) -> None:
    d = kernel.driver
    msg_id = kernel.kc.execute("name = input('who? ')\nprint('hello', name)", allow_stdin=True)
    req = kernel.kc.get_stdin_msg(timeout=30)
    assert req["msg_type"] == "input_request"
    assert parent_id(req) == msg_id
    assert req["content"]["prompt"] == "who? "
    assert req["content"]["password"] is False
    kernel.kc.input("parallax")

    ex = d.finish(msg_id)
    _assert_ok(ex)
    assert ex.stream() == "hello parallax\n", ex.summary()


# --- output volume --------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_100k_lines_arrive_whole(kernel: Kernel) -> None:
    n = 100_000
    ex = kernel.driver.execute(f"for i in range({n}): print(i)", timeout=150)
    _assert_ok(ex)
    assert not ex.stream("stderr"), ex.stream("stderr")[:500]
    lines = ex.stream().split("\n")
    assert lines[-1] == "", "output does not end with a newline"
    lines.pop()
    if lines != [str(i) for i in range(n)]:
        numbers = [int(x) for x in lines if x.isdigit()]
        missing = sorted(set(range(n)) - set(numbers))
        dupes = len(numbers) - len(set(numbers))
        unordered = numbers != sorted(numbers)
        pytest.fail(
            f"{len(lines)} lines for {n} prints: {len(missing)} missing (first {missing[:5]}), "
            f"{dupes} duplicated, out of order: {unordered}"
        )


# --- execution counting ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_execution_count(kernel: Kernel) -> None:
    d = kernel.driver

    def count(ex: Exchange) -> int:
        assert ex.reply is not None
        return int(ex.reply["content"]["execution_count"])

    def inputs(ex: Exchange) -> list[int]:
        return [m["content"]["execution_count"] for m in ex.of_type("execute_input")]

    first = d.execute("a = 1")
    n = count(first)
    assert inputs(first) == [n]

    second = d.execute("a += 1")
    assert count(second) == n + 1
    assert inputs(second) == [n + 1]

    # silent=True: no execute_input, no execute_result, no new count (ipykernel still relays stdout).
    silent = d.execute("a += 1; a", silent=True)
    _assert_ok(silent)
    assert not silent.of_type("execute_input"), silent.summary()
    assert not silent.of_type("execute_result"), silent.summary()

    third = d.execute("a")
    assert count(third) == n + 2, "silent=True incremented the execution count"
    assert third.of_type("execute_result")[0]["content"]["data"]["text/plain"] == "3"
    assert third.of_type("execute_result")[0]["content"]["execution_count"] == n + 2

    unstored = d.execute("a += 1", store_history=False)
    _assert_ok(unstored)

    fourth = d.execute("a")
    assert count(fourth) == n + 3, "store_history=False incremented the execution count"
    assert fourth.of_type("execute_result")[0]["content"]["data"]["text/plain"] == "4"


@pytest.mark.timeout(60)
def test_history_range_current_session(kernel: Kernel) -> None:
    """Range requests for the current session (session=0), as IPython numbers it (see conftest.py)."""
    d = kernel.driver
    codes = ["1+2+3", "2*21"]
    for code in codes:
        _assert_ok(d.execute(code))
    content = {"hist_access_type": "range", "session": 0, "start": 1, "stop": 3, "raw": True, "output": False}
    reply = d.reply(d.send("history_request", content))
    assert reply["content"]["status"] == "ok", reply["content"]
    assert [tuple(h) for h in reply["content"]["history"]] == [(0, 1, codes[0]), (0, 2, codes[1])]


# --- stop_on_error --------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_stop_on_error_aborts_queued_requests(kernel: Kernel) -> None:
    d = kernel.driver
    # The sleep makes sure the next two requests are queued before the first one fails.
    ids = [
        kernel.kc.execute("import time; time.sleep(0.5); raise ValueError('first fails')"),
        kernel.kc.execute("print('second')"),
        kernel.kc.execute("print('third')"),
    ]
    exchanges = [d.finish(i) for i in ids]
    statuses = [ex.reply["content"]["status"] for ex in exchanges if ex.reply]
    assert statuses == ["error", "aborted", "aborted"], "\n".join(ex.summary() for ex in exchanges)
    assert exchanges[0].reply is not None and exchanges[0].reply["content"]["ename"] == "ValueError"
    assert not exchanges[1].stream() and not exchanges[2].stream()

    after = d.execute("print('after')")
    _assert_ok(after)
    assert after.stream() == "after\n"


@pytest.mark.timeout(60)
def test_stop_on_error_false_keeps_going(kernel: Kernel) -> None:
    d = kernel.driver
    ids = [
        kernel.kc.execute(
            "import time; time.sleep(0.5); raise ValueError('first fails')", stop_on_error=False
        ),
        kernel.kc.execute("print('second')"),
    ]
    first, second = (d.finish(i) for i in ids)
    assert first.reply is not None and first.reply["content"]["status"] == "error", first.summary()
    _assert_ok(second)
    assert second.stream() == "second\n"


# --- busy / idle ----------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_one_busy_and_one_idle_per_request(kernel: Kernel) -> None:
    """Every request gets exactly one busy and one idle status with it as parent: busy before anything
    else for that parent, idle after everything else."""
    d = kernel.driver
    requests = [
        ("shell", "execute_request", _execute_content("print('out'); 42")),
        ("shell", "execute_request", _execute_content("raise ValueError('x')")),
        ("shell", "execute_request", {**_execute_content("1"), "silent": True}),
        ("shell", "kernel_info_request", {}),
        ("control", "kernel_info_request", {}),
        ("shell", "complete_request", {"code": "import o", "cursor_pos": 8}),
        ("shell", "inspect_request", {"code": "print", "cursor_pos": 5, "detail_level": 0}),
        ("shell", "is_complete_request", {"code": "for i in x:"}),
        ("shell", "history_request", {"hist_access_type": "tail", "n": 5, "raw": True, "output": False}),
        ("shell", "comm_info_request", {}),
    ]
    sent = []
    for channel, msg_type, content in requests:
        msg_id = d.send(msg_type, content, channel=channel)
        d.finish(msg_id, channel=channel)
        sent.append((f"{channel}:{msg_type}", msg_id))
    # A last request as a barrier: its idle comes after anything still in flight for the others.
    d.execute("pass")

    problems = []
    for label, msg_id in sent:
        mine = d.for_parent(msg_id)
        states = [m["content"]["execution_state"] for m in mine if m["msg_type"] == "status"]
        if states != ["busy", "idle"]:
            problems.append(f"{label}: statuses {states}")
            continue
        first, last = mine[0], mine[-1]
        if first["msg_type"] != "status" or first["content"]["execution_state"] != "busy":
            problems.append(f"{label}: first iopub message is {first['msg_type']}, not busy")
        if last["msg_type"] != "status" or last["content"]["execution_state"] != "idle":
            problems.append(f"{label}: {last['msg_type']} after idle")
    assert not problems, "\n".join(problems)


# --- sanity ---------------------------------------------------------------------------------------


@pytest.mark.parallax_only
@pytest.mark.timeout(60)
def test_kernel_under_test_is_parallax_with_a_local_kernel(kernel: Kernel) -> None:
    """Guards the rest of this file against silently testing something else."""
    exe = Path(f"/proc/{kernel.pid}/exe").resolve()
    assert exe == PARALLAX_BIN.resolve(), f"kernel process runs {exe}"
    children = kernel.tree() - {kernel.pid}
    cmdlines = [Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0") for p in children]
    assert any(b"ipykernel_launcher" in c for cmd in cmdlines for c in cmd), describe(children)
