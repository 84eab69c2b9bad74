//! What clients send: the hub's queries, interrupts, and `execute_request`s routed to the engine
//! their metadata names (to the engine support in its kernel when it has one, else to the
//! engine process, which passes them to the kernel's shell). Every request gets a reply; one the controller does not know gets
//! `<type>_reply` with `status: error`.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use parallax_wire::cluster::{
    pack_format_mismatch, ConnectReply, ConnectRequest, EngineId, EngineInfo, EngineState,
    EnginesReply, PurgeRequest, QueryRequest, QueueReply, QueueStatus, Routing, RunningTask,
    Targets, TaskRecord, TaskRequest, ENGINE_ERROR, RUNNING_CODE_LIMIT,
};
use parallax_wire::pack::PACK_VERSION;
use parallax_wire::{now_iso8601, Message};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::oneshot;

use parallax_wire::replies::error_content;

use super::{error_fields, execute_error, Hub, Task};
use crate::db::{Command, NewTask, RESULT_LIMIT};
use crate::deps::Outcome;
use crate::query::Query;

/// The ename of requests the controller cannot route (no or bad `engine` metadata, a msg_id
/// already in flight).
pub(crate) const ROUTING_ERROR: &str = "RoutingError";

#[derive(Deserialize)]
struct Code {
    #[serde(default)]
    code: String,
}

impl Hub {
    pub(super) async fn on_client(&mut self, message: Message) {
        match message.msg_type() {
            "connect_request" => self.on_connect(message).await,
            "engines_request" => {
                let reply = EnginesReply {
                    status: "ok".into(),
                    engines: self.engine_infos(),
                };
                self.reply(&message, &reply).await;
            }
            "queue_request" => self.on_queue(&message).await,
            "task_request" => self.on_task_request(message),
            "execute_request" => self.on_execute(message).await,
            "apply_request" => self.on_apply(message).await,
            "abort_request" => self.on_abort(&message).await,
            "query_request" => self.on_query(message),
            "purge_request" => self.on_purge(message),
            "interrupt_request" => self.on_interrupt(&message).await,
            "shutdown_request" => {
                tracing::info!(client = %message.header().session, "a client asked for shutdown");
                self.reply(&message, &json!({"status": "ok"})).await;
                self.shutdown_requested = true;
            }
            "stats_request" => {
                let content = json!({
                    "status": "ok",
                    "rejected": {
                        "client": self.client_stats.rejected(),
                        "engine": self.engine_stats.rejected(),
                    },
                });
                self.reply(&message, &content).await;
            }
            other => {
                tracing::debug!(msg_type = other, "unknown request from a client");
                let evalue = format!("the controller does not handle {other} messages");
                self.reply(&message, &error_content("UnknownMessageType", &evalue))
                    .await;
            }
        }
    }

    async fn on_connect(&mut self, message: Message) {
        let packs = message
            .content_as::<ConnectRequest>()
            .map_or(0, |request| request.packs);
        if let Some(reason) = pack_format_mismatch("client", packs) {
            tracing::warn!(client = %message.header().session, %reason, "client refused");
            self.reply(&message, &error_content("VersionMismatch", &reason))
                .await;
            return;
        }
        if !self.clients.contains(&message.identities) {
            self.clients.push(message.identities.clone());
        }
        if packs == PACK_VERSION {
            self.client_packs.allow(&message.identities);
        }
        tracing::info!(client = %message.header().session, "client connected");
        let reply = ConnectReply {
            status: "ok".into(),
            engines: self.engine_infos(),
            profile: self.profile.clone(),
        };
        self.reply(&message, &reply).await;
    }

    /// Every engine's row, a busy engine's with the request it is running.
    fn engine_infos(&self) -> Vec<EngineInfo> {
        let mut running = running_tasks(&self.tasks);
        let now = Instant::now();
        let date = chrono::Utc::now();
        self.registry
            .iter()
            .map(|engine| {
                let mut info = engine.info.clone();
                if info.state == EngineState::Busy {
                    info.running = running.remove(&info.id).map(|(msg_id, task)| {
                        Box::new(RunningTask {
                            msg_id: msg_id.clone(),
                            msg_type: task.request.msg_type().to_owned(),
                            started: date_of(began(task.sent, engine.last_reply), now, date),
                            code: code_of(&task.request),
                        })
                    });
                }
                info
            })
            .collect()
    }

    /// Per live engine: `queue` (direct requests outstanding), `tasks` (load-balanced ones),
    /// `completed`; and the load-balanced tasks not assigned yet.
    async fn on_queue(&self, message: &Message) {
        let mut balanced: BTreeMap<EngineId, u64> = BTreeMap::new();
        for task in self.tasks.values().filter(|t| t.balanced.is_some()) {
            *balanced.entry(task.engine).or_default() += 1;
        }
        let engines = self
            .registry
            .iter()
            .filter(|e| e.is_live())
            .map(|e| {
                let tasks = balanced.get(&e.info.id).copied().unwrap_or(0);
                let status = QueueStatus {
                    queue: e.info.queue.saturating_sub(tasks),
                    completed: e.info.tasks_done,
                    tasks,
                };
                (e.info.id.to_string(), status)
            })
            .collect::<BTreeMap<_, _>>();
        let reply = QueueReply {
            status: "ok".into(),
            // As ipyparallel counts them: tasks waiting for their dependencies too.
            unassigned: (self.scheduler.unassigned() + self.waiting.blocked()) as u64,
            engines,
        };
        self.reply(message, &reply).await;
    }

    /// Asks the database thread; a small task sends the reply when it answers.
    fn on_task_request(&self, message: Message) {
        let msg_id = match message.content_as::<TaskRequest>() {
            Ok(request) => request.msg_id,
            Err(error) => {
                let content = json!({
                    "status": "error",
                    "ename": "ValueError",
                    "evalue": format!("invalid task_request: {error}"),
                });
                let reply = self.session.reply(&message, "task_reply", &content);
                let out = self.clients_out.clone();
                tokio::spawn(async move { out.send(reply).await });
                return;
            }
        };
        let (answer, answered) = oneshot::channel();
        self.db.send(Command::Get {
            msg_id: msg_id.clone(),
            reply: answer,
        });
        let session = self.session.clone();
        let out = self.clients_out.clone();
        tokio::spawn(async move {
            let mut buffers = Vec::new();
            let content = match answered.await {
                Ok(Ok(Some(stored))) => {
                    buffers = stored.buffers;
                    json!({"status": "ok", "task": stored.record})
                }
                // Worded (and quoted, as str(KeyError) is) like ipyparallel's hub.
                Ok(Ok(None)) => json!({
                    "status": "error",
                    "ename": "KeyError",
                    "evalue": format!("'No such message: {msg_id}'"),
                }),
                Ok(Err(error)) => json!({
                    "status": "error",
                    "ename": "DatabaseError",
                    "evalue": format!("cannot read task {msg_id}: {error}"),
                }),
                Err(_) => json!({
                    "status": "error",
                    "ename": "DatabaseError",
                    "evalue": "the task database is not running",
                }),
            };
            let mut reply = session.reply(&message, "task_reply", &content);
            reply.buffers = buffers;
            let _ = out.send(reply).await;
        });
    }

    /// `query_request`: answered by a small task once the database thread has run the query.
    fn on_query(&self, message: Message) {
        let request = message
            .content_as::<QueryRequest>()
            .map_err(|error| format!("invalid query_request: {error}"))
            .and_then(|request| {
                Query::parse(&request.query, request.keys.as_deref()).map_err(|e| e.to_string())
            });
        let (answer, answered) = oneshot::channel();
        match request {
            Ok(query) => self.db.send(Command::Query {
                query,
                reply: answer,
            }),
            Err(evalue) => {
                let _ = answer.send(Err(evalue));
            }
        }
        self.answer_later(message, async move {
            match answered.await {
                Ok(Ok(records)) => json!({"status": "ok", "records": records}),
                Ok(Err(evalue)) => error_content("QueryError", &evalue),
                Err(_) => error_content("DatabaseError", "the task database is not running"),
            }
        });
    }

    /// `purge_request`: forgets finished tasks.
    fn on_purge(&mut self, message: Message) {
        let (answer, answered) = oneshot::channel();
        match message.content_as::<PurgeRequest>() {
            Ok(request) => {
                let msg_ids = (!request.all).then_some(request.msg_ids);
                self.waiting.forget(msg_ids.as_deref());
                self.db.send(Command::Purge {
                    msg_ids,
                    reply: answer,
                })
            }
            Err(error) => {
                let _ = answer.send(Err(format!("invalid purge_request: {error}")));
            }
        }
        self.answer_later(message, async move {
            match answered.await {
                Ok(Ok(purged)) => json!({"status": "ok", "purged": purged}),
                Ok(Err(evalue)) => error_content("DatabaseError", &evalue),
                Err(_) => error_content("DatabaseError", "the task database is not running"),
            }
        });
    }

    /// Replies to `request` with what `content` resolves to, from a task of its own (so the hub
    /// does not wait for the database).
    fn answer_later(
        &self,
        request: Message,
        content: impl std::future::Future<Output = serde_json::Value> + Send + 'static,
    ) {
        let session = self.session.clone();
        let out = self.clients_out.clone();
        let reply_type = parallax_wire::replies::reply_type(request.msg_type());
        tokio::spawn(async move {
            let content = content.await;
            let _ = out
                .send(session.reply(&request, &reply_type, &content))
                .await;
        });
    }

    async fn on_interrupt(&self, message: &Message) {
        let (targets, signal) = match message.content_as::<Targets>() {
            Ok(targets) => (targets.targets, targets.signal),
            Err(error) => {
                let evalue = format!("invalid interrupt_request: {error}");
                return self
                    .reply(message, &error_content("ValueError", &evalue))
                    .await;
            }
        };
        let ids: Vec<EngineId> = match targets {
            Some(ids) => ids,
            None => self
                .registry
                .iter()
                .filter(|e| e.is_serving())
                .map(|e| e.info.id)
                .collect(),
        };
        let mut interrupted = Vec::new();
        let mut problems = Vec::new();
        for id in ids {
            match self.unavailable(id) {
                Some(problem) => problems.push(problem),
                None => {
                    if let Some(engine) = self.registry.get(id) {
                        let mut request = self
                            .session
                            .message("interrupt_request", &json!({ "signal": signal }));
                        request.identities = engine.route.clone();
                        self.to_engine(request).await;
                        interrupted.push(id);
                    }
                }
            }
        }
        tracing::info!(?interrupted, ?problems, ?signal, "interrupt requested");
        let content = if problems.is_empty() {
            json!({"status": "ok", "engines": interrupted})
        } else {
            let mut content = error_content(ENGINE_ERROR, &problems.join("; "));
            content["engines"] = json!(interrupted);
            content
        };
        self.reply(message, &content).await;
    }

    /// Why engine `id` cannot take a request now, if it cannot.
    pub(super) fn unavailable(&self, id: EngineId) -> Option<String> {
        match self.registry.get(id) {
            None => Some(format!(
                "there is no engine {id} ({})",
                self.registry.describe_ids()
            )),
            Some(engine) if engine.info.state == EngineState::Dead => {
                Some(format!("engine {id} is dead"))
            }
            Some(_) => None,
        }
    }

    /// Routes an execute request to the engine its metadata names, or answers it with an error.
    async fn on_execute(&mut self, message: Message) {
        let engine_id = match message.metadata_as::<Routing>() {
            Ok(routing) => routing.engine,
            Err(error) => {
                let evalue = format!(
                    "execute_request needs metadata {{\"engine\": <id>}} naming the engine to \
                     run on ({error})"
                );
                return self
                    .reject(message, None, ROUTING_ERROR, &evalue, true)
                    .await;
            }
        };
        if let Some(problem) = self.unavailable(engine_id) {
            return self
                .reject(message, Some(engine_id), ENGINE_ERROR, &problem, true)
                .await;
        }
        if self.tasks.contains_key(message.msg_id()) {
            // Answered, but not recorded: the msg_id's record is the running request's.
            let evalue = format!("a request with msg_id {} is in flight", message.msg_id());
            return self
                .reject(message, Some(engine_id), ROUTING_ERROR, &evalue, false)
                .await;
        }
        self.scheduler.sent(engine_id);
        self.insert_task(new_record(&message, Some(engine_id)), &message);
        self.send_to_engine(engine_id, message, None).await;
    }

    /// Answers an execute request that cannot run, and records it failed.
    pub(super) async fn reject(
        &mut self,
        request: Message,
        engine: Option<EngineId>,
        ename: &str,
        evalue: &str,
        record: bool,
    ) {
        tracing::debug!(%evalue, "execute_request refused");
        let content = execute_error(ename, evalue);
        let metadata = match engine {
            Some(id) => json!({"engine_id": id, "status": "error"}),
            None => json!({"status": "error"}),
        };
        let reply = self
            .session
            .reply(
                &request,
                &parallax_wire::replies::reply_type(request.msg_type()),
                &content,
            )
            .with_metadata(&metadata);
        self.to_client(reply).await;
        if record {
            self.waiting
                .finished(request.msg_id(), Outcome { ok: false, engine });
            let mut record = new_record(&request, engine);
            let now = now_iso8601();
            record.status = "error".into();
            record.completed = Some(now.clone());
            record.received = Some(now);
            record.error = Some(error_fields(&content));
            self.insert_task(record, &request);
        }
    }

    /// Records a task in the database, with the code of its request.
    pub(super) fn insert_task(&self, record: TaskRecord, request: &Message) {
        let code = request
            .content_as::<Code>()
            .map(|c| c.code)
            .unwrap_or_default();
        self.db.send(Command::Insert(Box::new(NewTask {
            record,
            code: truncate(code, RESULT_LIMIT),
        })));
    }
}

/// A task record for a request just received.
pub(super) fn new_record(request: &Message, engine: Option<EngineId>) -> TaskRecord {
    TaskRecord {
        msg_id: request.msg_id().to_owned(),
        client: request.header().session.clone(),
        engine,
        msg_type: request.msg_type().to_owned(),
        status: "pending".into(),
        submitted: Some(now_iso8601()),
        started: None,
        completed: None,
        received: None,
        stdout: String::new(),
        stderr: String::new(),
        error: None,
        result: None,
    }
}

/// Of the requests in flight, the one each engine is running: the first sent to it, since an
/// engine runs what arrives on its one link in order.
fn running_tasks(tasks: &HashMap<String, Task>) -> HashMap<EngineId, (&String, &Task)> {
    let mut first: HashMap<EngineId, (&String, &Task)> = HashMap::new();
    for (msg_id, task) in tasks {
        let earlier = first
            .get(&task.engine)
            .is_some_and(|(_, held)| held.seq < task.seq);
        if !earlier {
            first.insert(task.engine, (msg_id, task));
        }
    }
    first
}

/// When an engine began a request sent at `sent`: then, or when it answered the request before
/// it (`last_reply`), if the request waited behind that one.
fn began(sent: Instant, last_reply: Option<Instant>) -> Instant {
    last_reply.map_or(sent, |reply| reply.max(sent))
}

/// The ISO 8601 date of `at`, knowing that `now` is `now_date`.
fn date_of(at: Instant, now: Instant, now_date: chrono::DateTime<chrono::Utc>) -> String {
    let ago = chrono::Duration::from_std(now.saturating_duration_since(at)).unwrap_or_default();
    (now_date - ago)
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

/// The start of an execute request's code; nothing for other requests.
fn code_of(request: &Message) -> String {
    if request.msg_type() != "execute_request" {
        return String::new();
    }
    let code = request
        .content_as::<Code>()
        .map(|c| c.code)
        .unwrap_or_default();
    truncate(code, RUNNING_CODE_LIMIT)
}

/// `text` cut to at most `limit` bytes (at a character boundary).
fn truncate(mut text: String, limit: usize) -> String {
    if text.len() > limit {
        let mut cut = limit;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use parallax_wire::Session;
    use serde_json::json;

    use super::*;
    use crate::hub::Captured;

    fn task(engine: EngineId, seq: u64, msg_type: &str, code: &str, sent: Instant) -> Task {
        let session = Session::new(b"key", "test");
        Task {
            seq,
            request: session.message(msg_type, &json!({ "code": code })),
            engine,
            stdout: Captured::default(),
            stderr: Captured::default(),
            failed: false,
            balanced: None,
            reclaiming: false,
            via_support: true,
            sent,
        }
    }

    #[test]
    fn each_engine_runs_the_request_sent_to_it_first() {
        let t0 = Instant::now();
        let tasks: HashMap<String, Task> = [
            ("b", task(0, 7, "apply_request", "", t0)),
            ("a", task(0, 3, "apply_request", "", t0)),
            ("c", task(0, 9, "apply_request", "", t0)),
            ("d", task(1, 8, "execute_request", "x = 1", t0)),
        ]
        .into_iter()
        .map(|(id, t)| (id.to_owned(), t))
        .collect();
        let running = running_tasks(&tasks);
        let first: BTreeMap<EngineId, &str> = running
            .iter()
            .map(|(&engine, (msg_id, _))| (engine, msg_id.as_str()))
            .collect();
        assert_eq!(first, BTreeMap::from([(0, "a"), (1, "d")]));
        assert_eq!(code_of(&running[&1].1.request), "x = 1");
        assert_eq!(code_of(&running[&0].1.request), "", "an apply has no code");
        let long = task(2, 1, "execute_request", &"é".repeat(RUNNING_CODE_LIMIT), t0);
        let code = code_of(&long.request);
        assert!(
            code.len() <= RUNNING_CODE_LIMIT && code.starts_with('é'),
            "{code}"
        );
    }

    #[test]
    fn a_request_begins_when_sent_or_when_the_one_before_it_is_answered() {
        let sent = Instant::now();
        let later = sent + Duration::from_secs(3);
        assert_eq!(began(sent, None), sent, "sent to an idle engine");
        assert_eq!(began(later, Some(sent)), later, "the engine was idle");
        assert_eq!(began(sent, Some(later)), later, "it waited behind another");
        let now_date = chrono::DateTime::parse_from_rfc3339("2025-01-02T03:04:10.5Z")
            .expect("date")
            .with_timezone(&chrono::Utc);
        let now = later + Duration::from_millis(1500);
        assert_eq!(date_of(later, now, now_date), "2025-01-02T03:04:09.000000Z");
        assert_eq!(
            date_of(now + Duration::from_secs(1), now, now_date),
            "2025-01-02T03:04:10.500000Z",
            "never in the future"
        );
    }
}
