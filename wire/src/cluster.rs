//! The cluster protocol: what clients, the controller and engines say to each other.
//!
//! Every link is a DEALER (client or engine) connected to one of the controller's two ROUTERs,
//! carrying Jupyter-format messages signed with the cluster key. One link per peer keeps each
//! peer's messages in order: on an engine's link, a task's outputs always precede its reply.
//!
//! # Engine link (engine process → controller's engine ROUTER; identity = the engine's uuid)
//!
//! | from | msg_type | content |
//! | --- | --- | --- |
//! | engine | `register_request` | [`RegisterRequest`] |
//! | controller | `register_reply` | [`RegisterReply`] |
//! | engine | `heartbeat` | [`Heartbeat`], every `heartbeat_interval` |
//! | controller | `heartbeat_reply` | [`Heartbeat`] echoed |
//! | controller | `execute_request` | a Jupyter execute request: the client's message as sent |
//! | engine | iopub messages | the kernel's outputs for a request, header and parent as the kernel made them |
//! | engine | `execute_reply` | the kernel's reply, sent after the kernel's `idle` for that request |
//! | engine | `kernel_died` | [`KernelDied`]; in-flight requests get an `EngineError` reply first |
//! | engine | `unregister` | [`Heartbeat`]: the engine is stopping (SIGTERM, a scale-down); no reply |
//! | controller | `interrupt_request` | [`InterruptRequest`]: interrupt the kernel; answered `interrupt_reply` |
//! | controller | `shutdown_request` | `{}`: stop the kernel and exit; answered `shutdown_reply` |
//!
//! # Support link (the engine support inside a Python kernel → controller's engine ROUTER)
//!
//! The engine process starts `parallax.engine` in its kernel before registering; it holds its
//! own DEALER, so `apply_request`s reach the kernel process with one relay (the controller)
//! instead of two, and skip the kernel's shell.
//!
//! | from | msg_type | content |
//! | --- | --- | --- |
//! | support | `attach_request` | [`AttachRequest`]: the engine's uuid, the pack format it reads; answered `attach_reply` `{status}` |
//! | controller | `apply_request` | the client's request as sent (header, metadata, buffers) |
//! | support | `stream` | `{name, text}`: what the task printed, parented to the request |
//! | support | `apply_reply` | metadata `{status, started, completed}`; buffers: the pickled result |
//! | controller | `abort_request` | [`AbortRequest`]: drop these tasks if they have not started |
//!
//! # Client link (client → controller's client ROUTER)
//!
//! | request | reply content |
//! | --- | --- |
//! | `connect_request` [`ConnectRequest`] | [`ConnectReply`]; the client then also receives notifications |
//! | `engines_request` `{}` | [`EnginesReply`]; a busy engine's row names the request it runs ([`RunningTask`]) |
//! | `queue_request` `{}` | [`QueueReply`] |
//! | `task_request` [`TaskRequest`] | [`TaskReply`] |
//! | `execute_request` (metadata [`Routing`]) | the engine's `execute_reply`, after its outputs |
//! | `apply_request` (metadata [`ApplyRouting`], buffers: the pickled call) | `stream`s, then `apply_reply` |
//! | `abort_request` [`AbortRequest`] | `abort_reply` `{status, aborted, forwarded}`; aborted tasks get `apply_reply` status `aborted` |
//! | `query_request` [`QueryRequest`] | `query_reply` `{status, records}` |
//! | `purge_request` [`PurgeRequest`] | `purge_reply` `{status, purged}` (finished tasks only) |
//! | `task_request` [`TaskRequest`] | [`TaskReply`], with the result's buffers when they were kept |
//! | `interrupt_request` [`Targets`] | `interrupt_reply` `{status, engines}` |
//! | `shutdown_request` `{}` | `shutdown_reply`; then the controller stops its engines and exits |
//!
//! An `apply_request` names its engine (`{"engine": 0}`) or asks for load balancing
//! (`{"balanced": true, "targets": [..] | null, "retries": 0, "timeout": null}`): the controller's
//! scheduler picks the engine, and fails the task with [`TASK_TIMEOUT`] if it waited unassigned
//! longer than `timeout` seconds. `retries` counts twice, apart: up to that many times a task that
//! raised is run again on another engine (one it has not failed on), and up to that many times a
//! task whose engine died under it is run again elsewhere, except that a task that was running
//! when `max_task_deaths` engines (3 by default, `controller --max-task-deaths`) died fails with
//! [`TASK_KILLED_ENGINES`] naming them: a poison task does not get to take down every engine.
//!
//! Outputs and replies of an engine reach the client that sent the request, with the engine's id
//! added to their metadata as `engine_id`. Notifications to every connected client:
//! `engine_registered` ([`EngineInfo`]) and `engine_died` ([`EngineDied`]). A request of unknown
//! type gets `<type>_reply` with `status: error`. Errors name what failed: a request for an engine
//! that is dead gets `EngineError` "engine 2 is dead", one in flight when its engine dies gets
//! `EngineError` "engine 2 died while running this request".

use serde::{Deserialize, Serialize};

/// An engine's id: 0, 1, 2, … stable for the engine's life (and across kernel restarts).
pub type EngineId = u32;

/// How often engines send heartbeats, in seconds.
pub const HEARTBEAT_INTERVAL: f64 = 0.5;
/// After how many seconds without a heartbeat an engine is declared dead.
pub const HEARTBEAT_TIMEOUT: f64 = 2.0;

/// The ename of errors caused by an engine's death or absence.
pub const ENGINE_ERROR: &str = "EngineError";
/// The ename of a load-balanced task that waited for an engine longer than its timeout.
pub const TASK_TIMEOUT: &str = "TaskTimeout";
/// The ename of a task aborted before it started.
pub const TASK_ABORTED: &str = "TaskAborted";
/// The ename of a load-balanced task whose dependencies can no longer be met.
pub const IMPOSSIBLE_DEPENDENCY: &str = "ImpossibleDependency";
/// The ename of a load-balanced task that depends on tasks the controller does not know.
pub const INVALID_DEPENDENCY: &str = "InvalidDependency";
/// The ename of a task that was running on each of the engines that died under it, as many as
/// the controller allows (a poison task): it is not run again.
pub const TASK_KILLED_ENGINES: &str = "TaskKilledEngines";

/// The message of [`TASK_KILLED_ENGINES`]: `engines` died while running the task.
pub fn killed_engines(engines: &[EngineId]) -> String {
    let names: Vec<String> = engines.iter().map(ToString::to_string).collect();
    format!(
        "the task was running on engines {} when each of them died ({} deaths, the limit): it \
         is not run again",
        names.join(", "),
        engines.len()
    )
}

/// An engine's state, as the hub sees it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EngineState {
    /// Registered, nothing running.
    Idle,
    /// Running a request.
    Busy,
    /// Its kernel died and is being restarted.
    Restarting,
    /// Gone: its process or its kernel died (and is not coming back on its own).
    Dead,
}

/// One row of the engine table.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct EngineInfo {
    pub id: EngineId,
    pub uuid: String,
    pub host: String,
    /// The engine process.
    pub pid: u32,
    pub kernel: String,
    /// The engine's kernel process.
    pub kernel_pid: u32,
    pub state: EngineState,
    /// ISO 8601 times.
    pub registered: String,
    pub last_heartbeat: String,
    pub tasks_done: u64,
    /// Requests sent to the engine and not yet answered (including the one running).
    pub queue: u64,
    /// The request it is running, in `engines_reply` and `connect_reply` while it is busy
    /// (absent otherwise, and from controllers that predate the field). Boxed: most rows have
    /// none, and rows travel in enums (notifications) whose size is that of the largest variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<Box<RunningTask>>,
}

/// The request an engine is running, as the controller sees it: of the requests in flight on
/// the engine, the one sent first (an engine runs what arrives on its one link in order).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RunningTask {
    pub msg_id: String,
    /// `execute_request` or `apply_request`.
    pub msg_type: String,
    /// When the engine began it (ISO 8601, the controller's clock): when it was sent, or when
    /// the engine's reply to the request before it arrived, whichever was later. The engine
    /// support reports an apply's own start only in its reply, too late for a running task.
    pub started: String,
    /// The start of an execute request's code (at most [`RUNNING_CODE_LIMIT`] bytes); empty
    /// for an apply, whose call is pickled.
    #[serde(default)]
    pub code: String,
}

/// The most bytes of code a [`RunningTask`] carries.
pub const RUNNING_CODE_LIMIT: usize = 200;

/// `register_request`: an engine whose kernel is ready asks for an id.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RegisterRequest {
    pub uuid: String,
    pub host: String,
    pub pid: u32,
    pub kernel: String,
    pub kernel_pid: u32,
    /// The id this engine had before (after its kernel restarted): reclaim it.
    #[serde(default)]
    pub id: Option<EngineId>,
}

/// `register_reply`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RegisterReply {
    /// `ok` or `error`.
    pub status: String,
    #[serde(default)]
    pub id: Option<EngineId>,
    #[serde(default)]
    pub heartbeat_interval: f64,
    #[serde(default)]
    pub evalue: Option<String>,
}

/// `heartbeat` and `heartbeat_reply`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    pub id: EngineId,
}

/// `kernel_died`: an engine's kernel exited.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct KernelDied {
    pub id: EngineId,
    /// How it ended ("exit status 1", "killed by SIGKILL").
    pub exit: String,
    /// Whether the engine is starting a new kernel (and will register again under `id`).
    pub restarting: bool,
}

/// Metadata of a client's `execute_request`: the engine it is for.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Routing {
    pub engine: EngineId,
}

/// Metadata of a client's `apply_request`: an engine, or load balancing with its options.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct ApplyRouting {
    #[serde(default)]
    pub engine: Option<EngineId>,
    #[serde(default)]
    pub balanced: bool,
    /// Engines a load-balanced task may run on (all when absent).
    #[serde(default)]
    pub targets: Option<Vec<EngineId>>,
    /// How many times a load-balanced task is run again after it raised, and, counted apart,
    /// after its engine died under it (up to the controller's `max_task_deaths`).
    #[serde(default)]
    pub retries: u32,
    /// Seconds a load-balanced task may wait for its dependencies and an engine.
    #[serde(default)]
    pub timeout: Option<f64>,
    /// Tasks that must be done before a load-balanced task runs.
    #[serde(default)]
    pub after: Option<Dependency>,
    /// Tasks whose engine a load-balanced task must run on.
    #[serde(default)]
    pub follow: Option<Dependency>,
}

/// A load-balanced task's dependency on other tasks, as ipyparallel's `Dependency`: their
/// msg_ids, whether `all` of them (else any one) must be done, and whether they count when they
/// succeeded (`success`), failed (`failure`) or either. In metadata, either a list of msg_ids
/// (all, success only) or `{"dependencies": [...], "all": .., "success": .., "failure": ..}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(try_from = "DependencyForm")]
pub struct Dependency {
    #[serde(rename = "dependencies")]
    pub ids: Vec<String>,
    pub all: bool,
    pub success: bool,
    pub failure: bool,
}

impl Dependency {
    /// Every listed task, counted when it succeeded (ipyparallel's default).
    pub fn on(ids: Vec<String>) -> Self {
        Dependency {
            ids,
            all: true,
            success: true,
            failure: false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DependencyForm {
    Ids(Vec<String>),
    Full {
        dependencies: Vec<String>,
        #[serde(default = "yes")]
        all: bool,
        #[serde(default = "yes")]
        success: bool,
        #[serde(default)]
        failure: bool,
    },
}

fn yes() -> bool {
    true
}

impl TryFrom<DependencyForm> for Dependency {
    type Error = String;

    fn try_from(form: DependencyForm) -> Result<Self, String> {
        match form {
            DependencyForm::Ids(ids) => Ok(Dependency::on(ids)),
            DependencyForm::Full {
                dependencies,
                all,
                success,
                failure,
            } => {
                if !(success || failure) {
                    return Err("a dependency must count success, failure or both".into());
                }
                Ok(Dependency {
                    ids: dependencies,
                    all,
                    success,
                    failure,
                })
            }
        }
    }
}

/// `attach_request`: the engine support of engine `uuid`'s kernel.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AttachRequest {
    pub uuid: String,
    /// The pack format the support reads and sends ([`crate::pack::PACK_VERSION`]); 0 when it
    /// takes plain messages only.
    #[serde(default, deserialize_with = "pack_format")]
    pub packs: u32,
}

/// `connect_request`: a client that wants notifications.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectRequest {
    /// The pack format the client reads and sends ([`crate::pack::PACK_VERSION`]); 0 when it
    /// takes plain messages only.
    #[serde(default, deserialize_with = "pack_format")]
    pub packs: u32,
}

/// Why a peer (`who`: "client", "engine support") that names pack format `packs` cannot be
/// served, if it cannot: it reads and sends packs of another format, so the package it runs and
/// the controller are from different versions of Parallax.
pub fn pack_format_mismatch(who: &str, packs: u32) -> Option<String> {
    let ours = crate::pack::PACK_VERSION;
    (packs != 0 && packs != ours).then(|| {
        format!(
            "this {who} speaks pack format {packs} and the controller format {ours}: the parallax \
             Python package and the parallax binary are from different versions; install both \
             from the same release"
        )
    })
}

/// A pack format: a number, or `true` from peers of the first format (which named no number).
fn pack_format<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Format {
        Named(u32),
        First(bool),
    }
    Ok(match Format::deserialize(deserializer)? {
        Format::Named(version) => version,
        Format::First(packs) => u32::from(packs),
    })
}

/// `abort_request`: tasks to drop if they have not started.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AbortRequest {
    pub msg_ids: Vec<String>,
}

/// `query_request`: a query of the task database (see the controller's `query` module).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct QueryRequest {
    #[serde(default = "empty_object")]
    pub query: serde_json::Value,
    #[serde(default)]
    pub keys: Option<Vec<String>>,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

/// `purge_request`: forget finished tasks, those named or `all`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct PurgeRequest {
    #[serde(default)]
    pub msg_ids: Vec<String>,
    #[serde(default)]
    pub all: bool,
}

/// `interrupt_request` from a client: the engines to interrupt (all when absent), and the signal
/// to send their kernels (a name such as `SIGTERM`, or a number; SIGINT when absent, delivered
/// the way each kernelspec asks).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Targets {
    #[serde(default)]
    pub targets: Option<Vec<EngineId>>,
    #[serde(default)]
    pub signal: Option<String>,
}

/// `interrupt_request` from the controller to an engine.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct InterruptRequest {
    #[serde(default)]
    pub signal: Option<String>,
}

/// `connect_reply`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ConnectReply {
    pub status: String,
    pub engines: Vec<EngineInfo>,
    pub profile: String,
}

/// `engines_reply`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct EnginesReply {
    pub status: String,
    pub engines: Vec<EngineInfo>,
}

/// Per-engine counts in a `queue_reply`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct QueueStatus {
    pub queue: u64,
    pub completed: u64,
    pub tasks: u64,
}

/// `queue_reply`: `unassigned` tasks and each live engine's counts, keyed by id.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct QueueReply {
    pub status: String,
    pub unassigned: u64,
    pub engines: std::collections::BTreeMap<String, QueueStatus>,
}

/// `task_request`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TaskRequest {
    pub msg_id: String,
}

/// A task's record in the task database.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TaskRecord {
    pub msg_id: String,
    /// The session id of the client that sent it.
    pub client: String,
    pub engine: Option<EngineId>,
    pub msg_type: String,
    /// `pending`, `ok`, `error` or `aborted`.
    pub status: String,
    /// ISO 8601 times. At the controller: `submitted` (request arrived) and `received` (reply
    /// passed on to the client). At the engine: `started` (the kernel's `busy`) and `completed`
    /// (the date of its `execute_reply`).
    pub submitted: Option<String>,
    pub started: Option<String>,
    pub completed: Option<String>,
    pub received: Option<String>,
    pub stdout: String,
    pub stderr: String,
    /// `{ename, evalue, traceback}` when it failed.
    pub error: Option<serde_json::Value>,
    /// The execute_result's data, when there was one.
    pub result: Option<serde_json::Value>,
}

/// `task_reply`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TaskReply {
    pub status: String,
    #[serde(default)]
    pub task: Option<TaskRecord>,
    #[serde(default)]
    pub evalue: Option<String>,
}

/// `engine_died` notification.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct EngineDied {
    pub id: EngineId,
    /// Why: "no heartbeat for 2.0 s", "kernel exited (exit status 1)".
    pub reason: String,
    /// Whether it is coming back under the same id.
    pub restarting: bool,
}

/// The text of the error a request gets when its engine died while running it.
pub fn died_while_running(id: EngineId) -> String {
    format!("engine {id} died while running this request")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_are_lists_or_objects() {
        let routing = |json: &str| serde_json::from_str::<ApplyRouting>(json);
        let plain = routing(r#"{"balanced": true, "after": ["a", "b"]}"#).expect("a list");
        assert_eq!(
            plain.after,
            Some(Dependency::on(vec!["a".into(), "b".into()]))
        );
        assert_eq!(plain.follow, None);
        let full = routing(
            r#"{"balanced": true, "follow": {"dependencies": ["a"], "all": false, "failure": true}}"#,
        )
        .expect("an object");
        assert_eq!(
            full.follow,
            Some(Dependency {
                ids: vec!["a".into()],
                all: false,
                success: true,
                failure: true,
            })
        );
        let neither = r#"{"after": {"dependencies": ["a"], "success": false, "failure": false}}"#;
        assert!(
            routing(neither).is_err(),
            "a dependency that counts nothing"
        );
        assert!(routing(r#"{"after": 5}"#).is_err());
        assert!(routing(r#"{"after": [5]}"#).is_err());
        let written = serde_json::to_value(full.follow).expect("json");
        assert_eq!(
            written,
            serde_json::json!({"dependencies": ["a"], "all": false, "success": true, "failure": true})
        );
    }

    #[test]
    fn pack_formats_are_numbers_and_older_peers_are_named() {
        let format = |json: &str| serde_json::from_str::<ConnectRequest>(json).map(|r| r.packs);
        assert_eq!(format("{}").ok(), Some(0), "a plain client");
        assert_eq!(format(r#"{"packs":false}"#).ok(), Some(0));
        assert_eq!(
            format(r#"{"packs":true}"#).ok(),
            Some(1),
            "the first format"
        );
        assert_eq!(format(r#"{"packs":2}"#).ok(), Some(2));
        assert!(format(r#"{"packs":"yes"}"#).is_err());
        assert_eq!(pack_format_mismatch("client", 0), None);
        assert_eq!(
            pack_format_mismatch("client", crate::pack::PACK_VERSION),
            None
        );
        let reason = pack_format_mismatch("client", 1).unwrap_or_default();
        assert!(
            reason.contains("this client speaks pack format 1"),
            "{reason}"
        );
    }

    #[test]
    fn engine_rows_name_their_running_task_only_when_there_is_one() {
        // A row from a controller that predates `running`.
        let old = r#"{"id":0,"uuid":"u","host":"h","pid":1,"kernel":"python3","kernel_pid":2,
            "state":"idle","registered":"r","last_heartbeat":"b","tasks_done":3,"queue":0}"#;
        let mut info: EngineInfo = serde_json::from_str(old).expect("an old row");
        assert_eq!(info.running, None);
        let written = serde_json::to_value(&info).expect("json");
        assert!(written.get("running").is_none(), "{written}");
        info.running = Some(Box::new(RunningTask {
            msg_id: "m".into(),
            msg_type: "apply_request".into(),
            started: "s".into(),
            code: String::new(),
        }));
        let written = serde_json::to_value(&info).expect("json");
        assert_eq!(written["running"]["msg_id"], "m");
        let back: EngineInfo = serde_json::from_value(written).expect("round trip");
        assert_eq!(back, info);
    }

    #[test]
    fn states_serialise_lowercase() {
        assert_eq!(
            serde_json::to_string(&EngineState::Restarting).expect("serialise"),
            "\"restarting\""
        );
        let register: RegisterRequest = serde_json::from_str(
            r#"{"uuid":"u","host":"h","pid":1,"kernel":"python3","kernel_pid":2}"#,
        )
        .expect("parse");
        assert_eq!(register.id, None);
        assert_eq!(
            died_while_running(2),
            "engine 2 died while running this request"
        );
    }
}
