//! A Rust client of the controller's client protocol.
//!
//! The parallax kernel uses it for `%px`, the cluster launcher to wait for engines, and the tests
//! to drive clusters. One DEALER carries everything; a dispatcher task routes each arriving
//! message by its parent's `msg_id` to whoever sent that request, and notifications
//! (`engine_registered`, `engine_died`) to every subscriber.
//!
//! Requests with a single reply ([`ControllerClient::engines`], [`ControllerClient::task`], …) wait
//! at most the client's timeout and then fail with an error naming the controller. Executions
//! stream the engine's outputs and end with its reply; the controller guarantees that reply even
//! when the engine dies (an `EngineError`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use parallax_net::{connect_dealer, Limits, LinkStats, NetError, Outbox, Security};
use parallax_wire::cluster::{
    ConnectReply, EngineDied, EngineId, EngineInfo, EnginesReply, QueueReply, Routing, Targets,
    TaskRecord, TaskReply, TaskRequest,
};
use parallax_wire::profile::{read_json, ControllerFile, Profile, ProfileError};
use parallax_wire::{Message, Session};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};

/// Why a request to the controller failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no cluster is running for profile {profile:?}: start one with `parallax cluster start --profile {profile}`")]
    NoCluster { profile: String },
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("the controller of profile {profile:?} (pid {pid}) did not answer {request} within {timeout:?}{}", refused.as_deref().map(|why| format!(": {why}")).unwrap_or_default())]
    Timeout {
        profile: String,
        pid: u32,
        request: String,
        timeout: Duration,
        /// Why the controller refused the link's handshake, if it did (a CURVE key it does
        /// not admit).
        refused: Option<String>,
    },
    #[error("the connection to the controller is closed")]
    Closed,
    #[error("the controller answered {request}: {evalue}")]
    Refused { request: String, evalue: String },
    #[error("unexpected {request} reply: {reason}")]
    BadReply { request: String, reason: String },
}

/// A change in the cluster, pushed by the controller.
#[derive(Clone, Debug, PartialEq)]
pub enum Notification {
    EngineRegistered(EngineInfo),
    EngineDied(EngineDied),
}

/// Where replies to pending requests go, by request `msg_id`.
///
/// A std `Mutex` is fine: it is held only to insert, look up or remove one entry, never across
/// an `.await`.
type Pending = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Message>>>>;

/// A connected client.
pub struct ControllerClient {
    profile: String,
    controller_pid: u32,
    session: Session,
    outbox: Outbox,
    pending: Pending,
    notifications: broadcast::Sender<Notification>,
    timeout: Duration,
    engines_at_connect: Vec<EngineInfo>,
    stats: Arc<LinkStats>,
}

impl std::fmt::Debug for ControllerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerClient")
            .field("profile", &self.profile)
            .field("controller_pid", &self.controller_pid)
            .finish()
    }
}

/// Options of an execute request, as in Jupyter's `execute_request`.
#[derive(Clone, Debug, Serialize)]
pub struct ExecuteOptions {
    pub silent: bool,
    pub store_history: bool,
    pub stop_on_error: bool,
}

impl Default for ExecuteOptions {
    fn default() -> Self {
        ExecuteOptions {
            silent: false,
            store_history: true,
            stop_on_error: false,
        }
    }
}

/// The replies' common status fields.
#[derive(Deserialize)]
struct Status {
    #[serde(default)]
    status: String,
    #[serde(default)]
    evalue: Option<String>,
}

impl ControllerClient {
    /// Connects to the controller of `profile`, with `timeout` for every request.
    pub async fn connect(profile: &Profile, timeout: Duration) -> Result<Self, ClientError> {
        let path = profile.client_file();
        if !path.exists() {
            return Err(ClientError::NoCluster {
                profile: profile.name().to_owned(),
            });
        }
        let file: ControllerFile = read_json(&path)?;
        Self::connect_to(&file, timeout).await
    }

    /// Connects to the controller a client file describes.
    pub async fn connect_to(file: &ControllerFile, timeout: Duration) -> Result<Self, ClientError> {
        let session = Session::new(file.key.as_bytes(), "parallax");
        let identity = Bytes::from(session.id().as_bytes().to_vec());
        let stats = LinkStats::new("controller");
        let (outbox, mut inbox) = connect_dealer(
            &file.url,
            session.clone(),
            Some(identity),
            timeout,
            stats.clone(),
            file.max_message_size.map_or(Limits::DATA, Limits::data),
            &Security::for_file(file)?,
        )
        .await?;
        let pending: Pending = Arc::default();
        let (notifications, _) = broadcast::channel(256);
        let routes = pending.clone();
        let notify = notifications.clone();
        tokio::spawn(async move {
            while let Some(message) = inbox.recv().await {
                dispatch(&routes, &notify, message);
            }
            // The link is gone: waiters see their channel close.
            if let Ok(mut routes) = routes.lock() {
                routes.clear();
            }
        });
        let mut client = ControllerClient {
            profile: file.profile.clone(),
            controller_pid: file.controller_pid,
            session,
            outbox,
            pending,
            notifications,
            timeout,
            engines_at_connect: Vec::new(),
            stats,
        };
        let reply: ConnectReply = client
            .request("connect_request", &serde_json::json!({}))
            .await?;
        client.engines_at_connect = reply.engines;
        Ok(client)
    }

    /// The profile this client is connected to.
    pub fn profile(&self) -> &str {
        &self.profile
    }

    /// The engines the controller knew when we connected.
    pub fn engines_at_connect(&self) -> &[EngineInfo] {
        &self.engines_at_connect
    }

    /// Notifications from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Notification> {
        self.notifications.subscribe()
    }

    /// Sends `message` after registering `sink` for everything that answers it.
    async fn send_with(
        &self,
        message: Message,
        sink: mpsc::UnboundedSender<Message>,
    ) -> Result<String, ClientError> {
        let msg_id = message.msg_id().to_owned();
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(msg_id.clone(), sink);
        }
        if self.outbox.send(message).await.is_err() {
            self.forget(&msg_id);
            return Err(ClientError::Closed);
        }
        Ok(msg_id)
    }

    fn forget(&self, msg_id: &str) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.remove(msg_id);
        }
    }

    /// Sends a request and parses its one reply; an error status becomes [`ClientError::Refused`].
    async fn request<T: DeserializeOwned>(
        &self,
        msg_type: &str,
        content: &serde_json::Value,
    ) -> Result<T, ClientError> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let message = self.session.message(msg_type, content);
        let msg_id = self.send_with(message, tx).await?;
        let reply = tokio::time::timeout(self.timeout, rx.recv()).await;
        self.forget(&msg_id);
        let reply = match reply {
            Ok(Some(reply)) => reply,
            Ok(None) => return Err(ClientError::Closed),
            Err(_) => {
                return Err(ClientError::Timeout {
                    profile: self.profile.clone(),
                    pid: self.controller_pid,
                    request: msg_type.to_owned(),
                    timeout: self.timeout,
                    refused: self.stats.refused(),
                })
            }
        };
        let bad = |reason: String| ClientError::BadReply {
            request: msg_type.to_owned(),
            reason,
        };
        let status: Status = reply.content_as().map_err(|e| bad(e.to_string()))?;
        if status.status != "ok" {
            return Err(ClientError::Refused {
                request: msg_type.to_owned(),
                evalue: status
                    .evalue
                    .unwrap_or_else(|| format!("status {:?}", status.status)),
            });
        }
        reply.content_as().map_err(|e| bad(e.to_string()))
    }

    /// The engine table.
    pub async fn engines(&self) -> Result<Vec<EngineInfo>, ClientError> {
        let reply: EnginesReply = self
            .request("engines_request", &serde_json::json!({}))
            .await?;
        Ok(reply.engines)
    }

    /// Per-engine queue counts.
    pub async fn queue_status(&self) -> Result<QueueReply, ClientError> {
        self.request("queue_request", &serde_json::json!({})).await
    }

    /// A task's record from the task database.
    pub async fn task(&self, msg_id: &str) -> Result<TaskRecord, ClientError> {
        let request = TaskRequest {
            msg_id: msg_id.to_owned(),
        };
        let reply: TaskReply = self
            .request("task_request", &serde_json::json!(request))
            .await?;
        reply.task.ok_or_else(|| ClientError::BadReply {
            request: "task_request".into(),
            reason: "no task in the reply".into(),
        })
    }

    /// The controller's counters (rejected messages per link).
    pub async fn stats(&self) -> Result<serde_json::Value, ClientError> {
        self.request("stats_request", &serde_json::json!({})).await
    }

    /// Interrupts the engines' kernels (all engines when `targets` is `None`) with `signal`
    /// (SIGINT, the kernelspec's way, when `None`); returns the engines interrupted.
    pub async fn interrupt(
        &self,
        targets: Option<Vec<EngineId>>,
        signal: Option<String>,
    ) -> Result<Vec<EngineId>, ClientError> {
        #[derive(Deserialize)]
        struct InterruptReply {
            #[serde(default)]
            engines: Vec<EngineId>,
        }
        let reply: InterruptReply = self
            .request(
                "interrupt_request",
                &serde_json::json!(Targets { targets, signal }),
            )
            .await?;
        Ok(reply.engines)
    }

    /// Sends `code` to `engine`; everything that answers it (outputs, then the reply) goes to
    /// `sink`. Returns the request's `msg_id`. Registration ends with the reply.
    pub async fn submit(
        &self,
        engine: EngineId,
        code: &str,
        options: &ExecuteOptions,
        sink: mpsc::UnboundedSender<Message>,
    ) -> Result<String, ClientError> {
        let content = serde_json::json!({
            "code": code,
            "silent": options.silent,
            "store_history": options.store_history,
            "user_expressions": {},
            "allow_stdin": false,
            "stop_on_error": options.stop_on_error,
        });
        let message = self
            .session
            .message("execute_request", &content)
            .with_metadata(&Routing { engine });
        self.send_with(message, sink).await
    }

    /// Runs `code` on `engine` and returns its messages as they arrive.
    pub async fn execute(&self, engine: EngineId, code: &str) -> Result<Execution, ClientError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let msg_id = self
            .submit(engine, code, &ExecuteOptions::default(), tx)
            .await?;
        Ok(Execution {
            msg_id,
            engine,
            messages: rx,
            done: false,
        })
    }
}

/// Routes one arriving message to its request's sink, or to the notification subscribers.
fn dispatch(pending: &Pending, notify: &broadcast::Sender<Notification>, message: Message) {
    match message.msg_type() {
        "engine_registered" => {
            if let Ok(info) = message.content_as::<EngineInfo>() {
                let _ = notify.send(Notification::EngineRegistered(info));
            }
            return;
        }
        "engine_died" => {
            if let Ok(died) = message.content_as::<EngineDied>() {
                let _ = notify.send(Notification::EngineDied(died));
            }
            return;
        }
        _ => {}
    }
    let Some(parent) = message.parent_msg_id().map(str::to_owned) else {
        return;
    };
    let is_reply = message.msg_type().ends_with("_reply");
    let Ok(mut pending) = pending.lock() else {
        return;
    };
    let delivered = pending
        .get(&parent)
        .is_some_and(|sink| sink.send(message).is_ok());
    if is_reply || !delivered {
        pending.remove(&parent);
    }
}

/// The engine an output or reply came from (the controller adds `engine_id` to the metadata).
pub fn engine_of(message: &Message) -> Option<EngineId> {
    #[derive(Deserialize)]
    struct Meta {
        engine_id: Option<EngineId>,
    }
    message
        .metadata_as::<Meta>()
        .ok()
        .and_then(|meta| meta.engine_id)
}

/// One request running on one engine.
#[derive(Debug)]
pub struct Execution {
    pub msg_id: String,
    pub engine: EngineId,
    messages: mpsc::UnboundedReceiver<Message>,
    done: bool,
}

impl Execution {
    /// The next message: outputs, then the reply; `None` after the reply.
    pub async fn next(&mut self) -> Option<Message> {
        if self.done {
            return None;
        }
        let message = self.messages.recv().await?;
        if message.msg_type().ends_with("_reply") {
            self.done = true;
        }
        Some(message)
    }

    /// Waits for the reply, collecting the outputs before it.
    pub async fn finish(mut self) -> (Vec<Message>, Option<Message>) {
        let mut outputs = Vec::new();
        while let Some(message) = self.next().await {
            if message.msg_type().ends_with("_reply") {
                return (outputs, Some(message));
            }
            outputs.push(message);
        }
        (outputs, None)
    }
}
