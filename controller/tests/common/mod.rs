//! Test harness: an in-process controller on a temporary profile, and fake engines and clients
//! speaking the cluster protocol over real sockets on 127.0.0.1.

#![allow(dead_code)] // Each test binary uses part of the harness.

use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;

use parallax_controller::{run, ControllerError, ControllerOptions};
use parallax_net::{connect_dealer, Inbox, Limits, LinkStats, Outbox};
use parallax_wire::cluster::EngineId;
use parallax_wire::profile::{read_json, ControllerFile, Profile};
use parallax_wire::{Bytes, Message, Session};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long any single wait in a test may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// A controller running in this process.
pub struct Controller {
    pub profile: Profile,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), ControllerError>>,
}

impl Controller {
    /// Starts a controller for profile `name` under `root` and waits for its security files.
    pub async fn start(root: &Path, name: &str) -> Controller {
        let profile = Profile::in_dir(root, name).expect("profile name");
        let (stop, stopped) = oneshot::channel::<()>();
        let options = ControllerOptions::new(profile.clone());
        let handle = tokio::spawn(run(options, async move {
            let _ = stopped.await;
        }));
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while !(profile.client_file().exists() && profile.engine_file().exists()) {
            assert!(
                !handle.is_finished(),
                "the controller stopped while starting"
            );
            assert!(
                tokio::time::Instant::now() < deadline,
                "no security files after {TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Controller {
            profile,
            stop: Some(stop),
            handle,
        }
    }

    pub fn client_file(&self) -> ControllerFile {
        read_json(&self.profile.client_file()).expect("client file")
    }

    pub fn engine_file(&self) -> ControllerFile {
        read_json(&self.profile.engine_file()).expect("engine file")
    }

    /// Resolves the shutdown future; the controller starts stopping.
    pub fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits for the controller to finish (after [`signal_stop`](Self::signal_stop)).
    pub async fn join(self) {
        tokio::time::timeout(Duration::from_secs(10), self.handle)
            .await
            .expect("the controller stops in time")
            .expect("the controller task did not panic")
            .expect("the controller ran without error");
    }

    pub async fn stop(mut self) {
        self.signal_stop();
        self.join().await;
    }
}

/// One end of a DEALER link with a message backlog, so that a test can wait for one message
/// while keeping the others for later.
pub struct Peer {
    pub session: Session,
    pub out: Outbox,
    inbox: Inbox,
    backlog: VecDeque<Message>,
}

impl Peer {
    pub async fn connect(file: &ControllerFile, identity: Option<Bytes>) -> Peer {
        let session = Session::new(file.key.as_bytes(), "test");
        let (out, inbox) = connect_dealer(
            &file.url,
            session.clone(),
            identity,
            TIMEOUT,
            LinkStats::new("test peer"),
            Limits::DATA,
            &parallax_net::Security::Null,
        )
        .await
        .expect("connect");
        Peer {
            session,
            out,
            inbox,
            backlog: VecDeque::new(),
        }
    }

    pub async fn send(&self, message: Message) {
        self.out.send(message).await.expect("socket task running");
    }

    /// Sends a new message of this peer's session and returns it.
    pub async fn send_new(&self, msg_type: &str, content: Value) -> Message {
        let message = self.session.message(msg_type, &content);
        self.send(message.clone()).await;
        message
    }

    /// The first message (backlog first) that `wanted` accepts; the others stay in the backlog.
    pub async fn recv_where(&mut self, what: &str, wanted: impl Fn(&Message) -> bool) -> Message {
        if let Some(at) = self.backlog.iter().position(&wanted) {
            return self.backlog.remove(at).expect("position is valid");
        }
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let message = tokio::time::timeout_at(deadline, self.inbox.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no {what} within {TIMEOUT:?}; got instead: {:?}",
                        self.backlog
                            .iter()
                            .map(|m| m.msg_type())
                            .collect::<Vec<_>>()
                    )
                })
                .expect("link open");
            if wanted(&message) {
                return message;
            }
            self.backlog.push_back(message);
        }
    }

    /// The next message of type `msg_type`.
    pub async fn recv_type(&mut self, msg_type: &str) -> Message {
        self.recv_where(msg_type, |m| m.msg_type() == msg_type)
            .await
    }

    /// The next message whose parent is `request`.
    pub async fn recv_child(&mut self, request: &Message) -> Message {
        let id = request.msg_id().to_owned();
        self.recv_where(&format!("child of {}", request.msg_type()), move |m| {
            m.parent_msg_id() == Some(id.as_str())
        })
        .await
    }

    /// Sends a request and waits for its reply's content.
    pub async fn ask(&mut self, msg_type: &str, content: Value) -> (Message, Value) {
        let request = self.send_new(msg_type, content).await;
        let reply = self.recv_child(&request).await;
        let content = reply.content_as::<Value>().expect("reply content");
        (reply, content)
    }

    /// Whether a message that `unwanted` accepts arrives within `wait`.
    pub async fn receives_within(
        &mut self,
        wait: Duration,
        unwanted: impl Fn(&Message) -> bool,
    ) -> bool {
        if self.backlog.iter().any(&unwanted) {
            return true;
        }
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some(message)) = tokio::time::timeout_at(deadline, self.inbox.recv()).await {
            if unwanted(&message) {
                return true;
            }
            self.backlog.push_back(message);
        }
        false
    }

    /// Drops every message received so far that `matches` accepts.
    pub fn forget(&mut self, matches: impl Fn(&Message) -> bool) {
        self.backlog.retain(|m| !matches(m));
    }
}

/// A client: a peer on the client ROUTER.
pub struct Client {
    pub peer: Peer,
}

impl Client {
    pub async fn connect(file: &ControllerFile) -> Client {
        Client {
            peer: Peer::connect(file, None).await,
        }
    }

    /// Connects and sends `connect_request`, so that notifications come.
    pub async fn connect_and_subscribe(file: &ControllerFile) -> (Client, Value) {
        let mut client = Client::connect(file).await;
        let (_, reply) = client.peer.ask("connect_request", json!({})).await;
        assert_eq!(reply["status"], "ok", "{reply}");
        (client, reply)
    }

    /// Sends an execute request for `engine` (metadata `{"engine": engine}`).
    pub async fn execute(&self, engine: EngineId, code: &str) -> Message {
        let request = self
            .peer
            .session
            .message("execute_request", &execute_content(code))
            .with_metadata(&json!({"engine": engine}));
        self.peer.send(request.clone()).await;
        request
    }

    /// The reply to `request`.
    pub async fn reply_to(&mut self, request: &Message) -> (Message, Value) {
        let id = request.msg_id().to_owned();
        let reply = self
            .peer
            .recv_where("execute_reply", move |m| {
                m.msg_type() == "execute_reply" && m.parent_msg_id() == Some(id.as_str())
            })
            .await;
        let content = reply.content_as::<Value>().expect("content");
        (reply, content)
    }

    pub async fn ask(&mut self, msg_type: &str, content: Value) -> Value {
        self.peer.ask(msg_type, content).await.1
    }
}

pub fn execute_content(code: &str) -> Value {
    json!({
        "code": code,
        "silent": false,
        "store_history": true,
        "user_expressions": {},
        "allow_stdin": false,
        "stop_on_error": true,
    })
}

/// A fake engine: a peer on the engine ROUTER whose identity is its uuid.
pub struct Engine {
    pub peer: Peer,
    pub uuid: String,
    pub id: Option<EngineId>,
    heart: Option<JoinHandle<()>>,
}

impl Engine {
    pub async fn connect(file: &ControllerFile) -> Engine {
        let uuid = uuid::Uuid::new_v4().to_string();
        let peer = Peer::connect(file, Some(Bytes::from(uuid.clone()))).await;
        Engine {
            peer,
            uuid,
            id: None,
            heart: None,
        }
    }

    /// Connects, registers (asking for no particular id) and starts heartbeats.
    pub async fn start(file: &ControllerFile) -> Engine {
        let mut engine = Engine::connect(file).await;
        engine.register(None).await;
        engine.start_heartbeats();
        engine
    }

    /// Sends `register_request` and returns the reply's content.
    pub async fn register_reply(&mut self, id: Option<EngineId>) -> Value {
        let content = json!({
            "uuid": self.uuid,
            "host": "localhost",
            "pid": std::process::id(),
            "kernel": "python3",
            "kernel_pid": 4242,
            "id": id,
        });
        let (_, reply) = self.peer.ask("register_request", content).await;
        reply
    }

    /// Registers and returns the id the controller gave.
    pub async fn register(&mut self, id: Option<EngineId>) -> EngineId {
        let reply = self.register_reply(id).await;
        assert_eq!(reply["status"], "ok", "{reply}");
        assert_eq!(reply["heartbeat_interval"], 0.5);
        let id = reply["id"].as_u64().expect("id") as EngineId;
        self.id = Some(id);
        id
    }

    /// Sends a heartbeat every 0.5 s, as a real engine does.
    pub fn start_heartbeats(&mut self) {
        self.stop_heartbeats();
        let out = self.peer.out.clone();
        let session = self.peer.session.clone();
        let id = self.id.expect("registered");
        self.heart = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                if out
                    .send(session.message("heartbeat", &json!({"id": id})))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }));
    }

    pub fn stop_heartbeats(&mut self) {
        if let Some(heart) = self.heart.take() {
            heart.abort();
        }
    }

    /// The next request the controller forwarded (heartbeat replies skipped).
    pub async fn next_request(&mut self, msg_type: &str) -> Message {
        self.peer.recv_type(msg_type).await
    }

    /// An output or reply for `request`, as the engine's kernel makes it.
    pub fn child(&self, request: &Message, msg_type: &str, content: Value) -> Message {
        let mut message = self.peer.session.message(msg_type, &content);
        message.set_parent(request);
        message
    }

    /// Plays a kernel running `request`: busy, the given stream text on stdout, a result, idle,
    /// then the reply. Returns what was sent, in order.
    pub async fn answer(&self, request: &Message, stdout: &str, result: &str) -> Vec<Message> {
        let messages = vec![
            self.child(request, "status", json!({"execution_state": "busy"})),
            self.child(request, "stream", json!({"name": "stdout", "text": stdout})),
            self.child(
                request,
                "execute_result",
                json!({"execution_count": 1, "data": {"text/plain": result}, "metadata": {}}),
            ),
            self.child(request, "status", json!({"execution_state": "idle"})),
            self.child(
                request,
                "execute_reply",
                json!({"status": "ok", "execution_count": 1, "user_expressions": {}}),
            ),
        ];
        for message in &messages {
            self.peer.send(message.clone()).await;
        }
        messages
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop_heartbeats();
    }
}
