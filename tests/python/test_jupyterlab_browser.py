"""A progress-bar widget of the parallax kernel in a real JupyterLab, in a real browser (headless
Debian chromium driven by Playwright).

Regression: the first widget of a fresh kernel, `ar.wait_interactive()` on a load-balanced map,
showed "Error displaying widget: model not found" most of the time. The kernel forwarded the local
ipykernel's messages under that kernel's session id while its own status messages carried its own;
JupyterLab drops a comm_open whose session differs from the last message's, so the widget's model
never reached the page.

Ten times, each with a fresh kernel (a new notebook naming the `parallax` kernelspec) in a fresh
JupyterLab tab (a new browser context, so the widgets' code is loaded anew) whose requests get
LATENCY_MS of added latency while the cells run, as from a server across a network (the
conditions in which the comm_open was lost every time), against a 2-engine cluster: run a cell
that connects a Client, then the widget cell. In every run the bar must render and its label
reach 200/200, and every message the page received from the kernel must name one session. Each
run's notebook is saved with the widget state (ipywidgets' "save widget state" setting on), and
the saved state must hold the finished bar (the output's text/plain fallback is tqdm's text at
display time, 0/200, whatever happens). A screenshot of every run is kept under
`tests/artifacts/jupyterlab/`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from browser_env import VIEWPORT, chromium
from kernel_env import REPO, Cluster, IsolatedEnv, describe, process_tree, wait_gone

pytestmark = [pytest.mark.parallax_only, pytest.mark.timeout(900)]

ARTIFACTS = REPO / "tests" / "artifacts" / "jupyterlab"
RUNS = 10
TASKS = 200
SETUP_CELL = (
    "import parallax; rc = parallax.Client(); rc.wait_for_engines(2, timeout=30); lview = rc.load_balanced_view()"
)
WIDGET_CELL = f"ar = lview.map_async(lambda x: x*x, range({TASKS})); ar.wait_interactive()"
# Latency Chromium adds to the page's requests while the cells run, as for a server across a
# network: the widgets' code, fetched when the first widget's comm_open is handled, then arrives
# after the kernel's idle status. Without the fix, every run lost the widget this way.
LATENCY_MS = 200
# Generous bounds for steps that take seconds on a loaded machine; a hang fails instead of blocking.
STEP_TIMEOUT_MS = 90_000
SERVER_TIMEOUT = 90.0

# Lab settings: ipywidgets saves the widgets' state into the notebook; no news or update checks.
LAB_SETTINGS = {
    "@jupyter-widgets/jupyterlab-manager/plugin.jupyterlab-settings": {"saveState": True},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "checkForUpdates": False,
        "fetchNews": "false",
    },
}


@pytest.fixture
def browser() -> Iterator[Any]:
    """Chromium, launched before the isolated environment is applied (it is not a process of it)."""
    with chromium() as browser:
        yield browser


class JupyterLab:
    """`python -m jupyterlab` on an OS-chosen port, in the isolated environment, serving `root`."""

    def __init__(self, env: IsolatedEnv, cluster: Cluster) -> None:
        pytest.importorskip("jupyterlab")
        self.root = env.root / "notebooks"
        self.root.mkdir()
        settings = env.root / "lab-settings"
        for name, values in LAB_SETTINGS.items():
            (settings / name).parent.mkdir(parents=True, exist_ok=True)
            (settings / name).write_text(json.dumps(values))
        self.token = "jt" + os.urandom(12).hex()
        server_env = {**cluster.env, "PARALLAX_PROFILE": cluster.profile}
        server_env.pop("RUST_LOG", None)
        self.log_path = env.root / "jupyterlab.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyterlab",
                "--no-browser",
                "--allow-root",
                "--ip=127.0.0.1",
                "--port=0",
                f"--IdentityProvider.token={self.token}",
                f"--ServerApp.root_dir={self.root}",
                f"--LabApp.user_settings_dir={settings}",
                f"--LabApp.workspaces_dir={env.root / 'lab-workspaces'}",
                "--LabApp.expose_app_in_browser=True",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=server_env,
        )
        try:
            self.url = self._wait_started(Path(server_env["JUPYTER_RUNTIME_DIR"]))
        except BaseException:
            self.stop()
            raise

    def _wait_started(self, runtime_dir: Path) -> str:
        """The server's base URL, once it answers: its port is in the info file it writes."""
        info = runtime_dir / f"jpserver-{self.process.pid}.json"
        deadline = time.monotonic() + SERVER_TIMEOUT
        while True:
            assert self.process.poll() is None, f"jupyter lab exited:\n{self.log()}"
            assert time.monotonic() < deadline, f"jupyter lab did not start in {SERVER_TIMEOUT} s:\n{self.log()}"
            if info.is_file():
                try:
                    url = f"http://127.0.0.1:{json.loads(info.read_text())['port']}"
                    if requests.get(f"{url}/api/status", params={"token": self.token}, timeout=5).ok:
                        return url
                except (ValueError, KeyError, requests.RequestException):
                    pass  # half-written info file, or not listening yet
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def api(self, path: str, post: dict[str, Any] | None = None) -> Any:
        """GET (or, with `post`, POST that JSON to) /api/PATH; returns the answer's JSON."""
        url, params = f"{self.url}/api/{path}", {"token": self.token}
        if post is None:
            r = requests.get(url, params=params, timeout=30)
        else:
            r = requests.post(url, params=params, json=post, timeout=60)
        r.raise_for_status()
        return r.json()

    def stop(self) -> None:
        """SIGTERM (the server shuts its kernels down), then assert that nothing of it is left."""
        tree = process_tree(self.process.pid) if self.process.poll() is None else set()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self._log.close()
        left = wait_gone(tree, 15)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert not left, f"processes of jupyter lab left behind: {describe(left)}"


def notebook() -> dict[str, Any]:
    def cell(source: str) -> dict[str, Any]:
        return {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": source}

    return {
        "cells": [cell(SETUP_CELL), cell(WIDGET_CELL)],
        "metadata": {
            "kernelspec": {"name": "parallax", "display_name": "Python 3 (parallax)", "language": "python"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


# Opens `path` (the current widget afterwards) and keeps it as window.__run.panel; flags when its
# document and session are ready and records, per header session, the messages the kernel
# connection receives.
OPEN = """async (path) => {
  const run = { ready: false, sessions: {}, failed: null };
  window.__run = run;
  try {
    const panel = await window.jupyterapp.commands.execute("docmanager:open", { path, factory: "Notebook" });
    run.panel = panel;
    await panel.context.ready;
    await panel.sessionContext.ready;
    run.ready = true;
  } catch (e) {
    run.failed = String(e && e.stack || e);
  }
}"""

KERNEL_IDLE = """() => {
  const run = window.__run;
  if (run.failed) return { failed: run.failed };
  const kernel = run.ready && run.panel.sessionContext.session && run.panel.sessionContext.session.kernel;
  if (!kernel || kernel.status !== "idle" || kernel.connectionStatus !== "connected") return false;
  if (!run.hooked) {
    kernel.anyMessage.connect((_, args) => {
      if (args.direction === "recv") {
        const s = args.msg.header.session;
        run.sessions[s] = (run.sessions[s] || 0) + 1;
      }
    });
    run.hooked = true;
  }
  return { kernel: kernel.name, id: kernel.id };
}"""

# What the widget cell's output shows, once it is conclusive: the bar at TASKS/TASKS with the cell
# finished, a widget error, or a traceback in either cell.
OUTCOME = """(tasks) => {
  const panel = window.__run.panel;
  const cells = panel.node.querySelectorAll(".jp-CodeCell");
  if (cells.length < 2) return false;
  const outputs = [...cells].map((c) => c.querySelector(".jp-OutputArea"));
  const texts = outputs.map((o) => (o ? o.textContent : ""));
  const traceback = outputs.some((o) => o && o.querySelector('[data-mime-type="application/vnd.jupyter.stderr"]'));
  const widget = outputs[1] && outputs[1].querySelector(".jupyter-widgets");
  const label = widget ? [...widget.querySelectorAll(".widget-html")].map((e) => e.textContent).join(" | ") : null;
  const prompts = [...cells].map((c) => c.querySelector(".jp-InputPrompt").textContent.trim());
  const finished = /^\[\d+\]/.test(prompts[1]);
  const state = /Error displaying widget|model not found/.test(texts[1])
    ? "widget error"
    : traceback
      ? "traceback"
      : finished && widget && widget.querySelector(".widget-hprogress") && label.includes(`${tasks}/${tasks}`)
        ? "done"
        : null;
  if (!state) return false;
  return { state, label, texts, prompts };
}"""

# Saves the notebook (ipywidgets writes the widget state into its metadata as the save starts),
# shuts its kernel down and closes it; then sets window.__run.closed.
SAVE_AND_CLOSE = """async () => {
  const run = window.__run;
  try {
    await run.panel.context.save();
    await run.panel.sessionContext.shutdown();
    run.panel.dispose();
    run.closed = { sessions: run.sessions };
  } catch (e) {
    run.closed = { failed: String(e && e.stack || e) };
  }
}"""


@dataclass
class Run:
    """What one run saw; `problems` empty means it passed."""

    index: int
    outcome: dict[str, Any] | None = None
    sessions: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def describe(self) -> str:
        return (
            f"run {self.index}: {'; '.join(self.problems)}\n  outcome={self.outcome!r}\n"
            f"  header sessions received={self.sessions!r}\n  console errors={self.errors!r}"
        )


def saved_widget_problems(saved: dict[str, Any]) -> list[str]:
    """What is wrong with the saved widget cell: its output must name a widget whose saved state
    is the bar at TASKS of TASKS."""
    views = [
        o["data"]["application/vnd.jupyter.widget-view+json"]
        for o in saved["cells"][1]["outputs"]
        if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]
    if len(views) != 1:
        return [f"saved widget cell has {len(views)} widget outputs: {saved['cells'][1]['outputs']!r}"]
    state = saved["metadata"].get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    box = state.get(views[0]["model_id"])
    if box is None:
        return [f"saved widget state lacks the bar's model {views[0]['model_id']} (has {sorted(state)})"]
    children = [state.get(ref.removeprefix("IPY_MODEL_"), {}) for ref in box["state"].get("children", [])]
    bars = [c["state"] for c in children if c.get("model_name") in ("FloatProgressModel", "IntProgressModel")]
    labels = [c["state"].get("value", "") for c in children if c.get("model_name") == "HTMLModel"]
    problems = []
    if not bars or bars[0].get("value") != TASKS or bars[0].get("max") != TASKS:
        problems.append(f"saved progress bar is not at {TASKS}/{TASKS}: {bars!r}")
    if not any(f"{TASKS}/{TASKS}" in label for label in labels) or any(
        re.search(rf"(?<!\d)0/{TASKS}", label) for label in labels
    ):
        problems.append(f"saved bar label does not say {TASKS}/{TASKS}: {labels!r}")
    return problems


def open_lab(browser: Any, lab: JupyterLab) -> tuple[Any, Any, list[str]]:
    """A new browser context (its own cache: JupyterLab loads the widgets' code anew, as in a
    fresh tab) with JupyterLab open and restored; returns it, its page and the page's errors."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.set_default_timeout(STEP_TIMEOUT_MS)
    page.goto(f"{lab.url}/lab?reset&token={lab.token}")
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.restored")
    page.evaluate("() => { window.jupyterapp.restored.then(() => { window.__restored = true; }); }")
    page.wait_for_function("() => window.__restored === true")
    return context, page, errors


def set_latency(page: Any, ms: int) -> None:
    """Chromium's network emulation: `ms` of latency on the page's requests from now on."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    conditions = {"offline": False, "latency": ms, "downloadThroughput": -1, "uploadThroughput": -1}
    cdp.send("Network.emulateNetworkConditions", conditions)


def one_run(browser: Any, lab: JupyterLab, index: int) -> Run:
    """Open a new notebook on a fresh parallax kernel, run both cells, look at the widget, save the
    notebook, shut the kernel down."""
    from playwright.sync_api import Error as PlaywrightError

    run = Run(index)
    started = time.monotonic()
    name = f"run-{index:02d}.ipynb"
    (lab.root / name).write_text(json.dumps(notebook()))
    # The kernel starts while the page loads; the notebook, once open, joins its session.
    lab.api("sessions", post={"path": name, "name": name, "type": "notebook", "kernel": {"name": "parallax"}})
    context, page, errors = open_lab(browser, lab)
    try:
        try:
            page.evaluate(f"() => {{ ({OPEN})({json.dumps(name)}); }}")
            kernel = page.wait_for_function(KERNEL_IDLE).json_value()
            assert "failed" not in kernel, f"opening {name} failed: {kernel['failed']}"
            assert kernel["kernel"] == "parallax", f"{name} runs kernel {kernel['kernel']!r}"
            set_latency(page, LATENCY_MS)
            page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
            run.outcome = page.wait_for_function(OUTCOME, arg=TASKS).json_value()
            set_latency(page, 0)
        except PlaywrightError as exc:
            run.problems.append(f"no conclusive output within {STEP_TIMEOUT_MS} ms: {exc.message.splitlines()[0]}")
        page.screenshot(path=str(ARTIFACTS / f"run-{index:02d}.png"), full_page=True)
        if run.outcome is not None and run.outcome["state"] != "done":
            run.problems.append(f"the widget cell shows {run.outcome['state']}")
        if run.outcome is not None and run.outcome["texts"][0]:
            run.problems.append("the first cell showed output: the bar was not the kernel's first widget")
        page.evaluate(f"() => {{ ({SAVE_AND_CLOSE})(); }}")
        closed = page.wait_for_function("() => window.__run.closed").json_value()
        assert "failed" not in closed, f"saving or shutting down {name} failed: {closed['failed']}"
        run.sessions = closed["sessions"]
        if len(run.sessions) != 1:
            run.problems.append(f"the page received messages of {len(run.sessions)} kernel sessions")
        if not run.problems:
            run.problems += saved_widget_problems(json.loads((lab.root / name).read_text()))
    finally:
        context.close()
    run.errors = errors
    deadline = time.monotonic() + 30
    while lab.api("kernels") and time.monotonic() < deadline:
        time.sleep(0.1)  # polls the shutdown the page asked for
    assert not lab.api("kernels"), f"kernels still running after run {index}: {lab.api('kernels')}"
    run.seconds = time.monotonic() - started
    return run


def test_progress_widget_renders_in_jupyterlab_every_time(
    browser: Any, cluster: Cluster, isolated_env: IsolatedEnv
) -> None:
    """10 runs of 10: the first widget of a fresh kernel renders and finishes, every time."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    lab = JupyterLab(isolated_env, cluster)
    runs: list[Run] = []
    try:
        kernelspecs = lab.api("kernelspecs")["kernelspecs"]
        assert "parallax" in kernelspecs, f"the server does not see the parallax kernelspec: {sorted(kernelspecs)}"
        for index in range(RUNS):
            runs.append(one_run(browser, lab, index))
    finally:
        lab.stop()
    timings = ", ".join(f"{r.seconds:.1f}" for r in runs)
    failed = [r for r in runs if r.problems]
    assert not failed, (
        f"{len(failed)} of {len(runs)} runs failed (seconds per run: {timings}):\n"
        + "\n".join(r.describe() for r in failed)
        + f"\n--- jupyter lab log (tail)\n{lab.log()}"
    )
