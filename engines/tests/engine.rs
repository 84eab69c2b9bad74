//! The engine process against a real ipykernel and a fake controller.
//!
//! The fake controller is a ROUTER bound on 127.0.0.1 with a known key and a controller file in a
//! temporary folder; each test runs `engine::run` in-process and plays the controller's side of
//! the engine link by hand.
//!
//! The kernel comes from the Python of `PARALLAX_TEST_PYTHON`, else the workspace's `.venv`
//! (made by `scripts/setup.sh`, ipykernel pinned). The engine finds its `python3` kernelspec
//! through `PARALLAX_PYTHON`, which only the process environment can carry; it is set once per
//! test binary, by [`setup`], which every test calls first, before it starts any thread of its
//! own (nextest runs each test in its own process; under `cargo test` the other tests wait in the
//! same `Once` before touching the environment).

use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::Duration;

use bytes::Bytes;
use parallax_engines::engine::{self, EngineError, EngineOptions};
use parallax_net::{bind_router, Inbox, Limits, LinkStats, Outbox, Packing};
use parallax_wire::cluster::{Heartbeat, KernelDied, RegisterReply, RegisterRequest};
use parallax_wire::profile::{write_json, ControllerFile};
use parallax_wire::{Message, Session};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

const KEY: &str = "engine-test-key";
/// Generous: kernels start slowly on a loaded 2-core machine.
const STARTUP: Duration = Duration::from_secs(30);
const STEP: Duration = Duration::from_secs(15);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate is in the workspace")
        .to_path_buf()
}

fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("PARALLAX_TEST_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(python);
    }
    let venv = workspace().join(".venv/bin/python");
    assert!(
        venv.exists(),
        "no Python with ipykernel for the tests: run scripts/setup.sh (it creates {}) or set \
         PARALLAX_TEST_PYTHON",
        venv.display()
    );
    venv
}

/// Points kernelspec discovery at the test Python and isolates Jupyter's and IPython's user
/// folders; see the module doc for why this is done once, through the process environment.
fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let python = python();
        let home =
            std::env::temp_dir().join(format!("parallax-engine-tests-{}", std::process::id()));
        std::fs::create_dir_all(&home).expect("temp folder");
        write_fd_capture_kernelspec(&home.join("jupyter"), &python);
        std::env::set_var("PARALLAX_PYTHON", &python);
        std::env::set_var("JUPYTER_DATA_DIR", home.join("jupyter"));
        std::env::set_var("IPYTHONDIR", home.join("ipython"));
        std::env::remove_var("JUPYTER_PATH");
        std::env::remove_var("VIRTUAL_ENV");
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
    });
}

/// A kernelspec `fd-capture` that is not recognisably ipykernel (its argv runs a script) and
/// runs ipykernel with fd capture off: the engine must forward its fd output itself.
fn write_fd_capture_kernelspec(data_dir: &Path, python: &Path) {
    let dir = data_dir.join("kernels").join(FD_CAPTURE_KERNEL);
    std::fs::create_dir_all(&dir).expect("kernelspec folder");
    std::fs::write(
        dir.join("start.py"),
        "import sys\n\
         from ipykernel.kernelapp import IPKernelApp\n\
         IPKernelApp.launch_instance(argv=sys.argv[1:] + ['--IPKernelApp.capture_fd_output=False'])\n",
    )
    .expect("start.py");
    let spec = json!({
        "argv": [python, "{resource_dir}/start.py", "-f", "{connection_file}"],
        "display_name": "fd capture test",
        "language": "python",
    });
    std::fs::write(dir.join("kernel.json"), spec.to_string()).expect("kernel.json");
}

const FD_CAPTURE_KERNEL: &str = "fd-capture";

/// The controller's side of the engine link.
struct Controller {
    session: Session,
    outbox: Outbox,
    inbox: Inbox,
    file: PathBuf,
    /// The engine's routing identity, once it has spoken.
    engine: Option<Bytes>,
    /// Heartbeats answered by [`Controller::next`].
    heartbeats: Vec<(Instant, u32)>,
    _dir: tempfile::TempDir,
}

impl Controller {
    async fn start() -> Self {
        setup();
        let session = Session::new(KEY.as_bytes(), "controller");
        let (url, outbox, inbox) = bind_router(
            "tcp://127.0.0.1:0",
            session.clone(),
            LinkStats::new("fake-controller"),
            Packing::Never,
            Limits::DATA,
            &parallax_net::Security::Null,
        )
        .await
        .expect("bind");
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("controller-engine.json");
        let contents = ControllerFile {
            url,
            key: KEY.into(),
            signature_scheme: "hmac-sha256".into(),
            profile: "test".into(),
            controller_pid: std::process::id(),
            ..ControllerFile::default()
        };
        write_json(&file, &contents, true).expect("write controller file");
        Controller {
            session,
            outbox,
            inbox,
            file,
            engine: None,
            heartbeats: Vec::new(),
            _dir: dir,
        }
    }

    fn options(&self) -> EngineOptions {
        EngineOptions::new(&self.file)
    }

    /// The next message from the engine, heartbeats and the support's attachment answered and
    /// skipped.
    async fn next(&mut self, within: Duration) -> Message {
        let deadline = Instant::now() + within;
        loop {
            let message = timeout(
                deadline.saturating_duration_since(Instant::now()),
                self.inbox.recv(),
            )
            .await
            .expect("the engine said nothing in time")
            .expect("controller inbox closed");
            // The engine support in a Python kernel attaches on its own link.
            if message.msg_type() == "attach_request" {
                let reply = self.session.reply(
                    &message,
                    "attach_reply",
                    &serde_json::json!({"status": "ok"}),
                );
                self.outbox.send(reply).await.expect("send");
                continue;
            }
            if let Some(identity) = message.identities.first() {
                self.engine = Some(identity.clone());
            }
            if message.msg_type() == "heartbeat" {
                let heartbeat: Heartbeat = message.content_as().expect("heartbeat content");
                self.heartbeats.push((Instant::now(), heartbeat.id));
                let reply = self.session.reply(&message, "heartbeat_reply", &heartbeat);
                self.outbox.send(reply).await.expect("send");
                continue;
            }
            return message;
        }
    }

    /// Sends a message of ours to the engine.
    async fn send(&self, mut message: Message) -> Message {
        message.identities = vec![self.engine.clone().expect("the engine has not spoken yet")];
        let sent = message.clone();
        self.outbox.send(message).await.expect("send");
        sent
    }

    /// Waits for `register_request` and gives the engine `id`.
    async fn register(&mut self, id: u32) -> RegisterRequest {
        let message = self.next(STARTUP).await;
        assert_eq!(message.msg_type(), "register_request");
        let request: RegisterRequest = message.content_as().expect("register content");
        let reply = RegisterReply {
            status: "ok".into(),
            id: Some(id),
            heartbeat_interval: 0.5,
            evalue: None,
        };
        let reply = self.session.reply(&message, "register_reply", &reply);
        self.outbox.send(reply).await.expect("send");
        request
    }

    async fn execute(&self, code: &str) -> Message {
        let request = self.session.message(
            "execute_request",
            &json!({
                "code": code, "silent": false, "store_history": true,
                "user_expressions": {}, "allow_stdin": true, "stop_on_error": true,
            }),
        );
        self.send(request).await
    }

    /// Every message for `request` up to and including its reply.
    async fn until_reply(&mut self, request: &Message, within: Duration) -> Vec<Message> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let message = self
                .next(deadline.saturating_duration_since(Instant::now()))
                .await;
            let done = message.msg_type().ends_with("_reply")
                && message.parent_msg_id() == Some(request.msg_id());
            seen.push(message);
            if done {
                return seen;
            }
        }
    }

    /// Messages arriving within `period`, heartbeats answered.
    async fn for_a_while(&mut self, period: Duration) -> Vec<Message> {
        let deadline = Instant::now() + period;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, self.next(STARTUP)).await {
                Ok(message) => seen.push(message),
                Err(_) => break,
            }
        }
        seen
    }
}

/// An engine running in this process.
struct Engine {
    task: JoinHandle<Result<(), EngineError>>,
    stop: Option<oneshot::Sender<()>>,
}

impl Engine {
    fn spawn(options: EngineOptions) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(engine::run(options, async move {
            let _ = stopped.await;
        }));
        Engine {
            task,
            stop: Some(stop),
        }
    }

    /// Waits for the engine to end by itself.
    async fn ended(self, within: Duration) -> Result<(), EngineError> {
        let Engine { task, stop } = self;
        let outcome = timeout(within, task)
            .await
            .expect("the engine did not stop in time");
        drop(stop);
        outcome.expect("the engine task panicked")
    }

    /// Stops the engine through its shutdown future.
    async fn stop(mut self) -> Result<(), EngineError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.ended(STEP).await
    }
}

/// Whether a process is running (a zombie is not).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

async fn gone_soon(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

fn types(messages: &[Message]) -> Vec<String> {
    messages.iter().map(|m| m.msg_type().to_owned()).collect()
}

fn content(message: &Message) -> Value {
    message.content_as().expect("content")
}

fn stream_text(messages: &[Message], name: &str) -> String {
    messages
        .iter()
        .filter(|m| m.msg_type() == "stream")
        .map(content)
        .filter(|c| c["name"] == name)
        .map(|c| c["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn registers_with_its_kernel_and_heartbeats() {
    let mut controller = Controller::start().await;
    let engine = Engine::spawn(controller.options());
    let request = controller.register(3).await;
    assert_eq!(request.kernel, "python3");
    assert_eq!(request.pid, std::process::id());
    assert_eq!(request.id, None);
    assert!(!request.host.is_empty());
    assert_eq!(
        controller.engine.as_deref(),
        Some(request.uuid.as_bytes()),
        "the routing identity is the uuid"
    );
    assert!(alive(request.kernel_pid));

    controller.for_a_while(Duration::from_millis(1800)).await;
    let beats = controller.heartbeats.clone();
    assert!(beats.len() >= 2, "{} heartbeats in 1.8 s", beats.len());
    assert!(beats.iter().all(|(_, id)| *id == 3));
    for pair in beats.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap > Duration::from_millis(300) && gap < Duration::from_millis(1000),
            "heartbeat gap {gap:?}"
        );
    }

    engine.stop().await.expect("clean stop");
    assert!(gone_soon(request.kernel_pid).await, "the kernel is left");
}

#[tokio::test]
async fn execute_relays_outputs_then_the_reply() {
    let mut controller = Controller::start().await;
    let engine = Engine::spawn(controller.options());
    controller.register(0).await;

    let request = controller.execute("print('hi'); 1+1").await;
    let seen = controller.until_reply(&request, STEP).await;
    let for_request: Vec<&Message> = seen
        .iter()
        .filter(|m| m.parent_msg_id() == Some(request.msg_id()))
        .collect();
    let kinds: Vec<&str> = for_request.iter().map(|m| m.msg_type()).collect();
    let states: Vec<String> = for_request
        .iter()
        .filter(|m| m.msg_type() == "status")
        .map(|m| {
            content(m)["execution_state"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "status",
            "execute_input",
            "stream",
            "execute_result",
            "status",
            "execute_reply"
        ],
        "{:?}",
        types(&seen)
    );
    assert_eq!(states, ["busy", "idle"]);
    assert_eq!(stream_text(&seen, "stdout"), "hi\n");
    let result = for_request
        .iter()
        .find(|m| m.msg_type() == "execute_result")
        .expect("result");
    assert_eq!(content(result)["data"]["text/plain"], "2");
    let reply = seen.last().expect("reply");
    assert_eq!(content(reply)["status"], "ok");
    let parent: Value = serde_json::from_slice(reply.parent_raw()).expect("parent header");
    let header: Value = serde_json::from_slice(request.header_raw()).expect("header");
    assert_eq!(parent, header, "the request's own header is the parent");

    // Pipelined: three at once, each reply after its own outputs, in order.
    let requests = [
        controller
            .execute("import time; time.sleep(0.2); print('a')")
            .await,
        controller.execute("print('b')").await,
        controller.execute("input('never')").await,
    ];
    let mut seen = Vec::new();
    for request in &requests {
        seen.extend(controller.until_reply(request, STEP).await);
    }
    for request in &requests {
        let last_of_it = seen
            .iter()
            .rposition(|m| m.parent_msg_id() == Some(request.msg_id()))
            .expect("messages for the request");
        assert_eq!(seen[last_of_it].msg_type(), "execute_reply");
    }
    let replies: Vec<Value> = seen
        .iter()
        .filter(|m| m.msg_type() == "execute_reply")
        .map(content)
        .collect();
    assert_eq!(replies[0]["status"], "ok");
    assert_eq!(replies[1]["status"], "ok");
    // allow_stdin was forced off: input() fails instead of waiting forever.
    assert_eq!(replies[2]["status"], "error", "{:?}", replies[2]);
    assert_eq!(stream_text(&seen, "stdout"), "a\nb\n");

    engine.stop().await.expect("clean stop");
}

#[tokio::test]
async fn fd_output_arrives_exactly_once() {
    let mut controller = Controller::start().await;
    let engine = Engine::spawn(controller.options());
    controller.register(0).await;

    let request = controller
        .execute("import os; os.system('echo from-fd'); os.system('echo err-fd >&2')")
        .await;
    let mut seen = controller.until_reply(&request, STEP).await;
    // The kernel forwards fd output from a thread: a late copy would come after the reply.
    seen.extend(controller.for_a_while(Duration::from_millis(700)).await);
    let stdout = stream_text(&seen, "stdout");
    let stderr = stream_text(&seen, "stderr");
    assert_eq!(stdout.matches("from-fd").count(), 1, "stdout: {stdout:?}");
    assert_eq!(stderr.matches("err-fd").count(), 1, "stderr: {stderr:?}");
    assert!(seen
        .iter()
        .filter(|m| m.msg_type() == "stream")
        .all(|m| m.parent_msg_id() == Some(request.msg_id())));

    engine.stop().await.expect("clean stop");
}

#[tokio::test]
async fn fd_output_of_other_kernels_is_forwarded_by_the_engine() {
    let mut controller = Controller::start().await;
    let mut options = controller.options();
    options.kernel = FD_CAPTURE_KERNEL.into();
    let engine = Engine::spawn(options);
    let registered = controller.register(0).await;
    assert_eq!(registered.kernel, FD_CAPTURE_KERNEL);

    let request = controller
        .execute(
            "import os, time; os.system('echo from-fd'); os.system('echo err-fd >&2'); \
             time.sleep(0.3)",
        )
        .await;
    let mut seen = controller.until_reply(&request, STEP).await;
    seen.extend(controller.for_a_while(Duration::from_millis(500)).await);
    let stdout = stream_text(&seen, "stdout");
    let stderr = stream_text(&seen, "stderr");
    assert_eq!(stdout, "from-fd\n");
    assert_eq!(stderr, "err-fd\n");
    assert!(seen
        .iter()
        .filter(|m| m.msg_type() == "stream")
        .all(|m| m.parent_msg_id() == Some(request.msg_id())));

    engine.stop().await.expect("clean stop");
    assert!(gone_soon(registered.kernel_pid).await);
}

#[tokio::test]
async fn a_dead_kernel_fails_its_request_and_the_engine() {
    let mut controller = Controller::start().await;
    let engine = Engine::spawn(controller.options());
    let registered = controller.register(2).await;

    let request = controller.execute("import os; os._exit(1)").await;
    let seen = controller.until_reply(&request, STEP).await;
    let reply = content(seen.last().expect("reply"));
    assert_eq!(reply["status"], "error");
    assert_eq!(reply["ename"], "EngineError");
    assert_eq!(reply["evalue"], "engine 2 died while running this request");
    assert!(reply["execution_count"].is_null());
    let traceback = reply["traceback"][0].as_str().expect("traceback line");
    assert!(traceback.contains("exit status 1"), "{traceback}");

    let died = controller.next(STEP).await;
    assert_eq!(died.msg_type(), "kernel_died");
    let died: KernelDied = died.content_as().expect("kernel_died content");
    assert_eq!(
        died,
        KernelDied {
            id: 2,
            exit: "exit status 1".into(),
            restarting: false
        }
    );
    let outcome = engine.ended(STEP).await;
    assert!(
        matches!(outcome, Err(EngineError::KernelDied { id: 2, .. })),
        "{outcome:?}"
    );
    assert!(!alive(registered.kernel_pid));
}

#[tokio::test]
async fn a_dead_kernel_is_restarted_under_the_same_id() {
    let mut controller = Controller::start().await;
    let mut options = controller.options();
    options.restart_kernel = true;
    let engine = Engine::spawn(options);
    let first = controller.register(1).await;

    let set = controller.execute("x = 5").await;
    controller.until_reply(&set, STEP).await;
    let request = controller.execute("import os; os._exit(3)").await;
    let seen = controller.until_reply(&request, STEP).await;
    assert_eq!(content(seen.last().expect("reply"))["ename"], "EngineError");
    let died: KernelDied = controller
        .next(STEP)
        .await
        .content_as()
        .expect("kernel_died");
    assert!(died.restarting);
    assert_eq!(died.exit, "exit status 3");

    let again = controller.register(1).await;
    assert_eq!(again.id, Some(1));
    assert_eq!(again.uuid, first.uuid);
    assert_ne!(again.kernel_pid, first.kernel_pid);
    assert!(!alive(first.kernel_pid));

    let request = controller.execute("x").await;
    let seen = controller.until_reply(&request, STEP).await;
    let reply = content(seen.last().expect("reply"));
    assert_eq!(reply["ename"], "NameError", "a fresh namespace: {reply}");
    let request = controller.execute("1+1").await;
    let seen = controller.until_reply(&request, STEP).await;
    assert_eq!(content(seen.last().expect("reply"))["status"], "ok");

    engine.stop().await.expect("clean stop");
    assert!(gone_soon(again.kernel_pid).await);
}

#[tokio::test]
async fn interrupt_stops_running_code() {
    let mut controller = Controller::start().await;
    let engine = Engine::spawn(controller.options());
    controller.register(0).await;

    let request = controller
        .execute("import time\nprint('sleeping', flush=True)\ntime.sleep(60)")
        .await;
    // Inside the user's code: it printed. (A SIGINT that lands while ipykernel is still
    // setting the cell up interrupts ipykernel's own code instead.)
    loop {
        let message = controller.next(STEP).await;
        if message.msg_type() == "stream" {
            break;
        }
    }
    let interrupt = controller
        .send(controller.session.message("interrupt_request", &json!({})))
        .await;
    let asked = Instant::now();
    let seen = controller
        .until_reply(&request, Duration::from_secs(2))
        .await;
    let reply = content(seen.last().expect("reply"));
    assert_eq!(reply["ename"], "KeyboardInterrupt", "{reply}");
    assert!(asked.elapsed() < Duration::from_secs(2));
    let answer = seen
        .iter()
        .find(|m| m.msg_type() == "interrupt_reply")
        .expect("interrupt_reply before the execute_reply");
    assert_eq!(answer.parent_msg_id(), Some(interrupt.msg_id()));
    assert_eq!(content(answer)["status"], "ok");

    engine.stop().await.expect("clean stop");
}

#[tokio::test]
async fn shutdown_request_stops_the_kernel_and_the_engine() {
    let mut controller = Controller::start().await;
    let engine = Engine::spawn(controller.options());
    let registered = controller.register(0).await;

    let request = controller
        .send(controller.session.message("shutdown_request", &json!({})))
        .await;
    let reply = controller.next(STEP).await;
    assert_eq!(reply.msg_type(), "shutdown_reply");
    assert_eq!(reply.parent_msg_id(), Some(request.msg_id()));
    assert_eq!(content(&reply)["status"], "ok");
    // The reply comes once the kernel has gone.
    assert!(
        !alive(registered.kernel_pid),
        "kernel {} left",
        registered.kernel_pid
    );
    engine.ended(STEP).await.expect("clean exit");
}

#[tokio::test]
async fn unknown_requests_get_an_error_reply() {
    let mut controller = Controller::start().await;
    let engine = Engine::spawn(controller.options());
    controller.register(0).await;

    let request = controller
        .send(controller.session.message("frobnicate_request", &json!({})))
        .await;
    let reply = controller.next(STEP).await;
    assert_eq!(reply.msg_type(), "frobnicate_reply");
    assert_eq!(reply.parent_msg_id(), Some(request.msg_id()));
    let reply = content(&reply);
    assert_eq!(reply["status"], "error");
    assert_eq!(reply["ename"], "UnknownMessageType");

    engine.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_vanished_controller_stops_the_engine() {
    let mut controller = Controller::start().await;
    let engine = Engine::spawn(controller.options());
    let registered = controller.register(0).await;
    drop(controller);
    let gone = Instant::now();
    let outcome = engine.ended(Duration::from_secs(14)).await;
    assert!(
        matches!(outcome, Err(EngineError::ControllerGone(_))),
        "{outcome:?}"
    );
    assert!(
        gone.elapsed() < Duration::from_secs(12),
        "{:?}",
        gone.elapsed()
    );
    assert!(!alive(registered.kernel_pid));
}

#[tokio::test]
async fn engines_register_quickly() {
    for n in [1usize, 4] {
        let mut controllers = Vec::new();
        for _ in 0..n {
            controllers.push(Controller::start().await);
        }
        let start = Instant::now();
        let engines: Vec<Engine> = controllers
            .iter()
            .map(|c| Engine::spawn(c.options()))
            .collect();
        let mut times = Vec::new();
        let registrations = controllers.iter_mut().enumerate().map(|(i, c)| async move {
            c.register(i as u32).await;
            start.elapsed()
        });
        for elapsed in futures::future::join_all(registrations).await {
            times.push(elapsed);
        }
        let slowest = times.iter().max().copied().unwrap_or_default();
        println!("{n} engine(s): registered after {times:?} (slowest {slowest:?})");
        assert!(slowest < Duration::from_secs(20), "{slowest:?}");
        for engine in engines {
            engine.stop().await.expect("clean stop");
        }
    }
}
