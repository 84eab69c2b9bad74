//! What engines send: registration, heartbeats, kernel deaths, and the outputs and replies of
//! the requests they run, relayed to the client that sent each request.
//!
//! A message from a route that never registered is dropped (only `register_request` is
//! accepted from strangers). Heartbeats of an engine the hub has declared dead are not
//! answered: an engine whose heartbeats go unanswered has lost the controller, and registering
//! again (with its old id) is how it comes back.

use std::time::Instant;

use parallax_wire::cluster::{EngineId, KernelDied, RegisterRequest, HEARTBEAT_INTERVAL};
use parallax_wire::{now_iso8601, Message};
use serde::Deserialize;
use serde_json::{json, Value};

use parallax_wire::replies::{error_content, reply_type};

use super::{error_fields, with_engine_id, Captured, Hub, Task};
use crate::db::{bounded, Change, Command, TaskDb, STREAM_LIMIT};
use crate::deps::Outcome;
use crate::scheduler::Queued;

impl Hub {
    pub(super) async fn on_engine(&mut self, message: Message) {
        match message.msg_type() {
            "register_request" => return self.on_register(message).await,
            "attach_request" => return self.on_attach(message).await,
            _ => {}
        }
        let Some(id) = self.registry.id_of(&message.identities) else {
            tracing::debug!(
                msg_type = message.msg_type(),
                "dropped a message from an unregistered engine"
            );
            return;
        };
        match message.msg_type() {
            "heartbeat" => self.on_heartbeat(id, message).await,
            "kernel_died" => self.on_kernel_died(id, &message).await,
            "unregister" => {
                if self.registry.get(id).is_some_and(|e| e.is_live()) {
                    self.engine_lost(id, "the engine stopped".into(), false)
                        .await;
                }
            }
            "execute_reply" | "apply_reply" => self.on_reply(id, message).await,
            "interrupt_reply" | "shutdown_reply" => {
                tracing::debug!(id, msg_type = message.msg_type(), "engine answered");
            }
            other if other.ends_with("_request") => {
                let evalue = format!("the controller does not handle {other} from engines");
                let reply = self.session.reply(
                    &message,
                    &reply_type(other),
                    &error_content("UnknownMessageType", &evalue),
                );
                self.to_engine(reply).await;
            }
            _ => self.on_output(id, message).await,
        }
    }

    async fn on_register(&mut self, message: Message) {
        let request: RegisterRequest = match message.content_as() {
            Ok(request) => request,
            Err(error) => {
                let evalue = format!("invalid register_request: {error}");
                tracing::warn!(%evalue, "registration refused");
                return self.refuse_registration(&message, &evalue).await;
            }
        };
        if self.stopping {
            return self
                .refuse_registration(&message, "the controller is shutting down")
                .await;
        }
        let id = self.registry.choose_id(&request);
        // The same engine registered before under another id: that one is gone.
        if let Some(old) = self.registry.id_of(&message.identities) {
            let live = self.registry.get(old).is_some_and(|e| e.is_live());
            if old != id && live {
                self.engine_lost(old, format!("registered again as engine {id}"), false)
                    .await;
            }
        }
        let engine = self.registry.register(
            id,
            &request,
            message.identities.clone(),
            Instant::now(),
            now_iso8601(),
        );
        let info = engine.info.clone();
        let support = self.attached.get(&request.uuid).cloned();
        self.registry.set_support(id, support);
        self.open_if_serving(id);
        let reply = self.session.reply(
            &message,
            "register_reply",
            &json!({"status": "ok", "id": id, "heartbeat_interval": HEARTBEAT_INTERVAL}),
        );
        self.to_engine(reply).await;
        self.save_engine(id);
        tracing::info!(
            id,
            uuid = %info.uuid,
            host = %info.host,
            kernel = %info.kernel,
            asked = ?request.id,
            "engine registered"
        );
        self.notify("engine_registered", &info).await;
        self.dispatch().await;
    }

    async fn refuse_registration(&self, request: &Message, evalue: &str) {
        let reply = self.session.reply(
            request,
            "register_reply",
            &json!({"status": "error", "id": null, "heartbeat_interval": HEARTBEAT_INTERVAL,
                    "evalue": evalue}),
        );
        self.to_engine(reply).await;
    }

    async fn on_heartbeat(&mut self, id: EngineId, message: Message) {
        let Some(engine) = self.registry.get_mut(id) else {
            return;
        };
        if !engine.is_live() {
            tracing::debug!(id, "heartbeat from an engine declared dead: not answered");
            return;
        }
        engine.last_seen = Instant::now();
        engine.info.last_heartbeat = now_iso8601();
        // Echo the content as it came.
        let reply = Message::new(
            self.session.header("heartbeat_reply"),
            message.content.clone(),
        )
        .with_parent(&message);
        self.to_engine(reply).await;
        self.save_engine_lazily(id);
    }

    async fn on_kernel_died(&mut self, id: EngineId, message: &Message) {
        if !self.registry.get(id).is_some_and(|e| e.is_live()) {
            return;
        }
        let (exit, restarting) = match message.content_as::<KernelDied>() {
            Ok(died) => (died.exit, died.restarting),
            Err(error) => {
                tracing::warn!(id, %error, "unreadable kernel_died: taking the engine as dead");
                ("unknown".to_owned(), false)
            }
        };
        self.engine_lost(id, format!("kernel exited ({exit})"), restarting)
            .await;
    }

    /// The task an engine's message belongs to, if it is in flight on that engine.
    fn task_of(&self, id: EngineId, message: &Message) -> Option<String> {
        let parent = message.parent_msg_id()?;
        match self.tasks.get(parent) {
            Some(task) if task.engine == id => Some(parent.to_owned()),
            Some(task) => {
                tracing::warn!(
                    id,
                    owner = task.engine,
                    msg_type = message.msg_type(),
                    "dropped a message for a request another engine runs"
                );
                None
            }
            None => {
                tracing::debug!(
                    id,
                    msg_type = message.msg_type(),
                    parent,
                    "dropped a message for no request in flight"
                );
                None
            }
        }
    }

    async fn on_output(&mut self, id: EngineId, mut message: Message) {
        let Some(msg_id) = self.task_of(id, &message) else {
            return;
        };
        let Some(task) = self.tasks.get_mut(&msg_id) else {
            return;
        };
        record_output(&self.db, task, &msg_id, &message);
        message.identities = task.request.identities.clone();
        message.metadata = with_engine_id(&message.metadata, id);
        self.to_client(message).await;
    }

    /// An `execute_reply` (from the engine process) or `apply_reply` (from its kernel's
    /// support): the request is done.
    async fn on_reply(&mut self, id: EngineId, mut message: Message) {
        let Some(msg_id) = self.task_of(id, &message) else {
            return;
        };
        if self.tasks.get(&msg_id).is_some_and(|t| t.reclaiming) && is_aborted(&message) {
            return self.reclaimed(id, &msg_id).await;
        }
        let Some(task) = self.tasks.remove(&msg_id) else {
            return;
        };
        let task = match self.retry_if_it_raised(id, task, &message).await {
            Some(task) => task,
            None => return,
        };
        let times: Times = message.metadata_as().unwrap_or_default();
        if let Some(started) = &times.started {
            self.db.send(Command::Update {
                msg_id: msg_id.clone(),
                change: Change::Started(started.clone()),
            });
        }
        self.scheduler.answered(id, times.run());
        if message.msg_type() == "apply_reply" {
            let size: usize = message.buffers.iter().map(|b| b.len()).sum();
            let kept = (size <= self.result_limit).then(|| message.buffers.clone());
            self.db.send(Command::Update {
                msg_id: msg_id.clone(),
                change: Change::Buffers {
                    kept,
                    size: size as u64,
                },
            });
        }
        let content: Value = message.content_as().unwrap_or_default();
        let status = content
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_owned();
        self.waiting.finished(
            &msg_id,
            Outcome {
                ok: status == "ok",
                engine: Some(id),
            },
        );
        if status == "error" && !task.failed {
            self.db.send(Command::Update {
                msg_id: msg_id.clone(),
                change: Change::Error(error_fields(&content)),
            });
        }
        let received = now_iso8601();
        let completed = Some(message.header().date.clone())
            .filter(|date| !date.is_empty())
            .unwrap_or_else(|| received.clone());
        self.db.send(Command::Update {
            msg_id,
            change: Change::Finished {
                status,
                completed,
                received,
            },
        });
        if let Some(engine) = self.registry.get_mut(id) {
            engine.info.queue = engine.info.queue.saturating_sub(1);
            engine.info.tasks_done += 1;
            engine.last_reply = Some(Instant::now());
            engine.settle_state();
        }
        self.save_engine(id);
        message.identities = task.request.identities;
        message.metadata = with_engine_id(&message.metadata, id);
        self.to_client(message).await;
        self.dispatch().await;
    }
}

impl Hub {
    /// A load-balanced task that raised on engine `id` runs again on another engine while its
    /// retries last and some engine it has not failed on may take it (the reply is then
    /// dropped: the client gets the outcome of the last run). Returns the task when its reply
    /// stands.
    async fn retry_if_it_raised(
        &mut self,
        id: EngineId,
        mut task: Task,
        reply: &Message,
    ) -> Option<Task> {
        let raised = reply
            .content_as::<Value>()
            .is_ok_and(|c| c.get("status").and_then(Value::as_str) == Some("error"));
        let Some(constraints) = task
            .balanced
            .as_mut()
            .filter(|c| raised && c.retries_left > 0)
        else {
            return Some(task);
        };
        constraints.excluded.push(id);
        if !super::apply::runs_somewhere(&self.registry, constraints) {
            constraints.excluded.pop();
            return Some(task);
        }
        constraints.retries_left -= 1;
        let msg_id = task.request.msg_id().to_owned();
        tracing::info!(%msg_id, engine = id, "the task raised; running it again on another engine");
        self.scheduler.answered(id, None);
        if let Some(engine) = self.registry.get_mut(id) {
            engine.info.queue = engine.info.queue.saturating_sub(1);
            engine.settle_state();
        }
        let constraints = task.balanced.take()?;
        self.scheduler.resubmit(Queued {
            request: task.request,
            constraints,
        });
        self.dispatch().await;
        None
    }
}

/// Whether a reply says its request was aborted.
fn is_aborted(reply: &Message) -> bool {
    reply
        .content_as::<Value>()
        .is_ok_and(|content| content.get("status").and_then(Value::as_str) == Some("aborted"))
}

/// When a task ran, as its engine reports in the reply's metadata (apply replies).
#[derive(Deserialize, Default)]
struct Times {
    #[serde(default)]
    started: Option<String>,
    #[serde(default)]
    completed: Option<String>,
}

impl Times {
    /// How long the task ran, when both times are there and readable.
    fn run(&self) -> Option<std::time::Duration> {
        let parse =
            |text: &Option<String>| chrono::DateTime::parse_from_rfc3339(text.as_deref()?).ok();
        let (started, completed) = (parse(&self.started)?, parse(&self.completed)?);
        (completed - started).to_std().ok()
    }
}

#[derive(Deserialize)]
struct Status {
    execution_state: String,
}

#[derive(Deserialize)]
struct Stream {
    name: String,
    text: String,
}

#[derive(Deserialize)]
struct ExecuteResult {
    data: Value,
}

/// Records what an output says about its task (started, stream text, error, result).
fn record_output(db: &TaskDb, task: &mut Task, msg_id: &str, message: &Message) {
    let update = |change| {
        db.send(Command::Update {
            msg_id: msg_id.to_owned(),
            change,
        })
    };
    match message.msg_type() {
        "status" => {
            if let Ok(status) = message.content_as::<Status>() {
                if status.execution_state == "busy" {
                    let date = &message.header().date;
                    let at = if date.is_empty() {
                        now_iso8601()
                    } else {
                        date.clone()
                    };
                    update(Change::Started(at));
                }
            }
        }
        "stream" => {
            if let Ok(stream) = message.content_as::<Stream>() {
                let stderr = stream.name == "stderr";
                let captured = if stderr {
                    &mut task.stderr
                } else {
                    &mut task.stdout
                };
                if let Some(text) = capture(captured, &stream.text) {
                    db.send(Command::Stream {
                        msg_id: msg_id.to_owned(),
                        stderr,
                        text,
                    });
                }
            }
        }
        "error" => {
            if let Ok(content) = message.content_as::<Value>() {
                task.failed = true;
                update(Change::Error(error_fields(&content)));
            }
        }
        "execute_result" => {
            if let Ok(result) = message.content_as::<ExecuteResult>() {
                update(Change::Result(bounded(result.data)));
            }
        }
        _ => {}
    }
}

/// The part of `text` that still fits in the stream's [`STREAM_LIMIT`], with a note when it
/// is cut; nothing once the stream is full.
fn capture(captured: &mut Captured, text: &str) -> Option<String> {
    if captured.truncated || text.is_empty() {
        return None;
    }
    let room = STREAM_LIMIT.saturating_sub(captured.bytes);
    if text.len() <= room {
        captured.bytes += text.len();
        return Some(text.to_owned());
    }
    let mut cut = room;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    captured.truncated = true;
    captured.bytes = STREAM_LIMIT;
    Some(format!(
        "{}\n[parallax: output truncated after {STREAM_LIMIT} bytes]\n",
        &text[..cut]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_capped_once() {
        let mut captured = Captured::default();
        assert_eq!(capture(&mut captured, "abc").as_deref(), Some("abc"));
        let long = "é".repeat(STREAM_LIMIT);
        let kept = capture(&mut captured, &long).expect("first cut");
        assert!(kept.contains("truncated"));
        assert!(kept.len() < STREAM_LIMIT + 100);
        assert_eq!(capture(&mut captured, "more"), None);
    }
}
