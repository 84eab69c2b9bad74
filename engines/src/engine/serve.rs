//! The engine's event loop.
//!
//! One task owns all state. It waits for the next [`Event`] — a message from the controller, a
//! message or the exit of the kernel, a chunk of the kernel's fd output, a timer, the shutdown
//! future — and handles it without blocking on the kernel, so heartbeats, interrupts and shutdown
//! are served while code runs and while a dead kernel is being replaced.
//!
//! Registration happens in the loop too: once at startup (the kernel is ready when the loop
//! starts) and again, under the same id, after each kernel restart. Heartbeats start with the
//! first `register_reply` and go on through restarts, so the controller can tell "restarting"
//! from "gone".

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parallax_net::{Inbox, LinkStats, Outbox};
use parallax_wire::cluster::{
    died_while_running, EngineId, Heartbeat, KernelDied, RegisterReply, RegisterRequest,
    ENGINE_ERROR, HEARTBEAT_INTERVAL,
};
use parallax_wire::replies::{error_content, kernel_shell_request, reply_type};
use parallax_wire::{to_json_bytes, Message, Session};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::inflight::{InFlight, Reply};
use super::kernel::{recv_chunk, Chunk, EngineKernel};
use super::support::Attach;
use super::{hostname, EngineError, EngineOptions, CONTROLLER_TIMEOUT};
use crate::launch::Exit;

/// Requests the engine itself sends to its kernel (readiness probes, interrupt in message mode,
/// shutdown): what the kernel publishes for them is not the controller's business.
const OWN_REQUESTS: &[&str] = &[
    "kernel_info_request",
    "interrupt_request",
    "shutdown_request",
];

/// After the kernel died, how long to wait for messages it sent before dying.
const DRAIN_QUIET: Duration = Duration::from_millis(100);
/// ... and how long at most.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);
/// How long to wait at exit for the last messages to leave.
const FLUSH_LIMIT: Duration = Duration::from_secs(1);

/// The link to the controller.
pub(super) struct Link {
    /// Signs with the cluster key.
    pub session: Session,
    pub outbox: Outbox,
    pub inbox: Inbox,
    /// Our routing identity, as registered.
    pub uuid: String,
    /// How a new kernel's engine support reaches the controller.
    pub attach: Attach,
    /// The link's counters, and why the controller refused its handshake, if it did.
    pub stats: Arc<LinkStats>,
    /// Where it dials.
    pub url: String,
}

enum KernelState {
    Ready(Box<EngineKernel>),
    /// A new kernel is starting after the previous one died.
    Starting(JoinHandle<Result<Box<EngineKernel>, EngineError>>),
    Gone,
}

/// What woke the loop.
enum Event {
    Controller(Message),
    LinkClosed,
    Iopub(Message),
    ShellReply(Message),
    /// Replies on control and stdin requests: nothing to do (stdin is disallowed).
    Ignored(Message),
    Output(Chunk),
    KernelExited(Exit),
    KernelStarted(Result<Box<EngineKernel>, EngineError>),
    HeartbeatTick,
    RegisterTimeout,
    Stalled,
    Shutdown,
}

#[derive(Deserialize)]
struct StatusContent {
    #[serde(default)]
    execution_state: String,
}

/// A registration waiting for its reply: asked again with backoff until the deadline.
#[derive(Clone, Copy, Debug)]
struct Registering {
    started: Instant,
    deadline: Instant,
    /// When to ask again.
    next: Instant,
    attempts: u32,
}

impl Registering {
    /// The first wait for a reply; it doubles with every attempt, up to `MAX_WAIT`.
    const FIRST_WAIT: Duration = Duration::from_secs(2);
    const MAX_WAIT: Duration = Duration::from_secs(8);

    fn new(timeout: Duration) -> Self {
        let now = Instant::now();
        Registering {
            started: now,
            deadline: now + timeout,
            next: now + Self::FIRST_WAIT,
            attempts: 1,
        }
    }

    /// When the next thing happens: asking again, or giving up.
    fn wake(&self) -> Instant {
        self.next.min(self.deadline)
    }

    fn again(&mut self) {
        let wait = (Self::FIRST_WAIT * 2u32.saturating_pow(self.attempts)).min(Self::MAX_WAIT);
        self.attempts += 1;
        self.next = Instant::now() + wait;
    }
}

/// The engine's state.
pub(super) struct Engine {
    options: EngineOptions,
    link: Link,
    kernel: KernelState,
    host: String,
    /// Our id, once the controller has given us one.
    id: Option<EngineId>,
    /// While a `register_request` waits for its reply.
    registering: Option<Registering>,
    heartbeat: Option<Interval>,
    /// When the controller was last heard from.
    last_heard: Instant,
    in_flight: InFlight,
    /// Requests that arrived while a new kernel was starting.
    waiting: VecDeque<Message>,
    /// When `run` started, for the startup time.
    started: Instant,
}

/// Waits on an inbox that may not exist; without one, never resolves.
async fn recv_from(inbox: Option<&mut Inbox>) -> Option<Message> {
    match inbox {
        Some(inbox) => inbox.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

impl Engine {
    pub(super) fn new(
        options: EngineOptions,
        link: Link,
        kernel: EngineKernel,
        started: Instant,
    ) -> Self {
        Engine {
            options,
            link,
            kernel: KernelState::Ready(Box::new(kernel)),
            host: hostname(),
            id: None,
            registering: None,
            heartbeat: None,
            last_heard: Instant::now(),
            in_flight: InFlight::default(),
            waiting: VecDeque::new(),
            started,
        }
    }

    /// Registers, then serves until stopped; the kernel is stopped on every way out.
    pub(super) async fn serve(
        mut self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), EngineError> {
        tokio::pin!(shutdown);
        self.register().await;
        let outcome = loop {
            let event = self.next_event(&mut shutdown).await;
            if let Some(outcome) = self.handle(event).await {
                break outcome;
            }
        };
        self.stop_kernel().await;
        if !matches!(outcome, Err(EngineError::ControllerGone(_))) {
            self.flush().await;
        }
        match &outcome {
            Ok(()) => tracing::info!(id = ?self.id, "engine stopped"),
            Err(error) => tracing::error!(id = ?self.id, %error, "engine stopped"),
        }
        outcome
    }

    async fn next_event<F: Future<Output = ()>>(
        &mut self,
        shutdown: &mut std::pin::Pin<&mut F>,
    ) -> Event {
        let stall = self.in_flight.next_stall();
        let registering = self.registering.map(|r| r.wake());
        let (iopub, replies, control, stdin, output, exited, starting) = match &mut self.kernel {
            KernelState::Ready(kernel) => (
                Some(&mut kernel.client.iopub),
                Some(&mut kernel.client.shell_replies),
                Some(&mut kernel.client.control_replies),
                Some(&mut kernel.client.stdin_requests),
                kernel.output.as_mut(),
                Some(kernel.process.exited()),
                None,
            ),
            KernelState::Starting(handle) => (None, None, None, None, None, None, Some(handle)),
            KernelState::Gone => (None, None, None, None, None, None, None),
        };
        let heartbeat = &mut self.heartbeat;
        let tick = async {
            match heartbeat {
                Some(interval) => {
                    interval.tick().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            message = self.link.inbox.recv() => match message {
                Some(message) => Event::Controller(message),
                None => Event::LinkClosed,
            },
            Some(message) = recv_from(iopub) => Event::Iopub(message),
            Some(message) = recv_from(replies) => Event::ShellReply(message),
            Some(message) = recv_from(control) => Event::Ignored(message),
            Some(message) = recv_from(stdin) => Event::Ignored(message),
            Some(chunk) = recv_chunk(output) => Event::Output(chunk),
            Some(exit) = async { match exited { Some(exited) => Some(exited.await), None => None } } => {
                Event::KernelExited(exit)
            }
            Some(started) = async { match starting { Some(handle) => Some(handle.await), None => None } } => {
                Event::KernelStarted(started.unwrap_or_else(|error| Err(EngineError::KernelStart {
                    kernel: self.options.kernel.clone(),
                    reason: format!("the start task failed: {error}"),
                })))
            }
            () = tick => Event::HeartbeatTick,
            () = sleep_until(registering) => Event::RegisterTimeout,
            () = sleep_until(stall) => Event::Stalled,
            () = shutdown.as_mut() => Event::Shutdown,
        }
    }

    /// Handles one event; `Some` when the engine must stop, with the outcome.
    async fn handle(&mut self, event: Event) -> Option<Result<(), EngineError>> {
        match event {
            Event::Controller(message) => {
                self.last_heard = Instant::now();
                return self.on_controller(message).await;
            }
            Event::LinkClosed => return Some(Err(EngineError::LinkClosed)),
            Event::Iopub(message) => self.on_iopub(message).await,
            Event::ShellReply(message) => self.on_shell_reply(message).await,
            Event::Ignored(message) => {
                tracing::debug!(msg_type = message.msg_type(), "ignored a kernel message");
            }
            Event::Output(chunk) => self.on_output(chunk).await,
            Event::KernelExited(exit) => return self.on_kernel_exit(exit).await,
            Event::KernelStarted(Ok(kernel)) => {
                tracing::info!(pid = kernel.process.pid(), "new kernel ready");
                self.kernel = KernelState::Ready(kernel);
                self.register().await;
                while let Some(request) = self.waiting.pop_front() {
                    self.relay(request).await;
                }
            }
            Event::KernelStarted(Err(error)) => {
                self.kernel = KernelState::Gone;
                // The controller was told a new kernel was coming: say it is not.
                if let Some(id) = self.id {
                    let died = KernelDied {
                        id,
                        exit: format!("restart failed: {error}"),
                        restarting: false,
                    };
                    let message = self.link.session.message("kernel_died", &died);
                    self.to_controller(message).await;
                }
                self.abandon_requests("could not restart its kernel").await;
                return Some(Err(error));
            }
            Event::HeartbeatTick => {
                if self.last_heard.elapsed() > CONTROLLER_TIMEOUT {
                    return Some(Err(EngineError::ControllerGone(CONTROLLER_TIMEOUT)));
                }
                if let Some(id) = self.id {
                    let heartbeat = self.link.session.message("heartbeat", &Heartbeat { id });
                    self.to_controller(heartbeat).await;
                }
            }
            Event::RegisterTimeout => {
                let mut registering = self.registering?;
                if Instant::now() >= registering.deadline {
                    return Some(Err(EngineError::RegisterTimeout {
                        url: self.link.url.clone(),
                        after: registering.deadline - registering.started,
                        attempts: registering.attempts,
                        connection: self.link.stats.connection(),
                    }));
                }
                tracing::info!(
                    url = %self.link.url,
                    attempts = registering.attempts,
                    connection = %self.link.stats.connection(),
                    "no register_reply yet; asking again"
                );
                registering.again();
                self.send_register_request().await;
                self.registering = Some(registering);
            }
            Event::Stalled => {
                for reply in self.in_flight.release_stalled(Instant::now()) {
                    tracing::warn!(
                        parent = reply.parent_msg_id(),
                        "the kernel never reported idle; sending its reply"
                    );
                    self.to_controller(reply).await;
                }
            }
            Event::Shutdown => {
                tracing::info!("asked to stop");
                self.abandon_requests("was shut down").await;
                // Say goodbye, so the controller need not wait for heartbeats to stop.
                if let Some(id) = self.id {
                    let goodbye = self
                        .link
                        .session
                        .message("unregister", &parallax_wire::cluster::Heartbeat { id });
                    self.to_controller(goodbye).await;
                }
                return Some(Ok(()));
            }
        }
        None
    }

    async fn on_controller(&mut self, message: Message) -> Option<Result<(), EngineError>> {
        let msg_type = message.msg_type().to_owned();
        match msg_type.as_str() {
            "heartbeat_reply" => {}
            "register_reply" => return self.on_register_reply(&message),
            "interrupt_request" => {
                let signal = message
                    .content_as::<parallax_wire::cluster::InterruptRequest>()
                    .ok()
                    .and_then(|r| r.signal);
                if let KernelState::Ready(kernel) = &self.kernel {
                    tracing::info!(
                        pid = kernel.process.pid(),
                        ?signal,
                        "interrupting the kernel"
                    );
                    kernel.interrupt(signal.as_deref()).await;
                } else {
                    tracing::warn!("an interrupt arrived while no kernel runs");
                }
                self.reply(&message, &json!({ "status": "ok" })).await;
            }
            "shutdown_request" => {
                tracing::info!("shutdown requested by the controller");
                self.abandon_requests("was shut down").await;
                self.stop_kernel().await;
                self.reply(&message, &json!({ "status": "ok", "restart": false }))
                    .await;
                return Some(Ok(()));
            }
            t if kernel_shell_request(t).is_some() => match self.kernel {
                KernelState::Ready(_) => self.relay(message).await,
                _ => self.waiting.push_back(message),
            },
            other => {
                tracing::warn!(msg_type = other, "unknown request from the controller");
                let content = error_content(
                    "UnknownMessageType",
                    &format!("the engine does not handle {other:?} messages"),
                );
                self.reply(&message, &content).await;
            }
        }
        None
    }

    /// Registers the ready kernel (with our id, if we have one): sends `register_request`, and
    /// again with backoff until a reply or the deadline (`EngineOptions::register_timeout`).
    async fn register(&mut self) {
        if self.send_register_request().await {
            self.registering = Some(Registering::new(self.options.register_timeout));
        }
    }

    /// Sends one `register_request`; false when there is no ready kernel to register.
    async fn send_register_request(&mut self) -> bool {
        let KernelState::Ready(kernel) = &self.kernel else {
            return false;
        };
        let request = RegisterRequest {
            uuid: self.link.uuid.clone(),
            host: self.host.clone(),
            pid: std::process::id(),
            kernel: kernel.name().to_owned(),
            kernel_pid: kernel.process.pid(),
            id: self.id.or(self.options.id),
        };
        let message = self.link.session.message("register_request", &request);
        self.to_controller(message).await;
        true
    }

    fn on_register_reply(&mut self, message: &Message) -> Option<Result<(), EngineError>> {
        if self.registering.is_none() {
            // The answer to a request sent again while the first answer was on its way.
            tracing::debug!("register_reply without a pending register_request; ignored");
            return None;
        }
        let reply = match message.content_as::<RegisterReply>() {
            Ok(reply) => reply,
            Err(error) => {
                return Some(Err(EngineError::Refused {
                    reason: format!("unreadable register_reply: {error}"),
                }))
            }
        };
        let id = match (reply.status.as_str(), reply.id) {
            ("ok", Some(id)) => id,
            (status, _) => {
                let reason = reply
                    .evalue
                    .unwrap_or_else(|| format!("status {status:?} without an id"));
                return Some(Err(EngineError::Refused { reason }));
            }
        };
        self.registering = None;
        if self.id.is_some_and(|old| old != id) {
            tracing::warn!(old = ?self.id, new = id, "registered under a different id");
        }
        if let Some(wanted) = self.options.id.filter(|w| self.id.is_none() && *w != id) {
            // An MPI rank's id is its rank; another live engine holds it.
            tracing::warn!(
                wanted,
                id,
                "registered under another id than the one asked for"
            );
        }
        if self.id.is_none() {
            tracing::info!(
                id,
                elapsed_ms = self.started.elapsed().as_millis() as u64,
                "registered"
            );
        } else {
            tracing::info!(id, "registered again");
        }
        self.id = Some(id);
        let seconds = if reply.heartbeat_interval.is_finite() && reply.heartbeat_interval > 0.0 {
            reply.heartbeat_interval.clamp(0.01, 60.0)
        } else {
            HEARTBEAT_INTERVAL
        };
        let period = Duration::from_secs_f64(seconds);
        let mut interval = tokio::time::interval_at(Instant::now() + period, period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        self.heartbeat = Some(interval);
        None
    }

    /// Sends a request on to the kernel, header untouched, and tracks it.
    async fn relay(&mut self, mut request: Message) {
        let KernelState::Ready(kernel) = &self.kernel else {
            self.waiting.push_back(request);
            return;
        };
        request.identities.clear();
        if request.msg_type() == "execute_request" {
            if let Some(content) = without_stdin(&request.content) {
                request.content = content;
            }
        }
        let expects_reply = kernel_shell_request(request.msg_type()) == Some(true);
        if expects_reply {
            self.in_flight.push(&request, Instant::now());
        }
        let msg_id = request.msg_id().to_owned();
        tracing::debug!(
            msg_type = request.msg_type(),
            %msg_id,
            in_flight = self.in_flight.len(),
            "relaying"
        );
        if kernel.client.shell.send(request).await.is_err() {
            // The kernel's socket task is gone: its exit, about to be handled, answers this.
            tracing::warn!(%msg_id, "could not send a request to the kernel");
        }
    }

    async fn on_iopub(&mut self, mut message: Message) {
        if message.msg_type() == "iopub_welcome" {
            return;
        }
        let parent_id = message.parent_msg_id().map(str::to_owned);
        let own = message
            .parent()
            .msg_type
            .as_deref()
            .is_some_and(|t| OWN_REQUESTS.contains(&t))
            && !parent_id
                .as_deref()
                .is_some_and(|id| self.in_flight.contains(id));
        if own || self.id.is_none() {
            tracing::trace!(msg_type = message.msg_type(), "kernel output not relayed");
            return;
        }
        self.in_flight.touch(parent_id.as_deref(), Instant::now());
        let idle = message.msg_type() == "status"
            && message
                .content_as::<StatusContent>()
                .is_ok_and(|s| s.execution_state == "idle");
        // Unchanged, but for the PUB topic, which means nothing on the engine link.
        message.identities.clear();
        self.to_controller(message).await;
        if idle {
            if let Some(reply) = self.in_flight.on_idle(parent_id.as_deref()) {
                self.to_controller(reply).await;
            }
        }
    }

    async fn on_shell_reply(&mut self, reply: Message) {
        match self.in_flight.on_reply(reply, Instant::now()) {
            Reply::Send(reply) => self.to_controller(reply).await,
            Reply::Held => {}
            Reply::Unknown(reply) => {
                tracing::debug!(msg_type = reply.msg_type(), "reply to a request of our own");
            }
        }
    }

    /// Output written to the kernel's fds: a `stream` of the request running, if any.
    async fn on_output(&mut self, chunk: Chunk) {
        if self.id.is_none() {
            tracing::info!(stream = chunk.name.as_str(), text = %chunk.text.trim_end(), "kernel output");
            return;
        }
        let content = json!({ "name": chunk.name.as_str(), "text": chunk.text });
        let mut stream = self.link.session.message("stream", &content);
        if let Some(request) = self.in_flight.oldest() {
            stream.set_parent(request);
        }
        self.to_controller(stream).await;
    }

    /// The kernel died: pass on what it said before dying, answer what it was running, report
    /// the death, and start a new kernel (or stop).
    async fn on_kernel_exit(&mut self, exit: Exit) -> Option<Result<(), EngineError>> {
        let state = std::mem::replace(&mut self.kernel, KernelState::Gone);
        let KernelState::Ready(mut kernel) = state else {
            self.kernel = state;
            return None;
        };
        let name = kernel.name().to_owned();
        tracing::warn!(kernel = %name, %exit, id = ?self.id, "kernel died");
        for event in drain(&mut kernel).await {
            match event {
                Event::Iopub(message) => self.on_iopub(message).await,
                Event::ShellReply(message) => self.on_shell_reply(message).await,
                Event::Output(chunk) => self.on_output(chunk).await,
                _ => {}
            }
        }
        let spec = kernel.process.spec().clone();
        drop(kernel);

        let Some(id) = self.id else {
            return Some(Err(EngineError::KernelStart {
                kernel: name,
                reason: format!("it exited before the engine registered ({exit})"),
            }));
        };
        for entry in self.in_flight.take_all() {
            // A request the kernel answered, whose idle died with it, still gets its reply.
            if let Some(reply) = entry.reply {
                self.to_controller(reply).await;
                continue;
            }
            let evalue = died_while_running(id);
            let content = json!({
                "status": "error",
                "ename": ENGINE_ERROR,
                "evalue": evalue,
                "traceback": [format!("{ENGINE_ERROR}: {evalue}: its kernel ({name}) ended: {exit}")],
                "execution_count": null,
            });
            self.reply(&entry.request, &content).await;
        }
        let restarting = self.options.restart_kernel;
        let died = KernelDied {
            id,
            exit: exit.to_string(),
            restarting,
        };
        let message = self.link.session.message("kernel_died", &died);
        self.to_controller(message).await;
        // A registration in progress was for the kernel that died.
        self.registering = None;
        if !restarting {
            return Some(Err(EngineError::KernelDied {
                id,
                kernel: name,
                exit: exit.to_string(),
            }));
        }
        tracing::info!(kernel = %name, "starting a new kernel");
        let attach = self.link.attach.clone();
        self.kernel = KernelState::Starting(tokio::spawn(async move {
            EngineKernel::start(spec, attach).await.map(Box::new)
        }));
        None
    }

    /// Answers every request not yet answered with an `EngineError` saying the engine `what`.
    async fn abandon_requests(&mut self, what: &str) {
        let evalue = match self.id {
            Some(id) => format!("engine {id} {what} while running this request"),
            None => format!("the engine {what} while running this request"),
        };
        let waiting: Vec<Message> = self.waiting.drain(..).collect();
        let entries = self.in_flight.take_all().into_iter().map(|e| e.request);
        for request in entries.chain(waiting) {
            let mut content = error_content(ENGINE_ERROR, &evalue);
            content["execution_count"] = Value::Null;
            self.reply(&request, &content).await;
        }
    }

    /// Stops the kernel, whatever its state, and waits until it has exited.
    async fn stop_kernel(&mut self) {
        match std::mem::replace(&mut self.kernel, KernelState::Gone) {
            KernelState::Ready(kernel) => {
                kernel.shutdown().await;
            }
            KernelState::Starting(handle) => {
                handle.abort();
                // Aborting drops a half-started kernel, which kills it; one that finished
                // starting meanwhile is killed here.
                if let Ok(Ok(kernel)) = handle.await {
                    kernel.process.kill().await;
                }
            }
            KernelState::Gone => {}
        }
    }

    /// Our own reply to `request`.
    async fn reply(&self, request: &Message, content: &Value) {
        let reply = self
            .link
            .session
            .reply(request, &reply_type(request.msg_type()), content);
        self.to_controller(reply).await;
    }

    async fn to_controller(&self, mut message: Message) {
        message.identities.clear();
        if self.link.outbox.send(message).await.is_err() {
            tracing::debug!("the controller link is closed");
        }
    }

    /// Waits until the link's socket task has taken every message queued for it, then a moment
    /// for the last one to be written: zmq.rs's `send` only queues, and nothing reports when a
    /// message has left.
    async fn flush(&self) {
        let deadline = Instant::now() + FLUSH_LIMIT;
        let outbox = &self.link.outbox;
        while outbox.capacity() < outbox.max_capacity() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a dead kernel's sockets and pipes still deliver: until they have been quiet for a
/// moment (a dead peer is never reported by a socket).
async fn drain(kernel: &mut EngineKernel) -> Vec<Event> {
    let limit = Instant::now() + DRAIN_LIMIT;
    let mut events = Vec::new();
    loop {
        let quiet = (Instant::now() + DRAIN_QUIET).min(limit);
        let event = tokio::select! {
            biased;
            Some(message) = kernel.client.iopub.recv() => Event::Iopub(message),
            Some(message) = kernel.client.shell_replies.recv() => Event::ShellReply(message),
            Some(chunk) = recv_chunk(kernel.output.as_mut()) => Event::Output(chunk),
            () = tokio::time::sleep_until(quiet) => break,
        };
        events.push(event);
    }
    events
}

/// An execute request's content with `allow_stdin: false` (nobody answers `input()` on an
/// engine), or `None` when it already says so and can go as it came.
fn without_stdin(content: &bytes::Bytes) -> Option<bytes::Bytes> {
    let mut map: serde_json::Map<String, Value> = serde_json::from_slice(content).ok()?;
    if map.get("allow_stdin") == Some(&Value::Bool(false)) {
        return None;
    }
    map.insert("allow_stdin".to_owned(), Value::Bool(false));
    Some(to_json_bytes(&map))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdin_is_disallowed_without_touching_what_needs_no_change() {
        let already = bytes::Bytes::from_static(br#"{"code":"1","allow_stdin":false}"#);
        assert!(without_stdin(&already).is_none());
        for content in [
            br#"{"code":"input()","allow_stdin":true}"#.as_slice(),
            br#"{"code":"x"}"#.as_slice(),
        ] {
            let changed = without_stdin(&bytes::Bytes::copy_from_slice(content)).expect("changed");
            let value: Value = serde_json::from_slice(&changed).expect("json");
            assert_eq!(value["allow_stdin"], Value::Bool(false));
            assert!(value["code"].is_string());
        }
    }

    #[test]
    fn error_replies_name_what_failed() {
        let content = error_content("UnknownMessageType", "nope");
        assert_eq!(content["status"], "error");
        assert_eq!(content["traceback"][0], "UnknownMessageType: nope");
    }
}
