//! The hub: one task that owns the engine table, the requests in flight and the connected
//! clients, and selects over the client inbox, the engine inbox, a heartbeat check and shutdown.
//!
//! Handlers never block: they update the state, put messages in the socket tasks' outboxes and
//! hand database work to the database thread. Queries of the database (`task_request`) are
//! answered by a small task that waits for the database thread's answer.
//!
//! - [`clients`]: requests from clients, and routing `execute_request` to its engine.
//! - [`apply`]: `apply_request`s, direct or load-balanced, to the engine support in the
//!   engines' kernels; aborts, timeouts, retries.
//! - [`engines`]: registration, heartbeats, kernel deaths, and relaying an engine's outputs and
//!   replies to the client that sent the request.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parallax_net::{Inbox, LinkStats, Outbox, PackPeers};
use parallax_wire::cluster::{EngineDied, EngineId, EngineState, ENGINE_ERROR, HEARTBEAT_TIMEOUT};
use parallax_wire::replies::{error_content, reply_type};
use parallax_wire::{now_iso8601, to_json_bytes, Message, Session};
use serde::Serialize;
use serde_json::{json, Value};

use crate::db::{Change, Command, TaskDb};
use crate::deps::{Outcome, Waiting};
use crate::registry::Registry;
use crate::scheduler::{Constraints, Scheduler};

mod apply;
mod clients;
mod engines;

/// How often engines are checked for missed heartbeats.
const HEARTBEAT_CHECK: Duration = Duration::from_millis(250);
/// How long the controller waits for engines to answer `shutdown_request`.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How often, at most, an engine's row is rewritten just because it sent a heartbeat.
const HEARTBEAT_WRITE_EVERY: Duration = Duration::from_secs(1);

/// The two ROUTER links, as the socket tasks hand them over.
#[derive(Debug)]
pub(crate) struct Links {
    pub session: Session,
    pub clients_out: Outbox,
    pub clients_in: Inbox,
    pub client_stats: Arc<LinkStats>,
    /// Clients that take packs (they said so in `connect_request`).
    pub client_packs: PackPeers,
    pub engines_out: Outbox,
    pub engines_in: Inbox,
    pub engine_stats: Arc<LinkStats>,
    /// Engine supports that take packs (they said so in `attach_request`).
    pub engine_packs: PackPeers,
}

/// How much of a stream a task has kept so far.
#[derive(Debug, Default)]
struct Captured {
    bytes: usize,
    truncated: bool,
}

/// A request sent to an engine and not answered yet.
#[derive(Debug)]
struct Task {
    /// Submission order, so that failures are reported in it.
    seq: u64,
    /// The client's request (without buffers): replies made here are built from it.
    request: Message,
    engine: EngineId,
    stdout: Captured,
    stderr: Captured,
    /// An error has been recorded for it.
    failed: bool,
    /// A load-balanced task: how it may be placed again if its engine dies (its request keeps
    /// its buffers).
    balanced: Option<Constraints>,
    /// Asked back from its engine (not started there yet) for an idle engine: an `aborted`
    /// answer puts it back in the queue instead of failing it.
    reclaiming: bool,
    /// Sent to the engine support in the kernel (not the engine process): it dies with the
    /// kernel, even when the engine restarts one.
    via_support: bool,
    /// When it was sent to its engine (see `clients::running_tasks`).
    sent: Instant,
}

/// The hub's state. See the module doc.
pub(crate) struct Hub {
    profile: String,
    session: Session,
    clients_out: Outbox,
    clients_in: Inbox,
    client_stats: Arc<LinkStats>,
    client_packs: PackPeers,
    engines_out: Outbox,
    engines_in: Inbox,
    engine_stats: Arc<LinkStats>,
    engine_packs: PackPeers,
    registry: Registry,
    scheduler: Scheduler,
    /// Outcomes of finished tasks, and load-balanced tasks waiting for their dependencies.
    waiting: Waiting,
    /// Engine support routes by engine uuid, as they attached (possibly before registering).
    attached: HashMap<String, Vec<Bytes>>,
    /// The largest apply result (sum of its buffers) kept in the task database, in bytes.
    result_limit: usize,
    /// How many engines may die under one task before it is failed rather than run again.
    max_task_deaths: u32,
    tasks: HashMap<String, Task>,
    next_seq: u64,
    /// Routes of the clients that sent `connect_request`: they get notifications.
    clients: Vec<Vec<Bytes>>,
    db: TaskDb,
    stopping: bool,
    /// A client asked the controller to shut down.
    shutdown_requested: bool,
}

/// What woke the hub up.
enum Event {
    Client(Message),
    Engine(Message),
    Check,
    /// The timeout of a load-balanced task (queued, or waiting for its dependencies) is due.
    Deadline,
    Shutdown,
}

/// The rules the hub applies to tasks.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Policy {
    /// The largest apply result (sum of its buffers) kept in the task database, in bytes.
    pub result_limit: usize,
    /// How many engines may die under one task before it is failed rather than run again.
    pub max_task_deaths: u32,
}

impl Hub {
    pub fn new(profile: String, links: Links, db: TaskDb, policy: Policy) -> Self {
        Hub {
            profile,
            session: links.session,
            clients_out: links.clients_out,
            clients_in: links.clients_in,
            client_stats: links.client_stats,
            client_packs: links.client_packs,
            engines_out: links.engines_out,
            engines_in: links.engines_in,
            engine_stats: links.engine_stats,
            engine_packs: links.engine_packs,
            registry: Registry::default(),
            scheduler: Scheduler::default(),
            waiting: Waiting::default(),
            attached: HashMap::new(),
            result_limit: policy.result_limit,
            max_task_deaths: policy.max_task_deaths.max(1),
            tasks: HashMap::new(),
            next_seq: 0,
            clients: Vec::new(),
            db,
            stopping: false,
            shutdown_requested: false,
        }
    }

    /// Serves until `shutdown` resolves, then stops the engines and returns the database for
    /// the caller to close.
    pub async fn run(mut self, shutdown: impl Future<Output = ()> + Send) -> TaskDb {
        tokio::pin!(shutdown);
        let mut check = tokio::time::interval(HEARTBEAT_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.shutdown_requested {
            let deadline = self.next_deadline();
            let event = tokio::select! {
                () = &mut shutdown => Event::Shutdown,
                Some(message) = self.engines_in.recv() => Event::Engine(message),
                Some(message) = self.clients_in.recv() => Event::Client(message),
                _ = check.tick() => Event::Check,
                () = sleep_until(deadline) => Event::Deadline,
            };
            match event {
                Event::Client(message) => self.on_client(message).await,
                Event::Engine(message) => self.on_engine(message).await,
                Event::Check => self.check_heartbeats().await,
                Event::Deadline => self.expire_tasks().await,
                Event::Shutdown => break,
            }
        }
        self.shut_down().await;
        self.db
    }

    /// Asks every live engine to shut down, relays what they still send for up to
    /// [`SHUTDOWN_GRACE`], then fails whatever is still in flight.
    async fn shut_down(&mut self) {
        self.stopping = true;
        let mut waiting = BTreeSet::new();
        let live: Vec<(EngineId, Vec<Bytes>)> = self
            .registry
            .iter()
            .filter(|e| e.is_live())
            .map(|e| (e.info.id, e.route.clone()))
            .collect();
        for (id, route) in live {
            let mut request = self.session.message("shutdown_request", &json!({}));
            request.identities = route;
            self.to_engine(request).await;
            waiting.insert(id);
        }
        tracing::info!(engines = waiting.len(), "shutting down");
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while !waiting.is_empty() {
            let message = tokio::select! {
                message = self.engines_in.recv() => message,
                () = tokio::time::sleep_until(deadline) => None,
            };
            let Some(message) = message else { break };
            if message.msg_type() == "shutdown_reply" {
                if let Some(id) = self.registry.id_of(&message.identities) {
                    waiting.remove(&id);
                }
            } else {
                self.on_engine(message).await;
            }
        }
        if !waiting.is_empty() {
            tracing::warn!(?waiting, "engines did not answer shutdown_request");
        }
        let mut in_flight: Vec<(u64, String)> = self
            .tasks
            .iter()
            .map(|(msg_id, task)| (task.seq, msg_id.clone()))
            .collect();
        in_flight.sort();
        for (_, msg_id) in in_flight {
            self.fail_task(&msg_id, |id| {
                format!("the controller shut down before engine {id} finished this request")
            })
            .await;
        }
        let ids: Vec<EngineId> = self.registry.iter().map(|e| e.info.id).collect();
        for id in ids {
            if let Some(engine) = self.registry.get_mut(id) {
                engine.info.state = EngineState::Dead;
                engine.info.queue = 0;
            }
            self.save_engine(id);
        }
    }

    /// Declares dead the engines whose heartbeats stopped.
    async fn check_heartbeats(&mut self) {
        let timeout = Duration::from_secs_f64(HEARTBEAT_TIMEOUT);
        for id in self.registry.silent_since(Instant::now(), timeout) {
            tracing::warn!(id, "engine stopped sending heartbeats");
            self.engine_lost(
                id,
                format!("no heartbeat for {HEARTBEAT_TIMEOUT:.1} s"),
                false,
            )
            .await;
        }
    }

    /// An engine is gone (`restarting: false`) or restarting its kernel: updates its state,
    /// fails its requests if it is gone, and tells the clients.
    async fn engine_lost(&mut self, id: EngineId, reason: String, restarting: bool) {
        let Some(engine) = self.registry.get_mut(id) else {
            return;
        };
        engine.info.state = if restarting {
            EngineState::Restarting
        } else {
            EngineState::Dead
        };
        // A restarting engine answers its execute requests itself; apply requests ran in the
        // kernel that died.
        self.lose_tasks_of(id, !restarting).await;
        if !restarting {
            if let Some(route) = self.registry.get(id).and_then(|e| e.support.clone()) {
                self.engine_packs.forget(&route);
            }
            self.registry.set_support(id, None);
        }
        self.save_engine(id);
        tracing::info!(id, %reason, restarting, "engine lost");
        self.notify(
            "engine_died",
            &EngineDied {
                id,
                reason,
                restarting,
            },
        )
        .await;
    }

    /// Answers a request in flight with an `EngineError` (text from `evalue(engine id)`) and
    /// records it failed.
    async fn fail_task(&mut self, msg_id: &str, evalue: impl Fn(EngineId) -> String) {
        let Some(engine) = self.tasks.get(msg_id).map(|task| task.engine) else {
            return;
        };
        self.fail_task_with(msg_id, ENGINE_ERROR, &evalue(engine))
            .await;
    }

    /// Answers a request in flight with an error made here (`ename`, `evalue`) and records it
    /// failed.
    async fn fail_task_with(&mut self, msg_id: &str, ename: &str, evalue: &str) {
        let Some(task) = self.tasks.remove(msg_id) else {
            return;
        };
        self.waiting.finished(
            msg_id,
            Outcome {
                ok: false,
                engine: Some(task.engine),
            },
        );
        let content = execute_error(ename, evalue);
        let reply = self
            .session
            .reply(
                &task.request,
                &reply_type(task.request.msg_type()),
                &content,
            )
            .with_metadata(&json!({"engine_id": task.engine, "status": "error"}));
        self.to_client(reply).await;
        let now = now_iso8601();
        self.db.send(Command::Update {
            msg_id: msg_id.to_owned(),
            change: Change::Error(error_fields(&content)),
        });
        self.db.send(Command::Update {
            msg_id: msg_id.to_owned(),
            change: Change::Finished {
                status: "error".into(),
                completed: now.clone(),
                received: now,
            },
        });
        if let Some(engine) = self.registry.get_mut(task.engine) {
            engine.info.queue = engine.info.queue.saturating_sub(1);
            engine.settle_state();
        }
    }

    /// Sends a request to engine `id` and tracks it until its reply: to the engine support in
    /// the engine's kernel when it has one (it runs applies and cells itself, without the
    /// kernel's shell), else to the engine process. A load-balanced task keeps its buffers
    /// while it may be resubmitted elsewhere.
    async fn send_to_engine(
        &mut self,
        id: EngineId,
        message: Message,
        balanced: Option<Constraints>,
    ) {
        let Some(engine) = self.registry.get_mut(id) else {
            return;
        };
        let via_support = engine.support.is_some();
        let mut forward = message.clone();
        forward.identities = engine
            .support
            .clone()
            .unwrap_or_else(|| engine.route.clone());
        engine.info.queue += 1;
        engine.settle_state();
        let mut request = message;
        if balanced.is_none() {
            request.buffers.clear();
        }
        self.tasks.insert(
            request.msg_id().to_owned(),
            Task {
                seq: self.next_seq,
                request,
                engine: id,
                stdout: Captured::default(),
                stderr: Captured::default(),
                failed: false,
                balanced,
                reclaiming: false,
                via_support,
                sent: Instant::now(),
            },
        );
        self.next_seq += 1;
        self.to_engine(forward).await;
        self.save_engine(id);
    }

    /// Sends the engine's row to the database.
    fn save_engine(&mut self, id: EngineId) {
        if let Some(engine) = self.registry.get_mut(id) {
            engine.last_written = Some(Instant::now());
            self.db.send(Command::Engine(Box::new(engine.info.clone())));
        }
    }

    /// Sends the engine's row unless it was written less than a second ago.
    fn save_engine_lazily(&mut self, id: EngineId) {
        let recent = self
            .registry
            .get(id)
            .and_then(|e| e.last_written)
            .is_some_and(|at| at.elapsed() < HEARTBEAT_WRITE_EVERY);
        if !recent {
            self.save_engine(id);
        }
    }

    /// Sends a notification to every connected client.
    async fn notify<T: Serialize + ?Sized>(&self, msg_type: &str, content: &T) {
        let content = to_json_bytes(content);
        for route in &self.clients {
            let mut message = Message::new(self.session.header(msg_type), content.clone());
            message.identities = route.clone();
            self.to_client(message).await;
        }
    }

    /// Replies to a client's request with `content`.
    async fn reply<T: Serialize + ?Sized>(&self, request: &Message, content: &T) {
        let reply = self
            .session
            .reply(request, &reply_type(request.msg_type()), content);
        self.to_client(reply).await;
    }

    async fn to_client(&self, message: Message) {
        if self.clients_out.send(message).await.is_err() {
            tracing::error!("the client socket task has stopped");
        }
    }

    async fn to_engine(&self, message: Message) {
        if self.engines_out.send(message).await.is_err() {
            tracing::error!("the engine socket task has stopped");
        }
    }
}

/// Waits until `deadline`; without one, never resolves.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The content of an `execute_reply` that failed before (or without) running.
fn execute_error(ename: &str, evalue: &str) -> Value {
    let mut content = error_content(ename, evalue);
    if let Some(map) = content.as_object_mut() {
        map.insert("execution_count".into(), Value::Null);
    }
    content
}

/// `{ename, evalue, traceback}` of an error reply or `error` output, as the task records it.
fn error_fields(content: &Value) -> Value {
    let field = |name: &str| content.get(name).cloned().unwrap_or(Value::Null);
    crate::db::bounded(json!({
        "ename": field("ename"),
        "evalue": field("evalue"),
        "traceback": field("traceback"),
    }))
}

/// The metadata frame with `engine_id` added (a frame that is not an object is replaced).
fn with_engine_id(metadata: &[u8], id: EngineId) -> Bytes {
    let mut map: serde_json::Map<String, Value> =
        serde_json::from_slice(metadata).unwrap_or_default();
    map.insert("engine_id".into(), Value::from(id));
    to_json_bytes(&map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_id_is_added_to_metadata() {
        let tagged = with_engine_id(br#"{"a": 1}"#, 3);
        let value: Value = serde_json::from_slice(&tagged).expect("json");
        assert_eq!(value, json!({"a": 1, "engine_id": 3}));
        let value: Value = serde_json::from_slice(&with_engine_id(b"[]", 0)).expect("json");
        assert_eq!(value, json!({"engine_id": 0}));
    }

    #[test]
    fn execute_errors_have_a_null_count_and_one_line() {
        let content = execute_error(ENGINE_ERROR, "engine 2 is dead");
        assert_eq!(content["execution_count"], Value::Null);
        assert_eq!(
            content["traceback"],
            json!(["EngineError: engine 2 is dead"])
        );
        assert_eq!(error_fields(&content)["evalue"], "engine 2 is dead");
    }
}
