"""The Clusters page's REST API against the real `parallax dashboard` with real clusters: the token,
start 2 engines / scale to 3 / scale to 1 / stop with no process left, the live event stream and
its versions, the running task as the controller reports it, the task list, and every bad input
answered with a 4xx and `{"error": ...}`.

Fixture `dashboard` (conftest.py): the dashboard binary in an isolated PARALLAX_DIR, with
`--max-engines 8`; on teardown every cluster is stopped and no process of the environment may be
left.
"""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import requests

from kernel_env import is_alive, wait_gone

pytestmark = pytest.mark.timeout(180)


class Api:
    def __init__(self, server: Any) -> None:
        self.url = server.url
        self.headers = {"Authorization": f"token {server.token}"}

    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> requests.Response:
        return requests.request(
            method,
            self.url + path,
            headers=self.headers,
            json=body if raw is None else None,
            data=raw,
            timeout=90,
        )


@pytest.fixture
def api(dashboard: Any) -> Api:
    return Api(dashboard)


def cluster_row(api: Api, profile: str) -> dict[str, Any]:
    rows = api.call("GET", "/api/clusters").json()
    return next(r for r in rows if r["profile"] == profile)


def first_event(server: Any, want: Any, timeout: float = 10.0) -> dict[str, Any]:
    """The first `clusters` event from /api/events for which `want(snapshot)` holds."""
    deadline = time.monotonic() + timeout
    with requests.get(
        server.url + "/api/events", params={"token": server.token}, stream=True, timeout=timeout
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines(decode_unicode=True):
            if line.startswith("data: "):
                snapshot = json.loads(line[len("data: ") :])
                if want(snapshot):
                    return snapshot
            if time.monotonic() > deadline:
                break
    raise AssertionError("no matching event")


def test_every_request_needs_the_token(dashboard: Any) -> None:
    url = dashboard.url
    for path in ["/", "/api/clusters", "/app.js", "/api/events"]:
        r = requests.get(url + path, timeout=10)
        assert r.status_code == 403, path
        assert "token" in r.json()["error"]
    assert requests.get(url + "/api/clusters", params={"token": "wrong"}, timeout=10).status_code == 403
    assert (
        requests.get(url + "/api/clusters", headers={"Authorization": "token wrong"}, timeout=10).status_code == 403
    )
    assert (
        requests.get(url + "/api/clusters", headers={"Authorization": f"token {dashboard.token}"}, timeout=10).json()
        == []
    )
    # Loading the page with ?token= sets a cookie that is enough from then on.
    session = requests.Session()
    page = session.get(url + "/", params={"token": dashboard.token}, timeout=10)
    assert page.status_code == 200
    assert "Parallax clusters" in page.text
    assert session.get(url + "/api/clusters", timeout=10).status_code == 200
    assert session.get(url + "/app.js", timeout=10).headers["content-type"].startswith("text/javascript")


def test_start_2_scale_to_3_then_1_then_stop(dashboard: Any, api: Api) -> None:
    listed = api.call("GET", "/api/clusters")
    first_version = int(listed.headers["x-parallax-version"])
    server = listed.headers["x-parallax-server"]
    started = time.monotonic()
    r = api.call("POST", "/api/clusters", {"profile": "t", "n": 2})
    assert r.status_code == 201, r.text
    assert r.json()["engines"] == 2
    start_s = time.monotonic() - started
    # The answer comes once the event stream has the new state, under a newer version.
    version = r.json()["version"]
    assert version > first_version
    snapshot = first_event(dashboard, lambda s: True)
    assert (snapshot["server"], snapshot["version"]) == (server, version), snapshot
    (t,) = [c for c in snapshot["clusters"] if c["profile"] == "t"]
    assert (t["state"], t["engines"]) == ("running", 2), t
    row = cluster_row(api, "t")
    assert (row["state"], row["engines"], row["n"]) == ("running", 2, 2)

    engines = api.call("GET", "/api/clusters/t/engines").json()
    assert [e["state"] for e in engines] == ["idle", "idle"]
    assert set(engines[0]) >= {"id", "host", "pid", "kernel", "state", "current_task", "tasks_done"}
    pids = {e["pid"] for e in engines} | {e["kernel_pid"] for e in engines}

    started = time.monotonic()
    r = api.call("PATCH", "/api/clusters/t", {"n": 3})
    assert r.status_code == 200, r.text
    up_s = time.monotonic() - started
    engines = api.call("GET", "/api/clusters/t/engines").json()
    assert len(engines) == 3 and all(e["state"] == "idle" for e in engines), engines
    pids |= {e["pid"] for e in engines} | {e["kernel_pid"] for e in engines}
    snapshot = first_event(
        dashboard, lambda s: any(c["profile"] == "t" and c["engines"] == 3 for c in s["clusters"])
    )
    (t,) = [c for c in snapshot["clusters"] if c["profile"] == "t"]
    assert len(t["engine_list"]) == 3

    started = time.monotonic()
    r = api.call("PATCH", "/api/clusters/t", {"n": 1})
    assert r.status_code == 200, r.text
    down_s = time.monotonic() - started
    engines = api.call("GET", "/api/clusters/t/engines").json()
    assert len(engines) == 1, engines
    kept = {engines[0]["pid"], engines[0]["kernel_pid"]}
    assert not wait_gone(pids - kept, 10), "scaled-down engines left running"
    assert cluster_row(api, "t")["engines"] == 1

    tasks = api.call("GET", "/api/clusters/t/tasks")
    assert tasks.status_code == 200 and isinstance(tasks.json(), list)
    assert api.call("GET", "/api/clusters/t/tasks?limit=5").status_code == 200

    r = api.call("POST", "/api/clusters/t/stop")
    assert r.status_code == 200, r.text
    stop_version = r.json()["version"]
    snapshot = first_event(dashboard, lambda s: True)
    assert snapshot["version"] == stop_version, snapshot
    (t,) = [c for c in snapshot["clusters"] if c["profile"] == "t"]
    assert (t["state"], t["engine_list"]) == ("stopped", []), t
    assert cluster_row(api, "t")["state"] == "stopped"
    assert not wait_gone(pids, 10)
    assert not any(is_alive(p) for p in pids)
    print(f"\nstart 2: {start_s:.2f} s, scale 2→3: {up_s:.2f} s, scale 3→1: {down_s:.2f} s")


def test_the_running_task_and_its_start_come_from_the_controller(dashboard: Any, api: Api) -> None:
    """Regression: "Current task" stayed blank for work sent by the Python client (4-6 s tasks):
    the page read `started` from tasks.db, which the controller writes only with the task's
    outcome. The engine row now names the task and its start as the controller reports them."""
    import parallax

    r = api.call("POST", "/api/clusters", {"profile": "cur", "n": 1})
    assert r.status_code == 201, r.text
    rc = parallax.Client(profile="cur")
    try:
        rc.wait_for_engines(1, timeout=30)
        before = datetime.now(timezone.utc)
        ar = rc.load_balanced_view().apply_async(time.sleep, 6)
        (msg_id,) = ar.msg_ids

        def runs_it(snapshot: dict[str, Any]) -> bool:
            rows = [c for c in snapshot["clusters"] if c["profile"] == "cur"]
            return bool(rows and rows[0]["engine_list"] and rows[0]["engine_list"][0]["current_task"])

        # The live view shows it while it runs...
        snapshot = first_event(dashboard, runs_it, timeout=10)
        (cur,) = [c for c in snapshot["clusters"] if c["profile"] == "cur"]
        live = cur["engine_list"][0]
        assert live["state"] == "busy", live
        assert live["current_task"]["msg_id"] == msg_id, live
        # ...and so does the REST API, asking the controller afresh.
        engines = api.call("GET", "/api/clusters/cur/engines").json()
        task = engines[0]["current_task"]
        assert task["msg_id"] == msg_id and task["msg_type"] == "apply_request", task
        assert task["code"] == "", "an apply's call is pickled: no code to show"
        started = datetime.fromisoformat(task["started"])
        # The controller's clock and ours are one machine's.
        assert before - timedelta(seconds=1) <= started <= datetime.now(timezone.utc), (before, task)
        assert not ar.ready()
        # tasks.db has no start for it yet: the start shown is not read from there.
        db = sqlite3.connect(f"file:{dashboard.parallax_dir / 'profile_cur' / 'tasks.db'}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT started FROM tasks WHERE msg_id = ?", (msg_id,)).fetchone()
        finally:
            db.close()
        assert row is None or row[0] is None, row

        ar.get(timeout=30)
        # The controller answered the client only after it had the reply: the engine is idle.
        engines = api.call("GET", "/api/clusters/cur/engines").json()
        assert engines[0]["current_task"] is None, engines
        assert engines[0]["tasks_done"] == 1, engines
    finally:
        rc.close()
    assert api.call("POST", "/api/clusters/cur/stop").status_code == 200


def _error(r: requests.Response, status: int) -> str:
    assert r.status_code == status, f"{r.status_code} {r.text}"
    body = r.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    return body["error"]


def test_bad_input_is_a_4xx_with_an_error_message(dashboard: Any, api: Api) -> None:
    # Unknown profile.
    for method, path, body in [
        ("POST", "/api/clusters/nope/start", {"n": 1}),
        ("POST", "/api/clusters/nope/stop", None),
        ("PATCH", "/api/clusters/nope", {"n": 1}),
        ("GET", "/api/clusters/nope/engines", None),
        ("GET", "/api/clusters/nope/tasks", None),
    ]:
        assert "unknown profile" in _error(api.call(method, path, body), 404)
    # Bad engine counts and bodies when creating.
    for n in [0, -1, 9, "two", 1.5, None]:
        _error(api.call("POST", "/api/clusters", {"profile": "b", "n": n}), 400)
    _error(api.call("POST", "/api/clusters", {"profile": "b"}), 400)
    _error(api.call("POST", "/api/clusters", {"n": 1}), 400)
    _error(api.call("POST", "/api/clusters", {"profile": "bad name", "n": 1}), 400)
    assert "malformed JSON" in _error(api.call("POST", "/api/clusters", raw=b'{"profile": "b", "n": '), 400)
    _error(api.call("POST", "/api/clusters", raw=b"[1, 2]"), 400)
    assert _error(api.call("GET", "/api/clusters/x/tasks?limit=0"), 404)
    # Nothing was created or started by any of that.
    assert api.call("GET", "/api/clusters").json() == []

    # Wrong state: a running cluster cannot be started again; a stopped one cannot be stopped or
    # scaled.
    assert api.call("POST", "/api/clusters", {"profile": "b", "n": 1}).status_code == 201
    assert "already running" in _error(api.call("POST", "/api/clusters/b/start", {"n": 1}), 409)
    assert "already running" in _error(api.call("POST", "/api/clusters", {"profile": "b", "n": 1}), 409)
    _error(api.call("PATCH", "/api/clusters/b", {"n": 0}), 400)
    _error(api.call("PATCH", "/api/clusters/b", {"n": 9}), 400)
    _error(api.call("PATCH", "/api/clusters/b", raw=b"{oops"), 400)
    _error(api.call("GET", "/api/clusters/b/tasks?limit=zero"), 400)
    assert cluster_row(api, "b")["engines"] == 1
    assert api.call("POST", "/api/clusters/b/stop").status_code == 200
    assert "not running" in _error(api.call("POST", "/api/clusters/b/stop"), 409)
    assert "not running" in _error(api.call("PATCH", "/api/clusters/b", {"n": 2}), 409)
    _error(api.call("POST", "/api/clusters/b/start", {"n": 0}), 400)
    assert cluster_row(api, "b")["state"] == "stopped"
