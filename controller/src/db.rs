//! The task database: `tasks.db` in the profile, SQLite in WAL mode.
//!
//! The hub never touches SQLite. It sends [`Command`]s over a channel to one dedicated thread
//! that owns the connection and writes in batches:
//!
//! - task inserts and updates and engine rows are committed together, [`BATCH_DELAY`] after the
//!   first change of a batch (the thread sleeps meanwhile rather than wake for every change), with
//!   the changes of each task merged into one statement;
//! - a new task's row waits up to [`HOLD_NEW`] for the task to finish, so a short task is one
//!   INSERT with its outcome (the page sees a running task that much later);
//! - stream text is gathered in memory per task and appended at most every [`STREAM_DELAY`] (and
//!   when the task finishes), so a task that prints a line at a time does not rewrite its growing
//!   row, and the WAL, for every line;
//! - a query ([`Command::Get`]) first commits everything pending, so it sees every change sent
//!   before it.
//!
//! Two tables: `tasks` (one row per request: the [`TaskRecord`] fields plus the code) and
//! `engines` (this controller's engine table, mirrored; emptied when a controller starts, since
//! the engines of an earlier controller cannot reach a new one). Tasks left `pending` by an
//! earlier controller are marked failed when a new one opens the file.
//!
//! Sizes are bounded by the hub before anything is sent here: at most [`STREAM_LIMIT`] bytes of
//! each stream and [`RESULT_LIMIT`] bytes of a result or error. An `apply` result's binary
//! buffers are kept when they add up to at most the controller's result limit (so a client
//! that connects later can still get the value); larger ones are recorded by size only.
//!
//! Queries (`query_request`) and purges are answered here too, after a commit of everything
//! pending; the query language is in [`crate::query`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parallax_wire::cluster::{EngineId, EngineInfo, EngineState, TaskRecord, ENGINE_ERROR};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;
use tokio::sync::oneshot;

/// How long a batch of changes waits before it is committed.
pub(crate) const BATCH_DELAY: Duration = Duration::from_millis(5);
/// How long a new task's row may wait for the task's outcome, so that a task that finishes
/// within it is written once (an INSERT) instead of twice (an INSERT, then an UPDATE).
pub(crate) const HOLD_NEW: Duration = Duration::from_millis(200);
/// How long stream text waits before it is appended to its task's row.
pub(crate) const STREAM_DELAY: Duration = Duration::from_secs(1);
/// The most of each stream (stdout, stderr) kept per task, in bytes.
pub(crate) const STREAM_LIMIT: usize = 1 << 20;
/// The largest result or error kept per task, in bytes of JSON.
pub(crate) const RESULT_LIMIT: usize = 1 << 20;

/// Why the task database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot open the task database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot start the task database thread: {0}")]
    Thread(std::io::Error),
}

/// A task to record, with the code it runs.
#[derive(Debug)]
pub(crate) struct NewTask {
    pub record: TaskRecord,
    pub code: String,
}

/// A change to a recorded task.
#[derive(Debug)]
pub(crate) enum Change {
    /// The kernel went busy for it (the engine's time).
    Started(String),
    /// `{ename, evalue, traceback}`.
    Error(Value),
    /// The execute_result's data.
    Result(Value),
    /// A load-balanced task was given to an engine (again, after a retry).
    Assigned(EngineId),
    /// An apply result's buffers: kept (`Some`) when small enough, and their total size.
    Buffers { kept: Option<Vec<Bytes>>, size: u64 },
    /// The reply arrived.
    Finished {
        status: String,
        completed: String,
        received: String,
    },
}

/// What the hub asks of the database thread.
#[derive(Debug)]
pub(crate) enum Command {
    Insert(Box<NewTask>),
    Update {
        msg_id: String,
        change: Change,
    },
    /// Text to append to a task's stdout (or stderr).
    Stream {
        msg_id: String,
        stderr: bool,
        text: String,
    },
    /// Insert or replace an engine's row.
    Engine(Box<EngineInfo>),
    /// Read a task and its kept result buffers; the answer is `Err` with a message when the
    /// query failed.
    Get {
        msg_id: String,
        reply: oneshot::Sender<Result<Option<StoredTask>, String>>,
    },
    /// The records a query selects, with the columns `keys` names (all when `None`).
    Query {
        query: crate::query::Query,
        reply: oneshot::Sender<Result<Vec<Value>, String>>,
    },
    /// Delete finished tasks (those of `msg_ids`, or all); answers how many went.
    Purge {
        msg_ids: Option<Vec<String>>,
        reply: oneshot::Sender<Result<usize, String>>,
    },
}

/// A task as read back: its record and its result's buffers, when they were kept.
#[derive(Debug)]
pub(crate) struct StoredTask {
    pub record: TaskRecord,
    pub buffers: Vec<Bytes>,
}

/// The hub's handle on the database thread.
#[derive(Debug)]
pub(crate) struct TaskDb {
    sender: Sender<Command>,
    thread: JoinHandle<()>,
}

impl TaskDb {
    /// Opens (or creates) the database at `path` and starts its thread. Opening is a few file
    /// operations, done by the caller before the hub starts.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let connection = open_connection(path).map_err(|source| DbError::Open {
            path: path.to_owned(),
            source,
        })?;
        let (sender, receiver) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("parallax-taskdb".into())
            .spawn(move || Writer::new(connection).run(receiver))
            .map_err(DbError::Thread)?;
        Ok(TaskDb { sender, thread })
    }

    /// Queues a command; never waits.
    pub fn send(&self, command: Command) {
        if self.sender.send(command).is_err() {
            tracing::error!("the task database thread has stopped; a change is lost");
        }
    }

    /// Commits everything pending and waits for the thread to close the database.
    pub async fn close(self) {
        let TaskDb { sender, thread } = self;
        drop(sender);
        match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(())) => {}
            _ => tracing::error!("the task database thread failed"),
        }
    }
}

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tasks (
    msg_id    TEXT PRIMARY KEY,
    client    TEXT NOT NULL,
    engine    INTEGER,
    msg_type  TEXT NOT NULL,
    status    TEXT NOT NULL,
    submitted TEXT,
    started   TEXT,
    completed TEXT,
    received  TEXT,
    stdout    TEXT NOT NULL DEFAULT '',
    stderr    TEXT NOT NULL DEFAULT '',
    error     TEXT,
    result    TEXT,
    code      TEXT,
    result_buffers BLOB,
    result_bytes   INTEGER
);
CREATE INDEX IF NOT EXISTS tasks_by_client ON tasks (client);
CREATE TABLE IF NOT EXISTS engines (
    id             INTEGER PRIMARY KEY,
    uuid           TEXT NOT NULL,
    host           TEXT NOT NULL,
    pid            INTEGER NOT NULL,
    kernel         TEXT NOT NULL,
    kernel_pid     INTEGER NOT NULL,
    state          TEXT NOT NULL,
    registered     TEXT NOT NULL,
    last_heartbeat TEXT NOT NULL,
    tasks_done     INTEGER NOT NULL,
    queue          INTEGER NOT NULL
);
PRAGMA user_version = 2;
";

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let connection = Connection::open(path)?;
    connection.busy_timeout(Duration::from_secs(5))?;
    // `journal_mode` answers with the mode it set, so it is a query, not an update.
    let mode: String = connection.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(%mode, "the task database is not in WAL mode");
    }
    connection.execute_batch("PRAGMA synchronous = NORMAL;")?;
    connection.execute_batch(SCHEMA)?;
    add_missing_columns(&connection)?;
    // What an earlier controller left: its engines are gone, its pending tasks never finish.
    connection.execute("DELETE FROM engines", [])?;
    let stale = connection.execute(
        "UPDATE tasks SET status = 'error', error = ?1 WHERE status = 'pending'",
        params![serde_json::json!({
            "ename": ENGINE_ERROR,
            "evalue": "the controller stopped before this request finished",
            "traceback": [],
        })
        .to_string()],
    )?;
    if stale > 0 {
        tracing::info!(
            stale,
            "marked unfinished tasks of an earlier controller failed"
        );
    }
    Ok(connection)
}

/// Brings a `tasks` table made by an older controller up to date.
fn add_missing_columns(connection: &Connection) -> rusqlite::Result<()> {
    let mut statement = connection.prepare("SELECT name FROM pragma_table_info('tasks')")?;
    let columns: Vec<String> = statement
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for (column, kind) in [("result_buffers", "BLOB"), ("result_bytes", "INTEGER")] {
        if !columns.iter().any(|c| c == column) {
            connection.execute_batch(&format!("ALTER TABLE tasks ADD COLUMN {column} {kind}"))?;
        }
    }
    Ok(())
}

/// Stream text waiting to be appended to one task's row.
#[derive(Debug)]
struct PendingStreams {
    stdout: String,
    stderr: String,
    since: Instant,
    /// The task finished: append with the next batch.
    due: bool,
}

/// The database thread's state.
struct Writer {
    connection: Connection,
    /// Inserts and updates of the batch, merged per task, in order of each task's first change.
    changes: Vec<Pending>,
    /// Where each task's entry is in `changes`.
    pending: HashMap<String, usize>,
    engines: BTreeMap<EngineId, EngineInfo>,
    streams: HashMap<String, PendingStreams>,
    batch_since: Option<Instant>,
    /// When the oldest new row held back for its task's outcome must be written.
    held_until: Option<Instant>,
}

impl Writer {
    fn new(connection: Connection) -> Self {
        Writer {
            connection,
            changes: Vec::new(),
            pending: HashMap::new(),
            engines: BTreeMap::new(),
            streams: HashMap::new(),
            batch_since: None,
            held_until: None,
        }
    }

    fn run(mut self, commands: Receiver<Command>) {
        loop {
            if let Some(since) = self.batch_since {
                // A batch is open: let the changes of the next few ms gather instead of waking
                // for each (a task brings several). Reads wait at most this long.
                let due = since + BATCH_DELAY;
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
            } else {
                let received = match self.deadline() {
                    None => commands.recv().map_err(|_| RecvTimeoutError::Disconnected),
                    Some(at) => commands.recv_timeout(at.saturating_duration_since(Instant::now())),
                };
                match received {
                    Ok(command) => self.take(command),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            let mut open = true;
            loop {
                match commands.try_recv() {
                    Ok(command) => self.take(command),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            if !open {
                break;
            }
            if self.deadline().is_some_and(|at| at <= Instant::now()) {
                self.flush(false);
            }
        }
        self.flush(true);
        tracing::debug!("task database closed");
    }

    /// When the next commit is due, if anything is pending.
    fn deadline(&self) -> Option<Instant> {
        let batch = [
            self.batch_since.map(|since| since + BATCH_DELAY),
            self.held_until,
        ]
        .into_iter()
        .flatten()
        .min();
        let streams = self
            .streams
            .values()
            .map(|s| {
                if s.due {
                    s.since.min(Instant::now())
                } else {
                    s.since + STREAM_DELAY
                }
            })
            .min();
        match (batch, streams) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn take(&mut self, command: Command) {
        match command {
            Command::Get { msg_id, reply } => {
                self.flush(true);
                let _ = reply.send(read_task(&self.connection, &msg_id).map_err(|e| e.to_string()));
                return;
            }
            Command::Query { query, reply } => {
                self.flush(true);
                let _ = reply.send(query.run(&self.connection).map_err(|e| e.to_string()));
                return;
            }
            Command::Purge { msg_ids, reply } => {
                self.flush(true);
                let _ = reply.send(purge(&self.connection, msg_ids).map_err(|e| e.to_string()));
                return;
            }
            Command::Stream {
                msg_id,
                stderr,
                text,
            } => {
                let pending = self
                    .streams
                    .entry(msg_id)
                    .or_insert_with(|| PendingStreams {
                        stdout: String::new(),
                        stderr: String::new(),
                        since: Instant::now(),
                        due: false,
                    });
                if stderr {
                    pending.stderr.push_str(&text);
                } else {
                    pending.stdout.push_str(&text);
                }
                return;
            }
            Command::Engine(info) => {
                self.engines.insert(info.id, *info);
            }
            Command::Insert(task) => {
                let entry = Pending::Insert(task, Box::default(), Instant::now());
                match self.pending.get(entry.msg_id()) {
                    // INSERT OR REPLACE: the row starts over.
                    Some(&index) => self.changes[index] = entry,
                    None => {
                        self.pending
                            .insert(entry.msg_id().to_owned(), self.changes.len());
                        self.changes.push(entry);
                    }
                }
            }
            Command::Update { msg_id, change } => {
                if matches!(change, Change::Finished { .. }) {
                    if let Some(pending) = self.streams.get_mut(&msg_id) {
                        pending.due = true;
                    }
                }
                match self.pending.get(&msg_id) {
                    Some(&index) => self.changes[index].add(change),
                    None => {
                        let mut entry = Pending::Update(msg_id.clone(), Box::default());
                        entry.add(change);
                        self.pending.insert(msg_id, self.changes.len());
                        self.changes.push(entry);
                    }
                }
            }
        }
        self.batch_since.get_or_insert_with(Instant::now);
    }

    /// Commits the pending batch and the streams that are due (all of them when `all`).
    fn flush(&mut self, all: bool) {
        let now = Instant::now();
        let due: Vec<String> = self
            .streams
            .iter()
            .filter(|(_, s)| all || s.due || s.since + STREAM_DELAY <= now)
            .map(|(id, _)| id.clone())
            .collect();
        let streams: Vec<(String, PendingStreams)> = due
            .into_iter()
            .filter_map(|id| self.streams.remove_entry(&id))
            .collect();
        let (changes, held): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.changes)
            .into_iter()
            .partition(|change| all || !change.may_wait(now));
        self.pending.clear();
        self.held_until = held.iter().filter_map(Pending::hold_ends).min();
        for entry in held {
            self.pending
                .insert(entry.msg_id().to_owned(), self.changes.len());
            self.changes.push(entry);
        }
        let engines = std::mem::take(&mut self.engines);
        self.batch_since = None;
        if changes.is_empty() && engines.is_empty() && streams.is_empty() {
            return;
        }
        let count = changes.len() + engines.len() + streams.len();
        if let Err(error) = self.commit(changes, engines, streams) {
            tracing::error!(%error, count, "task database write failed; changes lost");
        }
    }

    fn commit(
        &mut self,
        changes: Vec<Pending>,
        engines: BTreeMap<EngineId, EngineInfo>,
        streams: Vec<(String, PendingStreams)>,
    ) -> rusqlite::Result<()> {
        let transaction = self.connection.transaction()?;
        for change in changes {
            change.write(&transaction)?;
        }
        for info in engines.values() {
            write_engine(&transaction, info)?;
        }
        for (msg_id, pending) in streams {
            transaction
                .prepare_cached(
                    "UPDATE tasks SET stdout = stdout || ?2, stderr = stderr || ?3 WHERE msg_id = ?1",
                )?
                .execute(params![msg_id, pending.stdout, pending.stderr],
            )?;
        }
        transaction.commit()
    }
}

fn json_text(value: &Option<Value>) -> Option<String> {
    value.as_ref().map(Value::to_string)
}

/// An apply result's buffers: kept (`Some`) when small enough, and their total size.
type ResultBuffers = (Option<Vec<Bytes>>, u64);

/// One task's changes within a batch, merged, so that each task costs one statement a commit:
/// a task inserted and assigned (or even run) within one batch is one INSERT, and the changes a
/// reply brings (started, buffers, error, finished) are one UPDATE.
enum Pending {
    /// A new row, the changes that came after it (applied to it when written), and when it came.
    Insert(Box<NewTask>, Box<Merged>, Instant),
    /// Changes to a row written in an earlier batch.
    Update(String, Box<Merged>),
}

/// Changes to one row; `None` fields are left as they are.
#[derive(Default)]
struct Merged {
    started: Option<String>,
    error: Option<Value>,
    result: Option<Value>,
    engine: Option<EngineId>,
    buffers: Option<ResultBuffers>,
    /// status, completed, received
    finished: Option<(String, String, String)>,
}

impl Merged {
    /// Adds a later change, as the statement for it would have applied it.
    fn add(&mut self, change: Change) {
        match change {
            Change::Started(at) => {
                self.started.get_or_insert(at);
            }
            Change::Error(error) => self.error = Some(error),
            Change::Result(result) => self.result = Some(result),
            Change::Assigned(engine) => self.engine = Some(engine),
            Change::Buffers { kept, size } => self.buffers = Some((kept, size)),
            Change::Finished {
                status,
                completed,
                received,
            } => self.finished = Some((status, completed, received)),
        }
    }

    /// Applies the changes to a new row; returns the result's buffers, which are not part of
    /// the record.
    fn apply_to(self, r: &mut TaskRecord) -> Option<ResultBuffers> {
        if r.started.is_none() {
            r.started = self.started;
        }
        r.error = self.error.or(r.error.take());
        r.result = self.result.or(r.result.take());
        r.engine = self.engine.or(r.engine);
        if let Some((status, completed, received)) = self.finished {
            r.status = status;
            r.completed = Some(completed);
            r.received = Some(received);
        }
        self.buffers
    }
}

impl Pending {
    fn msg_id(&self) -> &str {
        match self {
            Pending::Insert(task, _, _) => &task.record.msg_id,
            Pending::Update(msg_id, _) => msg_id,
        }
    }

    /// When a new row held back for its task's outcome must be written.
    fn hold_ends(&self) -> Option<Instant> {
        match self {
            Pending::Insert(_, merged, since) if merged.finished.is_none() => {
                Some(*since + HOLD_NEW)
            }
            _ => None,
        }
    }

    /// Whether this can wait for a later batch: a new row whose task has not finished, for at
    /// most [`HOLD_NEW`].
    fn may_wait(&self, now: Instant) -> bool {
        self.hold_ends().is_some_and(|end| end > now)
    }

    fn add(&mut self, change: Change) {
        match self {
            Pending::Insert(_, merged, _) | Pending::Update(_, merged) => merged.add(change),
        }
    }

    fn write(self, db: &Connection) -> rusqlite::Result<()> {
        match self {
            Pending::Insert(task, merged, _) => {
                let NewTask {
                    record: mut r,
                    code,
                } = *task;
                let buffers = merged.apply_to(&mut r);
                let (kept, size) = buffers.map_or((None, None), |(kept, size)| (kept, Some(size)));
                db.prepare_cached(
                    "INSERT OR REPLACE INTO tasks (msg_id, client, engine, msg_type, status,
                        submitted, started, completed, received, stdout, stderr, error, result,
                        code, result_buffers, result_bytes)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
                        ?16)",
                )?
                .execute(params![
                    r.msg_id,
                    r.client,
                    r.engine,
                    r.msg_type,
                    r.status,
                    r.submitted,
                    r.started,
                    r.completed,
                    r.received,
                    r.stdout,
                    r.stderr,
                    json_text(&r.error),
                    json_text(&r.result),
                    code,
                    kept.map(|b| pack_buffers(&b)),
                    size,
                ])?;
            }
            Pending::Update(msg_id, merged) => {
                let Merged {
                    started,
                    error,
                    result,
                    engine,
                    buffers,
                    finished,
                } = *merged;
                let has_buffers = buffers.is_some();
                let (kept, size) = buffers.map_or((None, None), |(kept, size)| (kept, Some(size)));
                let (status, completed, received) = match finished {
                    Some((status, completed, received)) => {
                        (Some(status), Some(completed), Some(received))
                    }
                    None => (None, None, None),
                };
                // `started` keeps the first time it was set; a finished task gets its status
                // and both times together.
                db.prepare_cached(
                    "UPDATE tasks SET
                        started = COALESCE(started, ?2),
                        error = COALESCE(?3, error),
                        result = COALESCE(?4, result),
                        engine = COALESCE(?5, engine),
                        result_buffers = CASE WHEN ?6 THEN ?7 ELSE result_buffers END,
                        result_bytes = CASE WHEN ?6 THEN ?8 ELSE result_bytes END,
                        status = COALESCE(?9, status),
                        completed = CASE WHEN ?9 IS NULL THEN completed ELSE ?10 END,
                        received = CASE WHEN ?9 IS NULL THEN received ELSE ?11 END
                     WHERE msg_id = ?1",
                )?
                .execute(params![
                    msg_id,
                    started,
                    error.map(|e| e.to_string()),
                    result.map(|r| r.to_string()),
                    engine,
                    has_buffers,
                    kept.map(|b| pack_buffers(&b)),
                    size,
                    status,
                    completed,
                    received,
                ])?;
            }
        }
        Ok(())
    }
}

fn state_name(state: EngineState) -> &'static str {
    match state {
        EngineState::Idle => "idle",
        EngineState::Busy => "busy",
        EngineState::Restarting => "restarting",
        EngineState::Dead => "dead",
    }
}

fn write_engine(db: &Connection, e: &EngineInfo) -> rusqlite::Result<()> {
    db.prepare_cached(
        "INSERT OR REPLACE INTO engines (id, uuid, host, pid, kernel, kernel_pid, state,
            registered, last_heartbeat, tasks_done, queue)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        e.id,
        e.uuid,
        e.host,
        e.pid,
        e.kernel,
        e.kernel_pid,
        state_name(e.state),
        e.registered,
        e.last_heartbeat,
        e.tasks_done,
        e.queue,
    ])?;
    Ok(())
}

pub(crate) fn parse_json(column: Option<String>) -> Option<Value> {
    let text = column?;
    match serde_json::from_str(&text) {
        Ok(value) => Some(value),
        // Written by us, so this means the file was edited: show the text rather than nothing.
        Err(_) => Some(Value::String(text)),
    }
}

/// Deletes finished tasks: those named, or all.
fn purge(db: &Connection, msg_ids: Option<Vec<String>>) -> rusqlite::Result<usize> {
    match msg_ids {
        None => db.execute("DELETE FROM tasks WHERE status != 'pending'", []),
        Some(ids) => {
            let mut purged = 0;
            for id in ids {
                purged += db.execute(
                    "DELETE FROM tasks WHERE msg_id = ?1 AND status != 'pending'",
                    params![id],
                )?;
            }
            Ok(purged)
        }
    }
}

/// Buffers as one blob: each as its length (u64, little-endian) then its bytes.
fn pack_buffers(buffers: &[Bytes]) -> Vec<u8> {
    let total: usize = buffers.iter().map(|b| b.len() + 8).sum();
    let mut blob = Vec::with_capacity(total);
    for buffer in buffers {
        blob.extend_from_slice(&(buffer.len() as u64).to_le_bytes());
        blob.extend_from_slice(buffer);
    }
    blob
}

/// The buffers of a blob made by [`pack_buffers`]; a damaged blob yields what it holds whole.
fn unpack_buffers(blob: &[u8]) -> Vec<Bytes> {
    let mut buffers = Vec::new();
    let mut rest = blob;
    while rest.len() >= 8 {
        let (length, tail) = rest.split_at(8);
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(length);
        let Ok(length) = usize::try_from(u64::from_le_bytes(bytes)) else {
            break;
        };
        if length > tail.len() {
            break;
        }
        let (buffer, after) = tail.split_at(length);
        buffers.push(Bytes::copy_from_slice(buffer));
        rest = after;
    }
    buffers
}

fn read_task(db: &Connection, msg_id: &str) -> rusqlite::Result<Option<StoredTask>> {
    db.query_row(
        "SELECT msg_id, client, engine, msg_type, status, submitted, started, completed,
                received, stdout, stderr, error, result, result_buffers
         FROM tasks WHERE msg_id = ?1",
        params![msg_id],
        |row| {
            let blob: Option<Vec<u8>> = row.get(13)?;
            let record = TaskRecord {
                msg_id: row.get(0)?,
                client: row.get(1)?,
                engine: row.get(2)?,
                msg_type: row.get(3)?,
                status: row.get(4)?,
                submitted: row.get(5)?,
                started: row.get(6)?,
                completed: row.get(7)?,
                received: row.get(8)?,
                stdout: row.get(9)?,
                stderr: row.get(10)?,
                error: parse_json(row.get(11)?),
                result: parse_json(row.get(12)?),
            };
            Ok(StoredTask {
                record,
                buffers: blob.as_deref().map(unpack_buffers).unwrap_or_default(),
            })
        },
    )
    .optional()
}

/// `value` if its JSON fits in [`RESULT_LIMIT`] bytes; else, for an object of mime types (a
/// result's data), the entries that fit, with `text/plain` first, plus a note of what was left
/// out (`parallax/omitted`: `{mime type: bytes}`).
pub(crate) fn bounded(value: Value) -> Value {
    let size = |v: &Value| serde_json::to_vec(v).map_or(usize::MAX, |b| b.len());
    if size(&value) <= RESULT_LIMIT {
        return value;
    }
    let Value::Object(entries) = value else {
        return serde_json::json!({ "parallax/omitted": { "value": size(&value) } });
    };
    let mut kept = serde_json::Map::new();
    let mut omitted = serde_json::Map::new();
    let mut budget = RESULT_LIMIT.saturating_sub(1024);
    let mut ordered: Vec<(String, Value)> = entries.into_iter().collect();
    ordered.sort_by_key(|(mime, _)| mime != "text/plain");
    for (mime, entry) in ordered {
        let bytes = size(&entry).saturating_add(mime.len());
        if bytes <= budget {
            budget -= bytes;
            kept.insert(mime, entry);
        } else {
            omitted.insert(mime, Value::from(bytes));
        }
    }
    kept.insert("parallax/omitted".into(), Value::Object(omitted));
    Value::Object(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(msg_id: &str) -> TaskRecord {
        TaskRecord {
            msg_id: msg_id.into(),
            client: "c".into(),
            engine: Some(1),
            msg_type: "execute_request".into(),
            status: "pending".into(),
            submitted: Some("t0".into()),
            started: None,
            completed: None,
            received: None,
            stdout: String::new(),
            stderr: String::new(),
            error: None,
            result: None,
        }
    }

    fn lookup(db: &TaskDb, msg_id: &str) -> Option<StoredTask> {
        let (tx, rx) = oneshot::channel();
        db.send(Command::Get {
            msg_id: msg_id.into(),
            reply: tx,
        });
        rx.blocking_recv().expect("answered").expect("query")
    }

    fn get(db: &TaskDb, msg_id: &str) -> Option<TaskRecord> {
        lookup(db, msg_id).map(|task| task.record)
    }

    #[test]
    fn records_updates_and_streams_and_reads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tasks.db");
        let db = TaskDb::open(&path).expect("open");
        db.send(Command::Insert(Box::new(NewTask {
            record: record("m1"),
            code: "print(1)".into(),
        })));
        for text in ["a", "b\n"] {
            db.send(Command::Stream {
                msg_id: "m1".into(),
                stderr: false,
                text: text.into(),
            });
        }
        db.send(Command::Stream {
            msg_id: "m1".into(),
            stderr: true,
            text: "warn".into(),
        });
        db.send(Command::Update {
            msg_id: "m1".into(),
            change: Change::Started("t1".into()),
        });
        db.send(Command::Update {
            msg_id: "m1".into(),
            change: Change::Result(serde_json::json!({"text/plain": "2"})),
        });
        db.send(Command::Update {
            msg_id: "m1".into(),
            change: Change::Finished {
                status: "ok".into(),
                completed: "t2".into(),
                received: "t3".into(),
            },
        });
        let task = get(&db, "m1").expect("recorded");
        assert_eq!(task.stdout, "ab\n");
        assert_eq!(task.stderr, "warn");
        assert_eq!(task.status, "ok");
        assert_eq!(task.started.as_deref(), Some("t1"));
        assert_eq!(task.received.as_deref(), Some("t3"));
        assert_eq!(task.result, Some(serde_json::json!({"text/plain": "2"})));
        assert_eq!(get(&db, "nope"), None);

        // A pending task of a controller that stopped is failed by the next one.
        db.send(Command::Insert(Box::new(NewTask {
            record: record("m2"),
            code: String::new(),
        })));
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(db.close());
        let db = TaskDb::open(&path).expect("reopen");
        let task = get(&db, "m2").expect("kept");
        assert_eq!(task.status, "error");
        assert_eq!(task.error.expect("error")["ename"], ENGINE_ERROR);
        assert_eq!(get(&db, "m1").expect("kept").stdout, "ab\n");
    }

    fn update(db: &TaskDb, msg_id: &str, change: Change) {
        db.send(Command::Update {
            msg_id: msg_id.into(),
            change,
        });
    }

    fn finished(status: &str, completed: &str) -> Change {
        Change::Finished {
            status: status.into(),
            completed: completed.into(),
            received: "r".into(),
        }
    }

    fn stored(db: &TaskDb, msg_id: &str) -> StoredTask {
        lookup(db, msg_id).expect("recorded")
    }

    #[test]
    fn a_new_row_waits_for_its_outcome_at_most_the_hold() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tasks.db");
        let db = TaskDb::open(&path).expect("open");
        // Another reader of the file, as the Clusters page is.
        let reader = Connection::open(&path).expect("reader");
        let status = |msg_id: &str| -> Option<String> {
            reader
                .query_row(
                    "SELECT status FROM tasks WHERE msg_id = ?1",
                    [msg_id],
                    |row| row.get(0),
                )
                .optional()
                .expect("query")
        };
        let wait_for = |msg_id: &str, wanted: &str| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while status(msg_id).as_deref() != Some(wanted) {
                assert!(Instant::now() < deadline, "{msg_id} never became {wanted}");
                std::thread::sleep(BATCH_DELAY);
            }
        };
        let sent = Instant::now();
        for msg_id in ["running", "quick"] {
            db.send(Command::Insert(Box::new(NewTask {
                record: record(msg_id),
                code: String::new(),
            })));
        }
        update(&db, "quick", Change::Assigned(1));
        std::thread::sleep(BATCH_DELAY * 4);
        let (running, quick) = (status("running"), status("quick"));
        // Unless this thread was held up longer than the checks take (a loaded machine).
        let checks = Duration::from_millis(100);
        assert!(HOLD_NEW > checks, "the checks must fit in the hold");
        if sent.elapsed() < checks {
            assert_eq!(
                (running, quick),
                (None, None),
                "both held for their outcome"
            );
        }
        update(&db, "quick", finished("ok", "c"));
        wait_for("quick", "ok");
        // The unfinished one is written once its hold ends, without waiting for anything else.
        wait_for("running", "pending");
        assert!(sent.elapsed() >= HOLD_NEW);
        // A read through the database thread sees held rows at once.
        db.send(Command::Insert(Box::new(NewTask {
            record: record("third"),
            code: String::new(),
        })));
        assert_eq!(stored(&db, "third").record.status, "pending");
        assert_eq!(status("third").as_deref(), Some("pending"));
    }

    #[test]
    fn changes_merged_in_a_batch_read_back_as_written_one_by_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = TaskDb::open(&dir.path().join("tasks.db")).expect("open");
        let buffers = Change::Buffers {
            kept: Some(vec![Bytes::from_static(b"pickle")]),
            size: 6,
        };
        // One batch: inserted, assigned, run and finished (one INSERT).
        let mut queued = record("fast");
        queued.engine = None;
        db.send(Command::Insert(Box::new(NewTask {
            record: queued,
            code: String::new(),
        })));
        update(&db, "fast", Change::Assigned(3));
        update(&db, "fast", Change::Started("s1".into()));
        update(&db, "fast", Change::Started("s2".into()));
        update(&db, "fast", buffers);
        update(&db, "fast", finished("ok", "c1"));
        let fast = stored(&db, "fast");
        assert_eq!(fast.record.engine, Some(3));
        assert_eq!(
            fast.record.started.as_deref(),
            Some("s1"),
            "the first start"
        );
        assert_eq!(fast.record.status, "ok");
        assert_eq!(fast.record.completed.as_deref(), Some("c1"));
        assert_eq!(fast.buffers, [Bytes::from_static(b"pickle")]);

        // Written first, then changed over two later batches (UPDATEs).
        db.send(Command::Insert(Box::new(NewTask {
            record: record("slow"),
            code: String::new(),
        })));
        assert_eq!(stored(&db, "slow").record.status, "pending");
        update(&db, "slow", Change::Started("s1".into()));
        update(&db, "slow", Change::Assigned(2));
        assert_eq!(stored(&db, "slow").record.started.as_deref(), Some("s1"));
        update(&db, "slow", Change::Started("s2".into()));
        update(
            &db,
            "slow",
            Change::Error(serde_json::json!({"ename": "E"})),
        );
        update(&db, "slow", finished("error", "c2"));
        let slow = stored(&db, "slow").record;
        assert_eq!(
            slow.started.as_deref(),
            Some("s1"),
            "a later start does not replace it"
        );
        assert_eq!(slow.engine, Some(2));
        assert_eq!(slow.status, "error");
        assert_eq!(slow.completed.as_deref(), Some("c2"));
        assert_eq!(slow.received.as_deref(), Some("r"));
        assert_eq!(slow.error, Some(serde_json::json!({"ename": "E"})));
        assert!(stored(&db, "slow").buffers.is_empty());
    }

    #[test]
    fn big_results_keep_what_fits() {
        let small = serde_json::json!({"text/plain": "1"});
        assert_eq!(bounded(small.clone()), small);
        let big = serde_json::json!({
            "text/plain": "<Figure>",
            "image/png": "x".repeat(RESULT_LIMIT + 10),
        });
        let kept = bounded(big);
        assert_eq!(kept["text/plain"], "<Figure>");
        assert!(kept.get("image/png").is_none());
        assert!(
            kept["parallax/omitted"]["image/png"]
                .as_u64()
                .expect("size")
                > 1 << 20
        );
    }
}
