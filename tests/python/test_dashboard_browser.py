"""The Clusters page in a real browser (headless Debian chromium driven by Playwright): set 2
engines, Start, see both idle, run work through the controller and see the task counts rise, Scale
to 3 and see the third engine, Stop and see the cluster stopped. Once on `parallax dashboard`
itself and once through the Jupyter server extension at `/parallax/` (a real `jupyter server`
from this environment, with its own token). A screenshot of every step is kept under
`tests/artifacts/dashboard/`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from browser_env import chromium, opened_page
from kernel_env import REPO

pytestmark = pytest.mark.timeout(240)

ARTIFACTS = REPO / "tests" / "artifacts" / "dashboard"
STEP_TIMEOUT_MS = 60_000


@pytest.fixture
def browser() -> Iterator[Any]:
    # A start takes seconds on a loaded machine: every `expect` waits as long as a step may.
    with chromium(expect_timeout_ms=STEP_TIMEOUT_MS) as browser:
        yield browser


def run_work(
    parallax_dir: Path,
    profile: str,
    engines: list[int],
    per_engine: int = 10,
    code: str = "time.sleep(0.02)",
    while_running: Any = None,
) -> None:
    """`per_engine` execute requests on each engine through the controller's client protocol (a
    pyzmq DEALER with jupyter_client's Session); calls `while_running()` once they are sent, then
    waits for every reply."""
    import zmq
    from jupyter_client.session import Session

    info = json.loads((parallax_dir / f"profile_{profile}" / "security" / "controller-client.json").read_text())
    session = Session(key=info["key"].encode(), signature_scheme="hmac-sha256", username="test")
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(info["url"])
    try:
        pending = set()
        for i in range(per_engine):
            for engine in engines:
                content = {
                    "code": f"import time; {code}; {i}",
                    "silent": False,
                    "store_history": False,
                    "user_expressions": {},
                    "allow_stdin": False,
                    "stop_on_error": False,
                }
                msg = session.send(sock, "execute_request", content, metadata={"engine": engine})
                pending.add(msg["header"]["msg_id"])
        if while_running is not None:
            while_running()
        deadline = time.monotonic() + 60
        while pending:
            assert sock.poll(max(0.0, deadline - time.monotonic()) * 1000), f"no reply for {len(pending)} tasks"
            _, msg = session.recv(sock, mode=0)
            if msg["msg_type"] == "execute_reply":
                assert msg["content"]["status"] == "ok", msg["content"]
                pending.discard(msg["parent_header"].get("msg_id"))
    finally:
        sock.close()


def walk(browser: Any, page_url: str, parallax_dir: Path, label: str) -> None:
    """The walk through the page; `page_url` opens it authenticated."""
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    profile = "web"
    (parallax_dir / f"profile_{profile}").mkdir(parents=True, exist_ok=True)
    with opened_page(browser, page_url, STEP_TIMEOUT_MS) as (page, errors):
        expect(page.get_by_role("heading", name="Parallax clusters")).to_be_visible()
        row = page.locator(f'tr[data-profile="{profile}"]')
        expect(row.locator(".status")).to_have_text("stopped")
        page.screenshot(path=str(ARTIFACTS / f"{label}-1-opened.png"), full_page=True)

        page.get_by_label(f"Engines wanted for {profile}").fill("2")
        page.get_by_role("button", name=f"Start {profile}").click()
        section = page.locator(f'section[data-profile="{profile}"]')
        idle = section.locator("td.state-idle")
        expect(idle).to_have_count(2)
        expect(row.locator(".status")).to_have_text("running")
        expect(row.locator(".running")).to_have_text("2")
        expect(page.locator("#message")).to_contain_text("started: 2 engines")
        expect(section.locator(".snippet")).to_have_text(f'import parallax as ipp\nrc = ipp.Client(profile="{profile}")')
        page.screenshot(path=str(ARTIFACTS / f"{label}-2-started.png"), full_page=True)

        ids = [int(i) for i in section.locator("tr[data-engine]").evaluate_all("rs => rs.map(r => r.dataset.engine)")]
        run_work(parallax_dir, profile, ids, per_engine=10)
        expect(section.locator("td.done").first).to_have_text("10")
        expect(section.locator("td.done").last).to_have_text("10")
        page.wait_for_timeout(1200)  # one more throughput sample for the chart
        page.screenshot(path=str(ARTIFACTS / f"{label}-3-tasks.png"), full_page=True)

        def shows_the_running_task() -> None:
            expect(section.locator("td.task").first).to_contain_text("time.sleep(2)")
            expect(section.locator("td.state-busy")).to_have_count(1)
            page.screenshot(path=str(ARTIFACTS / f"{label}-3b-running.png"), full_page=True)

        run_work(
            parallax_dir, profile, ids[:1], per_engine=1, code="time.sleep(2)", while_running=shows_the_running_task
        )
        expect(section.locator("td.state-busy")).to_have_count(0)

        page.get_by_label(f"Engines wanted for {profile}").fill("3")
        page.get_by_role("button", name=f"Scale {profile}").click()
        expect(idle).to_have_count(3)
        expect(row.locator(".running")).to_have_text("3")
        page.screenshot(path=str(ARTIFACTS / f"{label}-4-scaled.png"), full_page=True)

        page.get_by_role("button", name=f"Stop {profile}").click()
        expect(row.locator(".status")).to_have_text("stopped")
        expect(section).to_have_count(0)
        expect(page.get_by_role("button", name=f"Start {profile}")).to_be_enabled()
        page.screenshot(path=str(ARTIFACTS / f"{label}-5-stopped.png"), full_page=True)

        # A refused request shows its message on the page.
        page.get_by_label("Profile name").fill("bad name!")
        page.get_by_label("Engines", exact=True).fill("1")
        page.locator("#new-profile").evaluate("e => e.removeAttribute('pattern')")
        page.get_by_role("button", name="Create and start").click()
        expect(page.locator("#message")).to_contain_text("invalid profile name")
        page.screenshot(path=str(ARTIFACTS / f"{label}-6-error.png"), full_page=True)
        assert not errors, errors


def test_the_page_starts_scales_and_stops_a_cluster(browser: Any, dashboard: Any) -> None:
    walk(browser, f"{dashboard.url}/?token={dashboard.token}", dashboard.parallax_dir, "dashboard")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_page_inside_jupyter_server(browser: Any, isolated_env: Any) -> None:
    pytest.importorskip("parallax.jupyter")
    from conftest import DashboardServer, processes_in

    # Only to check the binary has the dashboard (skips otherwise) and for its environment.
    probe = DashboardServer(isolated_env)
    probe.stop()
    env = {**probe.env, "PARALLAX_BIN": probe.binary}
    env.pop("PARALLAX_DASHBOARD_TOKEN", None)
    config_dir = Path(env["JUPYTER_CONFIG_DIR"])
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "jupyter_server_config.json").write_text(
        json.dumps({"ServerApp": {"jpserver_extensions": {"parallax.jupyter": True}}})
    )
    token = "jt" + os.urandom(12).hex()
    port = free_port()
    root = isolated_env.root / "notebooks"
    root.mkdir()
    log = open(isolated_env.root / "jupyter.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter_server",
            "--no-browser",
            "--allow-root",
            "--ip=127.0.0.1",
            f"--port={port}",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{base}/api/status", params={"token": token}, timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, (
                isolated_env.root / "jupyter.log"
            ).read_text()
            time.sleep(0.2)
        # Jupyter's authentication guards the mount.
        anonymous = requests.get(f"{base}/parallax/api/clusters", timeout=10, allow_redirects=False)
        assert anonymous.status_code in (302, 403), anonymous.text
        assert "/login" in anonymous.headers.get("location", "/login")
        assert requests.post(f"{base}/parallax/api/clusters", json={"profile": "x", "n": 1}, timeout=10).status_code == 403
        r = requests.get(f"{base}/parallax/api/clusters", params={"token": token}, timeout=30)
        assert r.status_code == 200 and r.json() == [], r.text
        walk(browser, f"{base}/parallax/?token={token}", Path(env["PARALLAX_DIR"]), "jupyter")
    finally:
        subprocess.run([probe.binary, "cluster", "stop", "--all"], env=env, capture_output=True, timeout=60)
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    from kernel_env import describe, wait_gone

    left = wait_gone(processes_in(env["PARALLAX_DIR"]), 10)
    assert not left, f"processes left behind: {describe(left)}"


# Records, in the page, every `clusters` event of its own event stream and every state the
# profile's row and section go through, each with the time it happened (performance.now(), ms).
RECORDER = """profile => {
  const rec = { events: [], dom: [] };
  window.__recorded = rec;
  const source = new EventSource("api/events" + location.search);
  window.__recorderSource = source;
  source.addEventListener("clusters", (e) => {
    const c = JSON.parse(e.data).clusters.find((c) => c.profile === profile);
    rec.events.push([performance.now(), c ? c.state : null, c ? c.engines : null]);
  });
  const look = () => {
    const row = document.querySelector(`tr[data-profile="${profile}"]`);
    const button = (a) => row && row.querySelector(`button[data-action="${a}"]`);
    const seen = [
      row ? row.querySelector(".status").textContent : null,
      document.querySelector(`section[data-profile="${profile}"]`) !== null,
      button("stop") ? !button("stop").disabled : null,
      button("scale") ? !button("scale").disabled : null,
    ];
    const last = rec.dom.length ? rec.dom[rec.dom.length - 1][1] : null;
    if (JSON.stringify(last) !== JSON.stringify(seen)) rec.dom.push([performance.now(), seen]);
  };
  new MutationObserver(look).observe(document.body, { subtree: true, childList: true, characterData: true, attributes: true });
  look();
}"""

# How long the page and the event stream are watched after a Stop: the stale poll of the issue
# came about 2 s after it (a poll waiting the controller's 2 s timeout), so 5 s covers it twice.
WATCH_AFTER_STOP_MS = 5000


def test_a_stopped_cluster_never_shows_as_running_again(browser: Any, dashboard: Any) -> None:
    """Regression: a poll begun before a Stop and answered after it sent the cluster as running
    (0 engines) about 2 s after the Stop succeeded, and the page showed it running again, with
    Stop and Scale enabled and an empty cluster section (3 trials of 4, after a client had run
    tasks). Each trial runs a load-balanced map from the Python client, presses Stop, and
    watches every event of its own stream and every state of the row for 5 s."""
    import parallax
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    profile = "stale"
    (dashboard.parallax_dir / f"profile_{profile}").mkdir(parents=True)
    with opened_page(browser, f"{dashboard.url}/?token={dashboard.token}", STEP_TIMEOUT_MS) as (page, errors):
        row = page.locator(f'tr[data-profile="{profile}"]')
        for trial in range(3):
            page.get_by_label(f"Engines wanted for {profile}").fill("2")
            page.get_by_role("button", name=f"Start {profile}").click()
            expect(page.locator(f'section[data-profile="{profile}"] td.state-idle')).to_have_count(2)
            rc = parallax.Client(profile=profile)
            try:
                rc.wait_for_engines(2, timeout=30)
                assert sorted(rc.load_balanced_view().map_sync(abs, range(-200, 200))) == sorted(
                    abs(i) for i in range(-200, 200)
                )
                page.evaluate(RECORDER, profile)
                with page.expect_response(lambda r: r.url.endswith(f"/api/clusters/{profile}/stop")) as stop:
                    page.get_by_role("button", name=f"Stop {profile}").click()
                assert stop.value.ok, stop.value.text()
                stopped_at = page.evaluate("performance.now()")
                # Not a wait for something to happen: the window in which nothing may happen.
                page.wait_for_timeout(WATCH_AFTER_STOP_MS)
            finally:
                rc.close()
            page.screenshot(path=str(ARTIFACTS / f"stale-{trial}-after-stop.png"), full_page=True)
            recorded = page.evaluate("(() => { window.__recorderSource.close(); return window.__recorded; })()")
            events = recorded["events"]
            late = [e for e in events if e[0] > stopped_at and e[1] == "running"]
            assert not late, f"trial {trial}: events after the stop said running: {events}"
            first_stopped = next((e[0] for e in events if e[1] == "stopped"), None)
            assert first_stopped is not None, f"trial {trial}: no event said stopped: {events}"
            again = [e for e in events if e[0] > first_stopped and e[1] != "stopped"]
            assert not again, f"trial {trial}: not stopped after stopped: {events}"
            # What the page showed from the answer on: the state it was in then, and every later one.
            dom = recorded["dom"]
            shown = [d for d in dom if d[0] <= stopped_at][-1:] + [d for d in dom if d[0] > stopped_at]
            assert shown, dom
            for at, (status, section, stop_enabled, scale_enabled) in shown:
                assert status != "running" and not section and not stop_enabled and not scale_enabled, (
                    f"trial {trial}: {max(0, at - stopped_at):.0f} ms after the stop: {shown}"
                )
            expect(row.locator(".status")).to_have_text("stopped")
            page.evaluate("window.__recorded = null")
            if trial == 1:
                # Once with a freshly loaded page too.
                page.reload()
        assert not errors, errors


def test_the_page_says_what_it_shows(browser: Any, dashboard: Any) -> None:
    """Regressions from a new user's report: "started: 1 engines"; 'Engines running' beside
    'Engines' (the wanted count); "Tasks done" counting chunks without saying so; a chart with
    no time axis that said "up to 1.0" when idle; the new-cluster form left holding a running
    profile's name; banners that never cleared."""
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    profile = "default"
    with opened_page(browser, f"{dashboard.url}/?token={dashboard.token}", STEP_TIMEOUT_MS) as (page, errors):
        name = page.get_by_label("Profile name")
        expect(name).to_have_value("default")  # suggested while no profile has that name
        page.get_by_label("Engines", exact=True).fill("1")
        page.get_by_role("button", name="Create and start").click()
        message = page.locator("#message")
        expect(message).to_contain_text(f'Cluster "{profile}" started: 1 engine.')
        # Ready for another cluster, not holding the one just started.
        expect(name).to_have_value("")
        expect(page.get_by_label("Engines", exact=True)).to_have_value("2")

        headings = page.locator("#profiles thead th")
        expect(headings).to_have_text(["Profile", "Status", "Engines running / wanted", "Actions"])
        row = page.locator(f'tr[data-profile="{profile}"]')
        expect(row.locator(".running")).to_have_text("1")
        expect(page.get_by_label(f"Engines wanted for {profile}")).to_have_value("1")
        section = page.locator(f'section[data-profile="{profile}"]')
        expect(section.locator("thead th").last).to_have_text("Requests done")
        expect(section.locator(".note")).to_contain_text("one chunk of a load-balanced map")
        # Idle: no rate scale, and the caption says so over a stated time span.
        expect(section.locator(".chart-caption")).to_have_text("Requests finished per second, last 60 s: none.")
        page.screenshot(path=str(ARTIFACTS / "says-1-idle.png"), full_page=True)

        # A banner can be dismissed; an error banner replaced by the next success.
        page.get_by_role("button", name="Dismiss the message").click()
        expect(message).to_be_hidden()
        page.get_by_label(f"Engines wanted for {profile}").fill("0")
        page.get_by_role("button", name=f"Scale {profile}").click()
        expect(message).to_contain_text(f'Could not scale "{profile}"')
        page.get_by_role("button", name=f"Stop {profile}").click()
        expect(message).to_contain_text(f'Cluster "{profile}" stopped.')
        expect(message).not_to_contain_text("Could not")
        expect(message).to_have_class("message info")
        expect(row.locator(".status")).to_have_text("stopped")
        expect(section).to_have_count(0)
        page.screenshot(path=str(ARTIFACTS / "says-2-stopped.png"), full_page=True)
        assert not errors, errors
