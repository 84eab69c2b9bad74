//! The kernel's event loop.
//!
//! One task owns all state. It waits for the next [`Event`] (a request from the front end, a
//! message from the local kernel, the local kernel's exit, a signal) and handles it without
//! blocking, so control requests (interrupt, shutdown) are served while a cell runs.
//!
//! Shell requests are served one at a time, in arrival order, as a kernel must: a request becomes
//! *active* when the previous one has finished. Every request, shell or control, is wrapped by
//! [`Kernel::begin`] and [`Kernel::finish`], which publish `busy` and `idle`; the local kernel's
//! own status messages are never forwarded, so the front end sees exactly one `busy` and one
//! `idle` per request, the idle after every output of it.
//!
//! A request forwarded to the local kernel goes with a header of our own; the local kernel's
//! replies and outputs name that header as their parent, and are re-parented to the front end's
//! request (see [`Routes`]) before they are re-signed and sent on. The request is finished when the
//! local kernel has both replied and published `idle` for it.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use parallax_engines::Exit;
use parallax_wire::replies::{error_content, kernel_shell_request, reply_type};
use parallax_wire::Message;
use serde::Deserialize;
use tokio::sync::oneshot;
use tokio::time::Instant;

use parallax_client::ControllerClient;
use parallax_magics::{GroupBy, PxConfig};
use tokio::sync::mpsc;

use crate::frontend::Frontend;
use crate::local::{self, Local};
use crate::px::PxRun;

mod plan;

/// How long a replied request may go without output before its missing `idle` is given up on.
const IDLE_GRACE: Duration = Duration::from_secs(30);
/// How long a local kernel asked to shut down may take before it is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How many forwarded requests are remembered for re-parenting late outputs.
const ROUTES_KEPT: usize = 512;

/// The local kernel's state.
enum LocalState {
    Starting(oneshot::Receiver<Result<Box<Local>, String>>),
    Ready(Box<Local>),
    Failed(String),
}

/// A shell request waiting its turn.
struct Queued {
    request: Message,
    /// Set when an earlier execute failed with `stop_on_error`: answered `aborted`.
    abort: bool,
}

/// The shell request being served.
struct Active {
    request: Message,
    job: Job,
    /// For a cell with parallel magics, the rest of its plan; `None` for a proxied request, whose
    /// local reply goes to the front end as it is.
    plan: Option<plan::PlanState>,
    last_activity: Instant,
}

/// What the active request waits for.
enum Job {
    /// The local kernel.
    Local(LocalJob),
    /// The engines. `group`: show the output grouped when done (`%pxresult`).
    Parallel { run: PxRun, group: Option<GroupBy> },
    /// Nothing: between two steps of a plan.
    Between,
}

/// A request forwarded to the local kernel.
struct LocalJob {
    local_msg_id: String,
    expects_reply: bool,
    reply: Option<Message>,
    idle: bool,
    /// Whether the local kernel's `execute_input` for it has been passed on.
    input_seen: bool,
}

impl LocalJob {
    fn done(&self) -> bool {
        self.idle && (self.reply.is_some() || !self.expects_reply)
    }
}

impl Active {
    fn local(&self) -> Option<&LocalJob> {
        match &self.job {
            Job::Local(job) => Some(job),
            _ => None,
        }
    }

    fn local_mut(&mut self) -> Option<&mut LocalJob> {
        match &mut self.job {
            Job::Local(job) => Some(job),
            _ => None,
        }
    }

    /// Whether `message` is the local kernel's answer to one of this request's local jobs.
    fn is_local_child(&self, message: &Message) -> bool {
        let parent = message.parent_msg_id();
        self.local()
            .is_some_and(|job| parent == Some(job.local_msg_id.as_str()))
    }

    /// The local job `message` answers, if it is the running one.
    fn job_for(&mut self, message: &Message) -> Option<&mut LocalJob> {
        let parent = message.parent_msg_id();
        match &mut self.job {
            Job::Local(job) if parent == Some(job.local_msg_id.as_str()) => Some(job),
            _ => None,
        }
    }
}

/// Which front-end request each forwarded request stands for.
#[derive(Default)]
struct Routes {
    by_local_id: HashMap<String, Message>,
    order: VecDeque<String>,
}

impl Routes {
    fn insert(&mut self, local_msg_id: String, request: &Message) {
        let mut kept = request.clone();
        kept.buffers.clear();
        if self.order.len() >= ROUTES_KEPT {
            if let Some(old) = self.order.pop_front() {
                self.by_local_id.remove(&old);
            }
        }
        self.order.push_back(local_msg_id.clone());
        self.by_local_id.insert(local_msg_id, kept);
    }

    fn get(&self, local_msg_id: Option<&str>) -> Option<&Message> {
        local_msg_id.and_then(|id| self.by_local_id.get(id))
    }
}

/// What woke the loop.
enum Event {
    Shell(Message),
    Control(Message),
    StdinReply(Message),
    LocalIopub(Message),
    LocalReply(Message),
    LocalInput(Message),
    LocalExited(Exit),
    LocalStarted(Result<Box<Local>, String>),
    Interrupt,
    Terminate,
    Stalled,
    FrontendClosed,
    /// A message from the cluster about a parallel step.
    Engine(Message),
    /// Time to show progress of, or check on, the running parallel step.
    PxTimer,
    HistoryDue,
}

/// The fields of an `execute_request` the kernel reads (the defaults are the protocol's).
#[derive(Deserialize)]
struct ExecuteContent {
    #[serde(default)]
    code: String,
    #[serde(default)]
    silent: bool,
    #[serde(default = "yes")]
    store_history: bool,
    #[serde(default = "yes")]
    stop_on_error: bool,
}

impl Default for ExecuteContent {
    fn default() -> Self {
        ExecuteContent {
            code: String::new(),
            silent: false,
            store_history: true,
            stop_on_error: true,
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct ReplyStatus {
    #[serde(default)]
    status: String,
    #[serde(default)]
    execution_count: Option<u64>,
}

#[derive(Deserialize)]
struct StatusContent {
    #[serde(default)]
    execution_state: String,
}

#[derive(Deserialize, Default)]
struct ShutdownContent {
    #[serde(default)]
    restart: bool,
}

/// The parallax kernel's state and loop.
pub struct Kernel {
    front: Frontend,
    local_name: String,
    local: LocalState,
    queue: VecDeque<Queued>,
    active: Option<Active>,
    routes: Routes,
    /// History steps of magic cells already answered (see `plan`), still running in the local
    /// kernel: what it sends for them is taken in here, never shown.
    detached: Vec<LocalJob>,
    /// Magic cells whose history entries the local kernel has not been sent yet (see `plan`),
    /// and when they are sent at the latest.
    pending_history: Vec<(Message, String)>,
    history_due: Option<Instant>,
    execution_count: u64,
    stopping: bool,
    /// The cluster profile `%px` uses.
    profile: String,
    /// The front end's connection file: who owns a cluster started with `%cluster start`.
    connection_file: PathBuf,
    /// `%pxconfig` defaults and the `%autopx` state.
    px: PxConfig,
    /// The controller of `profile`, once connected.
    cluster: Option<ControllerClient>,
    /// Where the controller client delivers engine messages of our requests.
    engine_tx: mpsc::UnboundedSender<Message>,
    engine_rx: mpsc::UnboundedReceiver<Message>,
    /// The last non-blocking parallel run, for `%pxresult`.
    last_async: Option<PxRun>,
}

/// Signal streams the loop listens to.
pub struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs handlers for SIGINT (interrupt the running code) and SIGTERM (shut down).
    pub fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }
}

fn spawn_start(name: String) -> LocalState {
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let _ = tx.send(local::start(&name).await.map(Box::new));
    });
    LocalState::Starting(rx)
}

/// Waits on an inbox that may not exist; without one, never resolves.
async fn recv_from(inbox: Option<&mut parallax_net::Inbox>) -> Option<Message> {
    match inbox {
        Some(inbox) => inbox.recv().await,
        None => std::future::pending().await,
    }
}

impl Kernel {
    /// A kernel serving `front` (whose connection file is `connection_file`), starting its local
    /// kernel `local_name` now.
    pub fn new(
        front: Frontend,
        connection_file: PathBuf,
        local_name: String,
        profile: String,
    ) -> Self {
        let local = spawn_start(local_name.clone());
        let (engine_tx, engine_rx) = mpsc::unbounded_channel();
        Kernel {
            profile,
            connection_file,
            px: PxConfig::default(),
            cluster: None,
            engine_tx,
            engine_rx,
            last_async: None,
            front,
            local_name,
            local,
            queue: VecDeque::new(),
            active: None,
            routes: Routes::default(),
            detached: Vec::new(),
            pending_history: Vec::new(),
            history_due: None,
            execution_count: 0,
            stopping: false,
        }
    }

    /// Serves until shut down (a shutdown request or SIGTERM) or the front end goes away.
    pub async fn run(mut self, mut signals: Signals) {
        self.front.status(None, "starting").await;
        while !self.stopping {
            let event = self.next_event(&mut signals).await;
            self.handle(event).await;
            self.advance().await;
        }
        let rejected = self.front.rejected();
        tracing::info!(rejected, "parallax kernel stopped");
        // zmq.rs `send` only queues: give the last replies a moment to reach the wire.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    async fn next_event(&mut self, signals: &mut Signals) -> Event {
        let far = Instant::now() + Duration::from_secs(3600);
        let stall_at = match self.active.as_ref().and_then(Active::local) {
            Some(job) if job.reply.is_some() || !job.expects_reply => self
                .active
                .as_ref()
                .map_or(far, |a| a.last_activity + IDLE_GRACE),
            _ => far,
        };
        let px_at = self.px_timer().unwrap_or(far);
        let history_at = self.history_due.unwrap_or(far);
        let (iopub, replies, inputs, exited, starting) = match &mut self.local {
            LocalState::Ready(local) => (
                Some(&mut local.client.iopub),
                Some(&mut local.client.shell_replies),
                Some(&mut local.client.stdin_requests),
                Some(local.process.exited()),
                None,
            ),
            LocalState::Starting(rx) => (None, None, None, None, Some(rx)),
            LocalState::Failed(_) => (None, None, None, None, None),
        };
        tokio::select! {
            // Outputs before replies before the exit, so that nothing the local kernel said
            // before it died is reported after its death.
            biased;
            Some(message) = recv_from(iopub) => Event::LocalIopub(message),
            Some(message) = recv_from(replies) => Event::LocalReply(message),
            Some(message) = recv_from(inputs) => Event::LocalInput(message),
            message = self.front.control_requests.recv() => match message {
                Some(message) => Event::Control(message),
                None => Event::FrontendClosed,
            },
            message = self.front.shell_requests.recv() => match message {
                Some(message) => Event::Shell(message),
                None => Event::FrontendClosed,
            },
            message = self.front.stdin_replies.recv() => match message {
                Some(message) => Event::StdinReply(message),
                None => Event::FrontendClosed,
            },
            Some(exit) = async { match exited { Some(f) => Some(f.await), None => None } } => {
                Event::LocalExited(exit)
            }
            Ok(started) = async { match starting { Some(rx) => rx.await, None => std::future::pending().await } } => {
                Event::LocalStarted(started)
            }
            _ = signals.interrupt.recv() => Event::Interrupt,
            _ = signals.terminate.recv() => Event::Terminate,
            Some(message) = self.engine_rx.recv() => Event::Engine(message),
            _ = tokio::time::sleep_until(stall_at) => Event::Stalled,
            _ = tokio::time::sleep_until(px_at) => Event::PxTimer,
            _ = tokio::time::sleep_until(history_at) => Event::HistoryDue,
        }
    }

    async fn handle(&mut self, event: Event) {
        match event {
            Event::Shell(request) => self.queue.push_back(Queued {
                request,
                abort: false,
            }),
            Event::Control(request) => self.on_control(request).await,
            Event::StdinReply(reply) => self.on_stdin_reply(reply).await,
            Event::LocalIopub(message) => self.on_local_iopub(message).await,
            Event::LocalReply(message) => self.on_local_reply(message).await,
            Event::LocalInput(message) => self.on_local_input(message).await,
            Event::LocalExited(exit) => self.on_local_exit(exit).await,
            Event::LocalStarted(Ok(local)) => {
                tracing::info!(
                    kernel = local.name(),
                    pid = local.process.pid(),
                    "local kernel ready"
                );
                self.local = LocalState::Ready(local);
            }
            Event::LocalStarted(Err(reason)) => {
                tracing::error!(%reason, "local kernel failed to start");
                self.local = LocalState::Failed(reason);
            }
            Event::Interrupt => self.interrupt().await,
            Event::Terminate => {
                tracing::info!("SIGTERM: shutting down");
                self.stop_owned_cluster().await;
                self.shutdown_local().await;
                self.stopping = true;
            }
            Event::Stalled => {
                if let Some(job) = self.active.as_mut().and_then(Active::local_mut) {
                    tracing::warn!("the local kernel never reported idle; finishing the request");
                    job.idle = true;
                    job.expects_reply = false;
                }
                self.complete_if_done().await;
            }
            Event::FrontendClosed => {
                self.shutdown_local().await;
                self.stopping = true;
            }
            Event::Engine(message) => self.on_engine_message(message).await,
            Event::PxTimer => self.on_px_timer().await,
            Event::HistoryDue => self.send_history().await,
        }
    }

    /// Publishes `busy` for a request: the one place a request's busy comes from.
    async fn begin(&self, request: &Message) {
        self.front.status(Some(request), "busy").await;
    }

    /// Publishes `idle` for a request: the one place a request's idle comes from.
    async fn finish(&self, request: &Message) {
        self.front.status(Some(request), "idle").await;
    }

    /// Starts queued requests while nothing is active and the local kernel can take them.
    async fn advance(&mut self) {
        while self.active.is_none() && !self.stopping {
            if matches!(self.local, LocalState::Starting(_)) {
                return;
            }
            let Some(queued) = self.queue.pop_front() else {
                return;
            };
            self.start(queued).await;
        }
    }

    async fn start(&mut self, Queued { request, abort }: Queued) {
        self.begin(&request).await;
        let msg_type = request.msg_type().to_owned();
        match msg_type.as_str() {
            "kernel_info_request" => {
                let content = self.kernel_info();
                self.reply(&self.front.shell, &request, &content).await;
            }
            "shutdown_request" => {
                self.shutdown(&request, true).await;
                return;
            }
            "execute_request" if !abort => {
                if let Some(plan) = self.plan_for(&request) {
                    self.start_plan(request, plan).await;
                    return;
                }
                if self.forward(&request, true).await {
                    return;
                }
            }
            "execute_request" => {
                let content = serde_json::json!({ "status": "aborted", "execution_count": null });
                let reply = self
                    .front
                    .session
                    .reply(&request, "execute_reply", &content)
                    .with_metadata(&serde_json::json!({ "status": "aborted" }));
                let _ = self.front.shell.send(reply).await;
            }
            _ => match kernel_shell_request(&msg_type) {
                Some(expects_reply) => {
                    if self.forward(&request, expects_reply).await {
                        return;
                    }
                }
                None => {
                    let content = error_content(
                        "UnknownMessageType",
                        &format!("the parallax kernel does not handle {msg_type:?} messages"),
                    );
                    self.reply(&self.front.shell, &request, &content).await;
                }
            },
        }
        self.finish(&request).await;
    }

    /// Sends a shell request on to the local kernel. Returns true if it is now active; false if it
    /// was answered here (the local kernel could not take it).
    async fn forward(&mut self, request: &Message, expects_reply: bool) -> bool {
        self.send_history().await;
        let local = match &self.local {
            LocalState::Ready(local) => local,
            LocalState::Failed(reason) => {
                let reason = reason.clone();
                if expects_reply {
                    let content = error_content(
                        "LocalKernelUnavailable",
                        &format!("the local kernel is not running: {reason}"),
                    );
                    if request.msg_type() == "execute_request" {
                        self.publish_error(request, &content).await;
                    }
                    self.reply(&self.front.shell, request, &content).await;
                }
                // Try again for the next request: the cause may have been fixed meanwhile.
                self.local = spawn_start(self.local_name.clone());
                return false;
            }
            LocalState::Starting(_) => return false,
        };
        let Some(local_msg_id) = Self::send_local(local, request, request.content.clone()).await
        else {
            return false;
        };
        self.routes.insert(local_msg_id.clone(), request);
        self.active = Some(Active {
            request: request.clone(),
            job: Job::Local(LocalJob {
                local_msg_id,
                expects_reply,
                reply: None,
                idle: false,
                input_seen: false,
            }),
            plan: None,
            last_activity: Instant::now(),
        });
        true
    }

    /// Sends `request`'s type with `content` (and its metadata and buffers) to the local kernel
    /// under a header of ours; returns that header's msg_id.
    async fn send_local(
        local: &Local,
        request: &Message,
        content: parallax_wire::Bytes,
    ) -> Option<String> {
        let mut forwarded = Message::new(local.client.session.header(request.msg_type()), content);
        forwarded.metadata = request.metadata.clone();
        forwarded.buffers = request.buffers.clone();
        let local_msg_id = forwarded.msg_id().to_owned();
        local.client.shell.send(forwarded).await.ok()?;
        Some(local_msg_id)
    }

    async fn on_local_iopub(&mut self, mut message: Message) {
        if self.take_detached(&message) {
            return;
        }
        match message.msg_type() {
            "status" => {
                let idle = message
                    .content_as::<StatusContent>()
                    .map(|s| s.execution_state == "idle")
                    .unwrap_or(false);
                if let Some(active) = &mut self.active {
                    if let Some(job) = active.job_for(&message).filter(|_| idle) {
                        job.idle = true;
                        self.complete_if_done().await;
                    }
                }
                return;
            }
            "iopub_welcome" => return,
            _ => {}
        }
        if let Some(active) = &mut self.active {
            if active.is_local_child(&message) {
                active.last_activity = Instant::now();
                // A plan publishes the cell's one execute_input itself.
                if active.plan.is_some() && message.msg_type() == "execute_input" {
                    return;
                }
                // The count of the running cell, should the kernel die before it replies.
                if message.msg_type() == "execute_input" {
                    if let Some(job) = active.job_for(&message) {
                        job.input_seen = true;
                    }
                    if let Ok(input) = message.content_as::<ReplyStatus>() {
                        self.execution_count =
                            input.execution_count.unwrap_or(self.execution_count);
                    }
                }
            }
        }
        if let Some(request) = self.routes.get(message.parent_msg_id()) {
            message.set_parent(request);
        }
        self.front.publish(message).await;
    }

    async fn on_local_reply(&mut self, mut message: Message) {
        if self.take_detached(&message) {
            return;
        }
        let Some(active) = &mut self.active else {
            return;
        };
        if !active.is_local_child(&message) {
            // A reply to a request of our own (a readiness probe), not the front end's.
            return;
        }
        active.last_activity = Instant::now();
        let status = message.content_as::<ReplyStatus>().ok();
        if let Some(count) = status.as_ref().and_then(|s| s.execution_count) {
            if message.msg_type() == "execute_reply" {
                self.execution_count = count;
            }
        }
        if active.plan.is_some() {
            // The plan answers the cell itself once every step has run.
            if let Some(job) = active.job_for(&message) {
                job.reply = Some(message);
            }
            self.complete_if_done().await;
            return;
        }
        let failed = status.is_some_and(|s| s.status == "error");
        let abort_queue = message.msg_type() == "execute_reply"
            && failed
            && active
                .request
                .content_as::<ExecuteContent>()
                .map(|c| c.stop_on_error && !c.silent)
                .unwrap_or(true);
        message.set_parent(&active.request);
        message.identities = active.request.identities.clone();
        if let Some(job) = active.local_mut() {
            job.reply = Some(message.clone());
        }
        self.front.relay(&self.front.shell, message).await;
        if abort_queue {
            self.abort_queued_executes();
        }
        self.complete_if_done().await;
    }

    /// After a failed execute with `stop_on_error`, every execute request already received is
    /// answered `aborted`, as ipykernel does.
    fn abort_queued_executes(&mut self) {
        while let Ok(request) = self.front.shell_requests.try_recv() {
            self.queue.push_back(Queued {
                request,
                abort: false,
            });
        }
        for queued in &mut self.queue {
            if queued.request.msg_type() == "execute_request" {
                queued.abort = true;
            }
        }
    }

    /// Whether `message` belongs to a detached history step (and was taken in: its reply's
    /// count is the cell's, already announced; its status and input are not shown).
    fn take_detached(&mut self, message: &Message) -> bool {
        let parent = message.parent_msg_id();
        let Some(index) = self
            .detached
            .iter()
            .position(|job| parent == Some(job.local_msg_id.as_str()))
        else {
            return false;
        };
        let job = &mut self.detached[index];
        match message.msg_type() {
            "status" => {
                job.idle |= message
                    .content_as::<StatusContent>()
                    .is_ok_and(|s| s.execution_state == "idle");
            }
            "execute_reply" => {
                if let Some(count) = message
                    .content_as::<ReplyStatus>()
                    .ok()
                    .and_then(|s| s.execution_count)
                {
                    self.execution_count = self.execution_count.max(count);
                }
                job.reply = Some(message.clone());
            }
            _ => {}
        }
        if self.detached[index].done() {
            self.detached.remove(index);
        }
        true
    }

    async fn complete_if_done(&mut self) {
        let done = self
            .active
            .as_ref()
            .and_then(Active::local)
            .is_some_and(LocalJob::done);
        if !done {
            return;
        }
        if self.active.as_ref().is_some_and(|a| a.plan.is_some()) {
            self.local_step_done().await;
        } else if let Some(active) = self.active.take() {
            self.finish(&active.request).await;
        }
    }

    async fn on_local_input(&mut self, mut message: Message) {
        let Some(request) = self.routes.get(message.parent_msg_id()) else {
            tracing::warn!("input request for an unknown cell; ignored");
            return;
        };
        message.set_parent(request);
        message.identities = request.identities.clone();
        self.front.relay(&self.front.stdin, message).await;
    }

    async fn on_stdin_reply(&mut self, mut message: Message) {
        if let LocalState::Ready(local) = &self.local {
            message.identities.clear();
            let _ = local.client.stdin.send(message).await;
        }
    }

    async fn on_local_exit(&mut self, exit: Exit) {
        // Whatever the kernel published before it died is still arriving: pass it on first.
        if let LocalState::Ready(local) = &mut self.local {
            let mut drained = Vec::new();
            while let Ok(Some(message)) =
                tokio::time::timeout(Duration::from_millis(100), local.client.iopub.recv()).await
            {
                drained.push(message);
            }
            for message in drained {
                self.on_local_iopub(message).await;
            }
        }
        // Their cells were answered; a new kernel, which counts from 1, will not answer them.
        self.detached.clear();
        self.pending_history.clear();
        self.history_due = None;
        let name = self.local_name.clone();
        tracing::warn!(kernel = %name, %exit, "local kernel died; starting a new one");
        self.local = spawn_start(name.clone());
        if let Some(active) = self.active.take() {
            let what = if active.request.msg_type() == "execute_request" {
                "cell"
            } else {
                "request"
            };
            let content = error_content(
                "LocalKernelDied",
                &format!(
                    "the local kernel ({name}) died while running this {what} ({exit}). \
                     Parallax is starting a new one: variables defined before are gone."
                ),
            );
            if active.request.msg_type() == "execute_request" {
                self.announce_lost_input(&active).await;
                self.publish_error(&active.request, &content).await;
            }
            let expects_reply =
                active.plan.is_some() || active.local().is_none_or(|job| job.expects_reply);
            if expects_reply {
                self.reply(&self.front.shell, &active.request, &content)
                    .await;
            }
            self.finish(&active.request).await;
        }
    }

    /// A kernel that dies at once (`os._exit`) may take its cell's `execute_input` with it:
    /// ipykernel sends it from a thread. Then we announce the cell ourselves, with the count
    /// the kernel had given it, so the notebook's prompt and the error reply agree.
    async fn announce_lost_input(&mut self, active: &Active) {
        if active.local().is_none_or(|job| job.input_seen) || active.plan.is_some() {
            return;
        }
        let Ok(cell) = active.request.content_as::<ExecuteContent>() else {
            return;
        };
        if cell.silent {
            return;
        }
        if cell.store_history {
            self.execution_count += 1;
        }
        let input =
            serde_json::json!({ "code": cell.code, "execution_count": self.execution_count });
        self.front
            .publish_new(&active.request, "execute_input", &input)
            .await;
    }

    async fn on_control(&mut self, request: Message) {
        self.begin(&request).await;
        match request.msg_type() {
            "kernel_info_request" => {
                let content = self.kernel_info();
                self.reply(&self.front.control, &request, &content).await;
            }
            "interrupt_request" => {
                self.interrupt().await;
                let content = serde_json::json!({ "status": "ok" });
                self.reply(&self.front.control, &request, &content).await;
            }
            "shutdown_request" => {
                self.shutdown(&request, false).await;
                return;
            }
            other => {
                let content = error_content(
                    "UnknownMessageType",
                    &format!("the parallax kernel does not handle {other:?} messages"),
                );
                self.reply(&self.front.control, &request, &content).await;
            }
        }
        self.finish(&request).await;
    }

    /// Interrupts what the active request runs: its engines, or the local kernel.
    async fn interrupt(&mut self) {
        if self.interrupt_engines().await {
            return;
        }
        let LocalState::Ready(local) = &self.local else {
            return;
        };
        match local.process.interrupt() {
            Ok(true) => {}
            Ok(false) => {
                let message = local
                    .client
                    .session
                    .message("interrupt_request", &serde_json::json!({}));
                let _ = local.client.control.send(message).await;
            }
            Err(error) => tracing::warn!(%error, "could not interrupt the local kernel"),
        }
    }

    /// Stops the local kernel, answers the shutdown request, and stops serving. A restart is the
    /// kernel manager's job (it starts a new parallax kernel), as with ipykernel.
    async fn shutdown(&mut self, request: &Message, on_shell: bool) {
        let restart = request
            .content_as::<ShutdownContent>()
            .unwrap_or_default()
            .restart;
        // A restart keeps the cluster: the new kernel has this one's connection file, so it
        // owns the cluster in turn.
        if !restart {
            self.stop_owned_cluster().await;
        }
        self.shutdown_local().await;
        let content = serde_json::json!({ "status": "ok", "restart": restart });
        let channel = if on_shell {
            &self.front.shell
        } else {
            &self.front.control
        };
        self.reply(channel, request, &content).await;
        self.finish(request).await;
        self.stopping = true;
    }

    /// Stops the cluster of our profile if this kernel started it with `%cluster start`.
    async fn stop_owned_cluster(&mut self) {
        let Ok(profile) = parallax_wire::profile::Profile::named(&self.profile) else {
            return;
        };
        self.cluster = None;
        if let Some(done) = crate::owned::stop_if_owned(&profile, &self.connection_file).await {
            tracing::info!("{done}");
        }
    }

    async fn shutdown_local(&mut self) {
        let state = std::mem::replace(
            &mut self.local,
            LocalState::Failed("the kernel is shutting down".into()),
        );
        if let LocalState::Ready(local) = state {
            local.shutdown(SHUTDOWN_GRACE).await;
        }
    }

    fn kernel_info(&self) -> serde_json::Value {
        let info = match &self.local {
            LocalState::Ready(local) => Some(&local.info),
            _ => None,
        };
        local::kernel_info_content(info)
    }

    /// Sends our own reply to `request` on `channel`.
    async fn reply(
        &self,
        channel: &parallax_net::Outbox,
        request: &Message,
        content: &serde_json::Value,
    ) {
        let mut content = content.clone();
        if request.msg_type() == "execute_request" {
            if let Some(map) = content.as_object_mut() {
                map.entry("execution_count")
                    .or_insert(serde_json::json!(self.execution_count));
            }
        }
        let reply = self
            .front
            .session
            .reply(request, &reply_type(request.msg_type()), &content);
        let _ = channel.send(reply).await;
    }

    /// Publishes an `error` output for `request`.
    async fn publish_error(&self, request: &Message, content: &serde_json::Value) {
        let mut output = content.clone();
        if let Some(map) = output.as_object_mut() {
            map.remove("status");
        }
        self.front.publish_new(request, "error", &output).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_forget_the_oldest() {
        let session = parallax_wire::Session::new(b"k", "t");
        let mut routes = Routes::default();
        let first = session.message("execute_request", &serde_json::json!({}));
        routes.insert("local-0".into(), &first);
        for i in 1..=ROUTES_KEPT {
            routes.insert(format!("local-{i}"), &first);
        }
        assert!(routes.get(Some("local-0")).is_none());
        assert!(routes.get(Some(&format!("local-{ROUTES_KEPT}"))).is_some());
        assert_eq!(routes.by_local_id.len(), ROUTES_KEPT);
    }
}
