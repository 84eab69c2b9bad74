//! The live view: one task polls every profile every 500 ms — its cluster's state from
//! `cluster.json`, and for a running cluster its engines, with the request each one runs, from
//! the controller — and publishes a [`Snapshot`] on a `watch` channel when it changed.
//! `GET /api/events` streams each new snapshot as a server-sent event `clusters`:
//!
//! ```text
//! {"server": <this run's id>, "version": <n>,
//!  "clusters": [{"profile", "state", "n", "engines": <live count>, "tasks_done": <requests done>,
//!                "engine_list": [{"id", "host", "pid", "kernel", "kernel_pid", "state",
//!                                 "current_task": null | {"msg_id", "msg_type", "started", "code"},
//!                                 "tasks_done", "queue"}]}]}
//! ```
//!
//! # Versions: no poll shows a cluster as it was before a start, stop or scale
//!
//! A poll reads `cluster.json` and then asks the controller, which may take seconds (a
//! controller that is shutting down answers nothing until the client's timeout). A poll begun
//! before a Stop could so end after it and publish the cluster as running. Two rules prevent it:
//!
//! - when a start, stop or scale ends, its handler (still holding the profile busy) observes the
//!   profile afresh and publishes that row under the next `version`; a poll that began under an
//!   older version is dropped rather than published, and the poller polls again at once;
//! - a poll reads `cluster.json` again after asking the controller, and shows the cluster as
//!   that second read says (a cluster stopped from the command line meanwhile is not shown
//!   running).
//!
//! The operation's reply carries the version too, and `GET /api/clusters` sends the version it
//! began under (header `x-parallax-version`), so the page can ignore anything older than what
//! it has already shown. Versions count from 0 in each run of the server (`server` tells runs
//! apart).
//!
//! One controller connection per running cluster is kept between polls and dropped when the
//! cluster stops or its controller changes.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use parallax_client::ControllerClient;
use parallax_launcher::ClusterStatus;
use parallax_wire::cluster::{EngineInfo, EngineState};
use parallax_wire::profile::Profile;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::tasks::summary;
use crate::App;

/// How often the clusters are polled.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// How long a poll waits for a controller to answer.
const CONTROLLER_TIMEOUT: Duration = Duration::from_secs(2);

/// What the event stream sends: every profile's row, and the version of the clusters' state.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Snapshot {
    /// This run of the server: versions of different runs do not compare.
    pub server: String,
    /// One more each time a start, stop or scale ends (see the module doc).
    pub version: u64,
    /// One row per profile, by name.
    pub clusters: Vec<Value>,
}

/// The latest snapshot, shared by the poller, the operations and the event streams.
pub(crate) struct Live {
    snapshots: watch::Sender<Snapshot>,
}

impl Live {
    fn new() -> Self {
        let first = Snapshot {
            server: uuid::Uuid::new_v4().simple().to_string(),
            version: 0,
            clusters: Vec::new(),
        };
        Live {
            snapshots: watch::Sender::new(first),
        }
    }

    /// This run's id (see [`Snapshot::server`]).
    pub fn server(&self) -> String {
        self.snapshots.borrow().server.clone()
    }

    /// The current version.
    pub fn version(&self) -> u64 {
        self.snapshots.borrow().version
    }

    /// The snapshots from now on, starting with the current one.
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.snapshots.subscribe()
    }

    /// To be called when a start, stop or scale of `profile` has ended (well or not), while the
    /// profile is still marked busy so that nothing else of ours changes it: observes the
    /// profile afresh and publishes its row under the next version, which every poll begun
    /// before is too old to overwrite. Returns that version.
    pub async fn changed(&self, profile: &Profile) -> u64 {
        // A connection of its own: the poller's may be in use by a poll of the old state.
        let row = observe(profile, &mut HashMap::new()).await;
        let mut version = 0;
        self.snapshots.send_modify(|snapshot| {
            snapshot.version += 1;
            version = snapshot.version;
            put_row(&mut snapshot.clusters, row);
        });
        version
    }

    /// Publishes what a poll begun under `version` saw, if that differs from what is shown.
    /// Returns false, publishing nothing, when an operation ended since the poll began: the
    /// poll may have seen the clusters as they were before it.
    fn publish_poll(&self, version: u64, clusters: Vec<Value>) -> bool {
        let mut current = true;
        self.snapshots.send_if_modified(|snapshot| {
            if snapshot.version != version {
                current = false;
                return false;
            }
            if snapshot.clusters == clusters {
                return false;
            }
            snapshot.clusters = clusters;
            true
        });
        current
    }
}

/// Replaces the row of the same profile in `rows` (sorted by profile), or inserts it in order.
fn put_row(rows: &mut Vec<Value>, row: Value) {
    let name = |row: &Value| row["profile"].as_str().unwrap_or_default().to_owned();
    let key = name(&row);
    match rows.binary_search_by(|r| name(r).cmp(&key)) {
        Ok(at) => rows[at] = row,
        Err(at) => rows.insert(at, row),
    }
}

/// The engine table rows the page shows: live engines (dead ones are gone from the cluster),
/// each with the request it runs as the controller reports it.
pub fn engine_rows(engines: &[EngineInfo]) -> Value {
    let rows: Vec<Value> = engines
        .iter()
        .filter(|e| e.state != EngineState::Dead)
        .map(|e| {
            let current = e.running.as_ref().map(|task| {
                json!({
                    "msg_id": task.msg_id,
                    "msg_type": task.msg_type,
                    "started": task.started,
                    "code": summary(&task.code),
                })
            });
            json!({
                "id": e.id,
                "host": e.host,
                "pid": e.pid,
                "kernel": e.kernel,
                "kernel_pid": e.kernel_pid,
                "state": e.state,
                "current_task": current,
                "tasks_done": e.tasks_done,
                "queue": e.queue,
            })
        })
        .collect();
    Value::Array(rows)
}

/// Starts the poller; its snapshots are published on the returned [`Live`] until `stopping`
/// turns true.
pub(crate) fn spawn_poller(root: PathBuf, mut stopping: watch::Receiver<bool>) -> Arc<Live> {
    let live = Arc::new(Live::new());
    let publisher = live.clone();
    tokio::spawn(async move {
        let mut clients: HashMap<String, (u32, ControllerClient)> = HashMap::new();
        loop {
            let version = publisher.version();
            let clusters = poll(&root, &mut clients).await;
            if *stopping.borrow() {
                return;
            }
            if !publisher.publish_poll(version, clusters) {
                // Outdated by an operation: look again now rather than in 500 ms.
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
                _ = stopping.changed() => return,
            }
        }
    });
    live
}

/// One row per profile, by name.
async fn poll(
    root: &std::path::Path,
    clients: &mut HashMap<String, (u32, ControllerClient)>,
) -> Vec<Value> {
    let mut rows = Vec::new();
    for profile in Profile::all_in(root) {
        rows.push(observe(&profile, clients).await);
    }
    // Connections to clusters that are no longer running go.
    clients.retain(|name, _| {
        rows.iter()
            .any(|row| row["profile"] == name.as_str() && row["state"] == "running")
    });
    rows
}

/// The row of one profile: its state, and for a running cluster its engines.
async fn observe(
    profile: &Profile,
    clients: &mut HashMap<String, (u32, ControllerClient)>,
) -> Value {
    let state = match parallax_launcher::state::status(profile) {
        ClusterStatus::Running(state) => state,
        other => return quiet_row(profile, &other),
    };
    let pid = state.controller_pid.unwrap_or_default();
    let engines = engines_of(profile, pid, clients).await;
    // Asking the controller may have taken seconds (one that is shutting down does not
    // answer): show the cluster as it is now, not as it was before the question.
    match parallax_launcher::state::status(profile) {
        ClusterStatus::Running(now) if now.supervisor_pid == state.supervisor_pid => {
            running_row(profile, now.n, &engines)
        }
        other => quiet_row(profile, &other),
    }
}

fn running_row(profile: &Profile, n: usize, engines: &[EngineInfo]) -> Value {
    let live: Vec<&EngineInfo> = engines
        .iter()
        .filter(|e| e.state != EngineState::Dead)
        .collect();
    let tasks_done: u64 = engines.iter().map(|e| e.tasks_done).sum();
    json!({
        "profile": profile.name(),
        "state": "running",
        "n": n,
        "engines": live.len(),
        "tasks_done": tasks_done,
        "engine_list": engine_rows(engines),
    })
}

/// The row of a profile whose engines this poll did not ask for: stopped, stale, or a cluster
/// that started while the poll asked the one before it (its engines come with the next poll).
fn quiet_row(profile: &Profile, status: &ClusterStatus) -> Value {
    let (state, n) = match status {
        ClusterStatus::Running(running) => return running_row(profile, running.n, &[]),
        ClusterStatus::Stale(stale) => ("stale", stale.n),
        ClusterStatus::Stopped => ("stopped", 0),
    };
    json!({
        "profile": profile.name(), "state": state, "n": n, "engines": 0,
        "tasks_done": 0, "engine_list": [],
    })
}

/// The engines of a running cluster, through a kept connection to its controller (`pid`).
async fn engines_of(
    profile: &Profile,
    pid: u32,
    clients: &mut HashMap<String, (u32, ControllerClient)>,
) -> Vec<EngineInfo> {
    let name = profile.name().to_owned();
    if clients.get(&name).is_some_and(|(p, _)| *p != pid) {
        clients.remove(&name);
    }
    if !clients.contains_key(&name) {
        match ControllerClient::connect(profile, CONTROLLER_TIMEOUT).await {
            Ok(client) => {
                clients.insert(name.clone(), (pid, client));
            }
            // Not up yet (starting) or going away (stopping): no engines this time.
            Err(_) => return Vec::new(),
        }
    }
    let Some((_, client)) = clients.get(&name) else {
        return Vec::new();
    };
    match client.engines().await {
        Ok(engines) => engines,
        Err(error) => {
            tracing::debug!(profile = %name, %error, "cannot get engines");
            clients.remove(&name);
            Vec::new()
        }
    }
}

/// `GET /api/events`: the current snapshot, then every new one, until the server stops.
pub(crate) async fn stream(
    State(app): State<Arc<App>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let snapshots = app.live.subscribe();
    let stopping = app.stopping.clone();
    let events = futures::stream::unfold(
        (snapshots, stopping, true),
        |(mut snapshots, mut stopping, first)| async move {
            if !first {
                tokio::select! {
                    changed = snapshots.changed() => if changed.is_err() { return None },
                    _ = stopping.changed() => return None,
                }
            }
            if *stopping.borrow() {
                return None;
            }
            let data = serde_json::to_string(&*snapshots.borrow_and_update())
                .unwrap_or_else(|_| "{}".to_owned());
            let event = Event::default().event("clusters").data(data);
            Some((Ok(event), (snapshots, stopping, false)))
        },
    );
    Sse::new(events).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(profile: &str, state: &str) -> Value {
        json!({"profile": profile, "state": state})
    }

    #[test]
    fn rows_are_replaced_or_inserted_in_order() {
        let mut rows = vec![row("a", "stopped"), row("c", "stopped")];
        put_row(&mut rows, row("c", "running"));
        put_row(&mut rows, row("b", "running"));
        put_row(&mut rows, row("0", "stale"));
        assert_eq!(
            rows,
            [
                row("0", "stale"),
                row("a", "stopped"),
                row("b", "running"),
                row("c", "running")
            ]
        );
    }

    /// Regression: a poll that began before a Stop and ended after it published the cluster as
    /// running, about 2 s after the Stop (its controller, shutting down, never answered).
    #[tokio::test]
    async fn a_poll_begun_before_a_change_is_not_published_after_it() {
        let root = tempfile::tempdir().expect("tempdir");
        let profile = Profile::in_dir(root.path(), "p").expect("profile");
        std::fs::create_dir_all(profile.dir()).expect("mkdir");
        let live = Live::new();
        let mut seen = live.subscribe();
        let first = live.version();
        assert!(live.publish_poll(first, vec![row("p", "running")]));
        assert!(seen.has_changed().expect("open"));
        seen.borrow_and_update();

        // The poll begins, then the Stop ends: its handler publishes the stopped row.
        let began = live.version();
        let version = live.changed(&profile).await;
        assert_eq!(version, began + 1);
        let shown = seen.borrow_and_update().clone();
        assert_eq!(shown.version, version);
        assert_eq!(shown.clusters[0]["state"], "stopped");

        // The poll ends with what it read before the Stop: dropped, nothing sent.
        assert!(!live.publish_poll(began, vec![row("p", "running")]));
        assert!(!seen.has_changed().expect("open"));
        // The next poll, begun after the Stop, is published (when it differs).
        assert!(live.publish_poll(version, vec![row("p", "stopped"), row("q", "stopped")]));
        assert_eq!(seen.borrow_and_update().clusters.len(), 2);
        assert!(live.publish_poll(version, vec![row("p", "stopped"), row("q", "stopped")]));
        assert!(
            !seen.has_changed().expect("open"),
            "nothing new: nothing sent"
        );
    }

    #[test]
    fn engine_rows_take_the_running_task_from_the_controller() {
        let mut info: EngineInfo = serde_json::from_value(json!({
            "id": 0, "uuid": "u", "host": "h", "pid": 1, "kernel": "python3", "kernel_pid": 2,
            "state": "busy", "registered": "r", "last_heartbeat": "b", "tasks_done": 3, "queue": 1,
            "running": {"msg_id": "m", "msg_type": "execute_request",
                        "started": "2025-01-01T00:00:00.000000Z", "code": "\nimport time\ntime.sleep(5)"}
        }))
        .expect("an engine row");
        let rows = engine_rows(std::slice::from_ref(&info));
        assert_eq!(
            rows[0]["current_task"],
            json!({"msg_id": "m", "msg_type": "execute_request",
                   "started": "2025-01-01T00:00:00.000000Z", "code": "import time…"})
        );
        info.running = None;
        info.state = EngineState::Idle;
        assert_eq!(engine_rows(&[info.clone()])[0]["current_task"], Value::Null);
        info.state = EngineState::Dead;
        assert_eq!(engine_rows(&[info]), json!([]));
    }
}
