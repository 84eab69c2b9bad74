//! The live view: one task polls every profile every 500 ms — its cluster's state from
//! `cluster.json`, and for a running cluster its engines from the controller and the tasks they
//! run from `tasks.db` — and publishes a snapshot on a `watch` channel when it changed.
//! `GET /api/events` streams each new snapshot as a server-sent event `clusters`:
//!
//! ```text
//! {"clusters": [{"profile", "state", "n", "engines": <live count>, "tasks_done": <total>,
//!                "engine_list": [{"id", "host", "pid", "kernel", "kernel_pid", "state",
//!                                 "current_task", "tasks_done", "queue"}]}]}
//! ```
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
use parallax_wire::cluster::{EngineId, EngineInfo, EngineState};
use parallax_wire::profile::Profile;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::tasks::{self, Running};
use crate::App;

/// How often the clusters are polled.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// The engine table rows the page shows: live engines (dead ones are gone from the cluster).
pub fn engine_rows(engines: &[EngineInfo], running: &HashMap<EngineId, Running>) -> Value {
    let rows: Vec<Value> = engines
        .iter()
        .filter(|e| e.state != EngineState::Dead)
        .map(|e| {
            json!({
                "id": e.id,
                "host": e.host,
                "pid": e.pid,
                "kernel": e.kernel,
                "kernel_pid": e.kernel_pid,
                "state": e.state,
                "current_task": running.get(&e.id),
                "tasks_done": e.tasks_done,
                "queue": e.queue,
            })
        })
        .collect();
    Value::Array(rows)
}

/// Starts the poller; its snapshots arrive on the returned channel until `stopping` turns true.
pub(crate) fn spawn_poller(
    root: PathBuf,
    mut stopping: watch::Receiver<bool>,
) -> watch::Receiver<Value> {
    let (tx, rx) = watch::channel(json!({ "clusters": [] }));
    tokio::spawn(async move {
        let mut clients: HashMap<String, (u32, ControllerClient)> = HashMap::new();
        loop {
            let snapshot = poll(&root, &mut clients).await;
            tx.send_if_modified(|old| {
                if *old == snapshot {
                    false
                } else {
                    *old = snapshot;
                    true
                }
            });
            tokio::select! {
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
                _ = stopping.changed() => return,
            }
        }
    });
    rx
}

/// One snapshot of every profile.
async fn poll(
    root: &std::path::Path,
    clients: &mut HashMap<String, (u32, ControllerClient)>,
) -> Value {
    let mut clusters = Vec::new();
    let mut seen = Vec::new();
    for profile in Profile::all_in(root) {
        let name = profile.name().to_owned();
        let row = match parallax_launcher::state::status(&profile) {
            ClusterStatus::Running(state) => {
                seen.push(name.clone());
                let pid = state.controller_pid.unwrap_or_default();
                let engines = engines_of(&profile, pid, clients).await;
                let tasks_done: u64 = engines.iter().map(|e| e.tasks_done).sum();
                let live = engines
                    .iter()
                    .filter(|e| e.state != EngineState::Dead)
                    .count();
                let running = if live > 0 {
                    tasks::running(&profile)
                } else {
                    HashMap::new()
                };
                json!({
                    "profile": name,
                    "state": "running",
                    "n": state.n,
                    "engines": live,
                    "tasks_done": tasks_done,
                    "engine_list": engine_rows(&engines, &running),
                })
            }
            ClusterStatus::Stale(state) => json!({
                "profile": name, "state": "stale", "n": state.n, "engines": 0,
                "tasks_done": 0, "engine_list": [],
            }),
            ClusterStatus::Stopped => json!({
                "profile": name, "state": "stopped", "n": 0, "engines": 0,
                "tasks_done": 0, "engine_list": [],
            }),
        };
        clusters.push(row);
    }
    clients.retain(|name, _| seen.contains(name));
    json!({ "clusters": clusters })
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
        match ControllerClient::connect(profile, Duration::from_secs(2)).await {
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
    let snapshots = app.snapshots.clone();
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
            let data = snapshots.borrow_and_update().to_string();
            let event = Event::default().event("clusters").data(data);
            Some((Ok(event), (snapshots, stopping, false)))
        },
    );
    Sse::new(events).keep_alive(KeepAlive::default())
}
