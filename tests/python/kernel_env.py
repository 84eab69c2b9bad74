"""Shared machinery for the end-to-end kernel tests: which kernel is under test, an isolated Jupyter
environment with the parallax kernelspec installed, process-tree bookkeeping via /proc, starting and
stopping a kernel (asserting nothing of it is left), and `Driver`, a message-level helper around
`BlockingKernelClient` that waits on events with deadlines, and clusters (`parallax cluster start
--daemonize` in the isolated environment, stopped with no process left).

The kernel under test is chosen by `PARALLAX_TEST_KERNEL`:
  - unset or `parallax`: the parallax kernel, installed from `PARALLAX_BIN`
    (default `<repo>/target/release/parallax`) into a temporary prefix;
  - any other kernelspec name, e.g. `python3` (plain ipykernel): that kernelspec as installed.
Tests that only make sense for parallax carry `@pytest.mark.parallax_only`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import Any

from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

REPO = Path(__file__).resolve().parents[2]
KERNEL_UNDER_TEST = os.environ.get("PARALLAX_TEST_KERNEL", "") or "parallax"
IS_PARALLAX = KERNEL_UNDER_TEST == "parallax"
PARALLAX_BIN = Path(os.environ.get("PARALLAX_BIN", REPO / "target" / "release" / "parallax"))

# Generous upper bounds for events that normally take milliseconds; a hang fails instead of blocking.
STARTUP_TIMEOUT = 60.0
REPLY_TIMEOUT = 30.0
SHUTDOWN_TIMEOUT = 10.0

_ENV_DIRS = (
    "JUPYTER_DATA_DIR",
    "JUPYTER_RUNTIME_DIR",
    "PARALLAX_DIR",
    "IPYTHONDIR",
    "MPLCONFIGDIR",
)


class IsolatedEnv:
    """Temporary Jupyter/IPython/parallax/matplotlib folders plus, for parallax, the kernelspec
    installed into a temporary prefix that `JUPYTER_PATH` points at."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="parallax-test-"))
        self.vars: dict[str, str] = {}
        for name in _ENV_DIRS:
            path = self.root / name.lower()
            path.mkdir()
            self.vars[name] = str(path)
        prefix = self.root / "prefix"
        self.vars["JUPYTER_PATH"] = str(prefix / "share" / "jupyter")
        # Keep the user's own configuration out of the picture.
        self.vars["JUPYTER_CONFIG_DIR"] = str(self.root / "jupyter_config")
        self.vars["JUPYTER_PLATFORM_DIRS"] = "1"
        self.vars["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
        if IS_PARALLAX:
            install_kernelspec(prefix, self.environ())
        self._saved: dict[str, str | None] = {}

    def environ(self) -> dict[str, str]:
        """The full environment for a subprocess (nbconvert, the kernel)."""
        return {**os.environ, **self.vars}

    def apply(self) -> None:
        """Put the variables into os.environ (KernelManager reads them there)."""
        for key, value in self.vars.items():
            self._saved.setdefault(key, os.environ.get(key))
            os.environ[key] = value

    def restore(self) -> None:
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved.clear()

    def cleanup(self) -> None:
        self.restore()
        shutil.rmtree(self.root, ignore_errors=True)


def install_kernelspec(prefix: Path, env: dict[str, str]) -> None:
    if not PARALLAX_BIN.is_file():
        raise RuntimeError(
            f"parallax binary not found at {PARALLAX_BIN}: run `cargo build --release`, "
            "set PARALLAX_BIN, or test plain ipykernel with PARALLAX_TEST_KERNEL=python3"
        )
    cmd = [str(PARALLAX_BIN), "kernel", "install", "--prefix", str(prefix), "--python", sys.executable]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    spec = prefix / "share" / "jupyter" / "kernels" / "parallax" / "kernel.json"
    if not spec.is_file():
        raise RuntimeError(f"{' '.join(cmd)} did not write {spec}")


# --- processes ------------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, or None if it does not exist."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = data[data.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def is_alive(pid: int) -> bool:
    """True unless the process is gone or a zombie (dead, waiting to be reaped)."""
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def descendants(pid: int) -> set[int]:
    """All live descendants of `pid`."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                children.setdefault(st[1], []).append(int(entry))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found and is_alive(child):
                found.add(child)
                todo.append(child)
    return found


def process_tree(pid: int) -> set[int]:
    return {pid} | descendants(pid)


def describe(pids: set[int]) -> str:
    out = []
    for pid in sorted(pids):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            cmd = "?"
        out.append(f"{pid}: {cmd}")
    return "; ".join(out)


def wait_gone(pids: set[int], timeout: float) -> set[int]:
    """Wait until none of `pids` is alive; returns those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        alive = {p for p in pids if is_alive(p)}
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def kernel_pid(km: Any) -> int:
    return int(km.provisioner.process.pid)


# --- kernels --------------------------------------------------------------------------------------


@dataclass
class Kernel:
    """A running kernel under test: its manager, a ready client, and a Driver on that client."""

    km: KernelManager
    kc: BlockingKernelClient
    driver: Driver

    @property
    def pid(self) -> int:
        return kernel_pid(self.km)

    def tree(self) -> set[int]:
        return process_tree(self.pid)


def start_kernel() -> tuple[KernelManager, BlockingKernelClient]:
    km = KernelManager(kernel_name=KERNEL_UNDER_TEST)
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=STARTUP_TIMEOUT)
    except BaseException:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        raise
    return km, kc


def stop_kernel(km: KernelManager, kc: BlockingKernelClient) -> None:
    """Shut the kernel down gracefully and assert its whole process tree is gone."""
    pids: set[int] = set()
    if km.has_kernel and is_alive(kernel_pid(km)):
        pids = process_tree(kernel_pid(km))
    kc.stop_channels()
    if km.has_kernel:
        km.shutdown_kernel()
    left = wait_gone(pids, SHUTDOWN_TIMEOUT)
    assert not left, f"processes left after shutdown_kernel: {describe(left)}"


# --- messages -------------------------------------------------------------------------------------


def parent_id(msg: dict[str, Any]) -> str | None:
    return (msg.get("parent_header") or {}).get("msg_id")


@dataclass
class Exchange:
    """Everything that came back for one request."""

    msg_id: str
    reply: dict[str, Any] | None = None
    iopub: list[dict[str, Any]] = field(default_factory=list)

    def of_type(self, msg_type: str) -> list[dict[str, Any]]:
        return [m for m in self.iopub if m["msg_type"] == msg_type]

    def stream(self, name: str = "stdout") -> str:
        return "".join(m["content"]["text"] for m in self.of_type("stream") if m["content"]["name"] == name)

    def summary(self) -> str:
        """A compact description for assertion messages."""
        reply = self.reply and {"msg_type": self.reply["msg_type"], "content": self.reply["content"]}
        iopub = [(m["msg_type"], _short(m["content"])) for m in self.iopub]
        return f"request {self.msg_id}: reply={reply!r}\n  iopub={iopub!r}"


def _short(content: dict[str, Any]) -> Any:
    text = repr(content)
    return text if len(text) < 300 else text[:300] + "…"


class Driver:
    """Sends requests on a BlockingKernelClient and sorts what comes back by parent msg_id, so a test
    can wait for exactly the reply and the iopub messages of its own request, each with a deadline."""

    def __init__(self, kc: Any) -> None:
        self.kc = kc
        self.replies: dict[str, dict[str, Any]] = {}  # by parent msg_id, any channel
        self.iopub: list[dict[str, Any]] = []  # every iopub message, in arrival order

    # Reading ------------------------------------------------------------------------------------
    def _pump(self, channel: Any, timeout: float) -> bool:
        try:
            msg = channel.get_msg(timeout=timeout)
        except Empty:
            return False
        if channel is self.kc.iopub_channel:
            self.iopub.append(msg)
        else:
            self.replies[parent_id(msg) or ""] = msg
        return True

    def reply(self, msg_id: str, timeout: float = REPLY_TIMEOUT, channel: str = "shell") -> dict[str, Any]:
        chan = getattr(self.kc, f"{channel}_channel")
        deadline = time.monotonic() + timeout
        while msg_id not in self.replies:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {channel} reply to {msg_id} within {timeout} s")
            self._pump(chan, min(left, 0.5))
        return self.replies[msg_id]

    def for_parent(self, msg_id: str) -> list[dict[str, Any]]:
        return [m for m in self.iopub if parent_id(m) == msg_id]

    def idle(self, msg_id: str, timeout: float = REPLY_TIMEOUT) -> list[dict[str, Any]]:
        """Wait for the idle status of `msg_id`; returns its iopub messages so far."""
        deadline = time.monotonic() + timeout
        while True:
            mine = self.for_parent(msg_id)
            if any(_is_status(m, "idle") for m in mine):
                return mine
            left = deadline - time.monotonic()
            if left <= 0:
                got = [(m["msg_type"], m["content"]) for m in mine]
                raise TimeoutError(f"no idle status for {msg_id} within {timeout} s; got {got!r}")
            self._pump(self.kc.iopub_channel, min(left, 0.5))

    def wait_iopub(self, pred: Any, timeout: float = REPLY_TIMEOUT) -> dict[str, Any]:
        """Wait for (and return) the first iopub message, old or new, matching `pred`."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for m in self.iopub[seen:]:
                if pred(m):
                    return m
            seen = len(self.iopub)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no matching iopub message within {timeout} s")
            self._pump(self.kc.iopub_channel, min(left, 0.5))

    def drain(self, seconds: float) -> None:
        """Read whatever arrives on shell, control and iopub during `seconds` (used only to check
        that something does NOT arrive)."""
        deadline = time.monotonic() + seconds
        chans = [self.kc.shell_channel, self.kc.control_channel, self.kc.iopub_channel]
        while time.monotonic() < deadline:
            for chan in chans:
                self._pump(chan, 0.02)

    # Requests -----------------------------------------------------------------------------------
    def send(self, msg_type: str, content: dict[str, Any], channel: str = "shell", **kw: Any) -> str:
        msg = self.kc.session.msg(msg_type, content, **kw)
        getattr(self.kc, f"{channel}_channel").send(msg)
        return str(msg["header"]["msg_id"])

    def execute(self, code: str, timeout: float = REPLY_TIMEOUT, **kw: Any) -> Exchange:
        """Execute `code` and wait for both its execute_reply and its idle status."""
        msg_id = self.kc.execute(code, **kw)
        return self.finish(msg_id, timeout)

    def finish(self, msg_id: str, timeout: float = REPLY_TIMEOUT, channel: str = "shell") -> Exchange:
        reply = self.reply(msg_id, timeout, channel)
        return Exchange(msg_id, reply, self.idle(msg_id, timeout))


def _is_status(msg: dict[str, Any], state: str) -> bool:
    return msg["msg_type"] == "status" and msg["content"].get("execution_state") == state


# --- clusters -------------------------------------------------------------------------------------

CLUSTER_TIMEOUT = 60.0


def processes_using(parallax_dir: str | Path) -> set[int]:
    """Live processes started with `PARALLAX_DIR=parallax_dir` in their environment: every process of
    a cluster (supervisor, controller, engines, engine kernels) and of a kernel started in that
    isolated environment. This process is left out (its /proc environ is the one it started with)."""
    needle = f"PARALLAX_DIR={parallax_dir}".encode()
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and is_alive(int(entry)):
            found.add(int(entry))
    return found


@dataclass
class Cluster:
    """A cluster started with `parallax cluster start --daemonize` in an isolated environment."""

    profile: str
    n: int
    env: dict[str, str]
    pids: set[int]  # supervisor, controller, engine processes and their kernels, as started

    @property
    def parallax_dir(self) -> Path:
        return Path(self.env["PARALLAX_DIR"])

    @property
    def profile_dir(self) -> Path:
        return self.parallax_dir / f"profile_{self.profile}"


def parallax_cli(args: list[str], env: dict[str, str], timeout: float = CLUSTER_TIMEOUT) -> str:
    """Run `parallax ARGS`; returns its stdout, raises with its output if it fails."""
    cmd = [str(PARALLAX_BIN), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def start_cluster(env: IsolatedEnv, profile: str = "default", n: int = 2, extra: Iterable[str] = ()) -> Cluster:
    """Start a cluster of `n` engines for `profile` in `env`; returns once every engine is ready.
    Engines run ipykernel from this Python (`PARALLAX_PYTHON`). `extra`: more `cluster start`
    arguments."""
    # Lifecycle events (engines, interrupts) in the profile's logs, for `cluster_diagnostics`.
    cluster_env = {"RUST_LOG": "info", **env.environ(), "PARALLAX_PYTHON": sys.executable}
    # ipykernel stops forwarding output written to file descriptors when it sees this variable;
    # the engines' kernels must behave as they do outside the tests.
    cluster_env.pop("PYTEST_CURRENT_TEST", None)
    out = parallax_cli(["cluster", "start", "-n", str(n), "--daemonize", "--profile", profile, *extra], cluster_env)
    cluster = Cluster(profile, n, cluster_env, set())
    try:
        record = json.loads((cluster.profile_dir / "cluster.json").read_text())
        cluster.pids = process_tree(int(record["supervisor_pid"]))
        expected = {int(record["controller_pid"]), *map(int, record["engine_pids"])}
        assert expected <= cluster.pids, f"cluster.json names processes that are not running: {out}"
    except BaseException:
        stop_cluster(cluster)
        raise
    return cluster


def cluster_diagnostics(cluster: Cluster) -> str:
    """What a failing test prints about `cluster`: the tail of every log of its profile, and the
    Python stacks of each of its processes that runs Python (the engines' kernels), by py-spy."""
    parts = []
    for log in sorted((cluster.profile_dir / "log").glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-60:]
        parts.append(f"--- {log.name} (last {len(lines)} lines)\n" + "\n".join(lines))
    py_spy = Path(sys.executable).with_name("py-spy")
    for pid in sorted(processes_using(cluster.parallax_dir)):
        try:
            if "python" not in Path(os.readlink(f"/proc/{pid}/exe")).name:
                continue
        except OSError:
            continue
        parts.append(f"--- signal state of {pid}'s threads (SigBlk/SigIgn/SigCgt, pending)\n{signal_state(pid)}")
        try:
            dump = subprocess.run([str(py_spy), "dump", "--pid", str(pid)], capture_output=True, text=True,
                                  timeout=30, check=False)
            parts.append(f"--- py-spy dump of {describe({pid})}\n{dump.stdout}{dump.stderr}")
        except (OSError, subprocess.TimeoutExpired) as exc:
            parts.append(f"--- py-spy dump of {pid} failed: {exc}")
    return "\n".join(parts)


def signal_state(pid: int) -> str:
    """Each thread of `pid`: its name and the signal masks and pending sets /proc reports."""
    lines = []
    for task in sorted(Path(f"/proc/{pid}/task").glob("*"), key=lambda t: int(t.name)):
        try:
            fields = dict(line.split(":\t", 1) for line in (task / "status").read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        keys = ("Name", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")
        lines.append(f"{task.name}: " + " ".join(f"{k}={fields.get(k, '?').strip()}" for k in keys))
    return "\n".join(lines)


def stop_cluster(cluster: Cluster) -> None:
    """`parallax cluster stop --profile P`, then assert that no process of the cluster (nor anything
    else started in its environment) is left; leftovers are killed before the assertion fails."""
    try:
        parallax_cli(["cluster", "stop", "--profile", cluster.profile], cluster.env)
    finally:
        assert_no_processes_left(cluster.parallax_dir, cluster.pids)


def assert_no_processes_left(
    parallax_dir: str | Path, pids: Iterable[int] = (), timeout: float = 10.0
) -> None:
    """Wait until `pids` and every process started with `PARALLAX_DIR=parallax_dir` are gone; kill
    (SIGKILL, by pid) whatever is left and fail naming it."""
    left = wait_gone(set(pids) | processes_using(parallax_dir), timeout)
    left |= processes_using(parallax_dir)
    if left:
        described = describe(left)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        raise AssertionError(f"processes left behind: {described}")
