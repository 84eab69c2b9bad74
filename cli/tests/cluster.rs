//! End-to-end tests of clusters: the real `parallax` binary starts a controller and engines that
//! own real ipykernels; the tests drive them through the controller's client protocol and kill
//! real processes.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{alive, eventually, exe, kill9, stream_text, World};
use parallax_client::{engine_of, Notification};
use parallax_launcher::ClusterState;
use parallax_wire::cluster::{EngineInfo, EngineState};
use parallax_wire::profile::{read_json, ControllerFile};
use serde_json::Value;

fn content(message: &parallax_wire::Message) -> Value {
    message.content_as().expect("json content")
}

/// Runs `code` on `engine` and returns (outputs, reply content).
async fn run(
    client: &parallax_client::ControllerClient,
    engine: u32,
    code: &str,
) -> (Vec<parallax_wire::Message>, Value) {
    let execution = client.execute(engine, code).await.expect("submit");
    let (outputs, reply) = tokio::time::timeout(Duration::from_secs(30), execution.finish())
        .await
        .expect("reply within 30 s");
    (outputs, content(&reply.expect("a reply")))
}

fn result_text(outputs: &[parallax_wire::Message]) -> String {
    outputs
        .iter()
        .find(|m| m.msg_type() == "execute_result")
        .map(|m| {
            content(m)["data"]["text/plain"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default()
}

fn all_pids(world: &World, profile: &str, engines: &[EngineInfo]) -> Vec<u32> {
    let state: ClusterState = read_json(&world.profile(profile).cluster_file()).expect("state");
    let mut pids = state.pids();
    pids.extend(engines.iter().map(|e| e.kernel_pid));
    pids
}

#[tokio::test]
async fn start_list_execute_and_stop_leaves_no_process() {
    let world = World::new();
    let out = world.start("t", 4, &[]);
    assert!(out.contains("ready: 4 engines (ids 0, 1, 2, 3)"), "{out}");

    let list = world.run(&["cluster", "list", "--json"]);
    let list: Value = serde_json::from_slice(&list.stdout).expect("list json");
    let row = list
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["profile"] == "t"))
        .expect("profile t listed")
        .clone();
    assert_eq!(row["state"], "running");
    assert_eq!(row["engines"], 4);
    assert_eq!(row["launcher"], "local");

    let client = world.client("t").await;
    let engines = client.engines().await.expect("engines");
    let mut pids = BTreeSet::new();
    for id in 0..4 {
        let (outputs, reply) = run(&client, id, "import os; os.getpid()").await;
        assert_eq!(reply["status"], "ok", "{reply}");
        let pid: u32 = result_text(&outputs).parse().expect("a pid");
        let engine = engines.iter().find(|e| e.id == id).expect("engine");
        assert_eq!(pid, engine.kernel_pid);
        assert!(outputs.iter().all(|m| engine_of(m) == Some(id)));
        pids.insert(pid);
    }
    assert_eq!(pids.len(), 4, "four distinct kernels: {pids:?}");

    let started = all_pids(&world, "t", &engines);
    let stop = world.run(&["cluster", "stop", "--profile", "t"]);
    assert!(
        stop.status.success(),
        "{}",
        String::from_utf8_lossy(&stop.stderr)
    );
    assert!(
        eventually(Duration::from_secs(5), || started
            .iter()
            .all(|p| !alive(*p)))
        .await,
        "processes left: {:?}",
        started.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
    );
    assert!(!world.profile("t").client_file().exists());

    let again = world.run(&["cluster", "stop", "--profile", "t"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("no cluster is running"));
}

/// Kills one engine's kernel (or its engine process) while it runs a request, and checks the
/// death is reported within 3 s, the request ends with an error naming the engine, the other
/// engine keeps working, and the engine comes back under its id.
async fn kill_and_recover(kill_process: bool) {
    let world = World::new();
    world.start("k", 2, &["--restart-engines"]);
    let client = world.client("k").await;
    let mut notifications = client.subscribe();
    let engines = client.engines().await.expect("engines");
    let victim = engines
        .iter()
        .find(|e| e.id == 1)
        .expect("engine 1")
        .clone();

    let execution = client
        .execute(1, "import time; time.sleep(60)")
        .await
        .expect("submit");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed_at = Instant::now();
    kill9(if kill_process {
        victim.pid
    } else {
        victim.kernel_pid
    });

    let died = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            if let Ok(Notification::EngineDied(died)) = notifications.recv().await {
                if died.id == 1 {
                    return died;
                }
            }
        }
    })
    .await
    .expect("engine_died within 3 s");
    assert!(killed_at.elapsed() < Duration::from_secs(3));
    assert_eq!(died.id, 1);

    let (_, reply) = tokio::time::timeout(Duration::from_secs(5), execution.finish())
        .await
        .expect("the in-flight request ends");
    let reply = content(&reply.expect("reply"));
    assert_eq!(reply["status"], "error");
    assert_eq!(reply["ename"], "EngineError");
    assert!(
        reply["evalue"]
            .as_str()
            .unwrap_or("")
            .contains("engine 1 died while running this request"),
        "{reply}"
    );

    let (_, other) = run(&client, 0, "1 + 1").await;
    assert_eq!(other["status"], "ok");

    let deadline = Instant::now() + Duration::from_secs(20);
    let revived = loop {
        let engines = client.engines().await.expect("engines");
        if let Some(e) = engines.iter().find(|e| {
            e.id == 1 && e.state == EngineState::Idle && e.kernel_pid != victim.kernel_pid
        }) {
            break e.clone();
        }
        assert!(
            Instant::now() < deadline,
            "engine 1 did not come back: {engines:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(revived.id, 1);
    let (outputs, reply) = run(&client, 1, "import os; os.getpid()").await;
    assert_eq!(reply["status"], "ok");
    assert_eq!(result_text(&outputs), revived.kernel_pid.to_string());
}

#[tokio::test]
async fn killed_kernel_is_reported_and_comes_back_under_its_id() {
    kill_and_recover(false).await;
}

#[tokio::test]
async fn killed_engine_process_is_reported_and_comes_back_under_its_id() {
    kill_and_recover(true).await;
}

#[tokio::test]
async fn without_restart_a_dead_engine_is_named_in_errors() {
    let world = World::new();
    world.start("d", 2, &[]);
    let client = world.client("d").await;
    let engines = client.engines().await.expect("engines");
    let victim = engines
        .iter()
        .find(|e| e.id == 0)
        .expect("engine 0")
        .clone();
    kill9(victim.kernel_pid);
    let dead = eventually(Duration::from_secs(5), || !alive(victim.kernel_pid)).await;
    assert!(dead);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let engines = client.engines().await.expect("engines");
        if engines
            .iter()
            .any(|e| e.id == 0 && e.state == EngineState::Dead)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "engine 0 not marked dead: {engines:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, reply) = run(&client, 0, "1").await;
    assert_eq!(reply["status"], "error");
    assert_eq!(reply["ename"], "EngineError");
    assert!(
        reply["evalue"].as_str().unwrap_or("").contains("engine 0"),
        "{reply}"
    );
    let (_, reply) = run(&client, 1, "1").await;
    assert_eq!(reply["status"], "ok");
    let (_, reply) = run(&client, 7, "1").await;
    assert_eq!(reply["status"], "error");
    assert!(
        reply["evalue"]
            .as_str()
            .unwrap_or("")
            .contains("no engine 7"),
        "{reply}"
    );
}

/// `cluster start --max-message-size`: the controller writes its limit into its connection
/// files, and a frame over it never reaches the controller's decoder (the sender is
/// disconnected), while a frame under it does (and, being garbage, is counted as rejected).
#[tokio::test]
async fn the_controller_refuses_frames_over_its_max_message_size() {
    let world = World::new();
    world.start("m", 1, &["--max-message-size", "1048576"]);
    let profile = world.profile("m");
    let client_file: ControllerFile = read_json(&profile.client_file()).expect("client file");
    let engine_file: ControllerFile = read_json(&profile.engine_file()).expect("engine file");
    assert_eq!(client_file.max_message_size, Some(1 << 20));
    assert_eq!(engine_file.max_message_size, Some(1 << 20));

    let client = world.client("m").await;
    let rejected = |stats: Value| stats["rejected"]["client"].as_u64().unwrap_or(u64::MAX);
    assert_eq!(rejected(client.stats().await.expect("stats")), 0);
    // Over the limit: the controller disconnects the sender when the frame's header arrives.
    let url = client_file.url.clone();
    let disconnected = tokio::task::spawn_blocking(move || {
        let context = zmq::Context::new();
        let socket = context.socket(zmq::DEALER).expect("socket");
        let endpoint = "inproc://oversized-sender";
        socket
            .monitor(endpoint, zmq::SocketEvent::DISCONNECTED as i32)
            .expect("monitor");
        let events = context.socket(zmq::PAIR).expect("monitor socket");
        events.set_rcvtimeo(10_000).expect("timeout");
        events.connect(endpoint).expect("monitor connect");
        socket.connect(&url).expect("connect");
        socket.send(vec![7u8; 2 << 20], 0).expect("send");
        let event = events.recv_multipart(0);
        socket.set_linger(0).expect("linger");
        event.is_ok()
    })
    .await
    .expect("sender");
    assert!(disconnected, "a 2 MiB frame gets its sender disconnected");
    // Under the limit: decoded, and as garbage counted as rejected.
    let socket = zmq::Context::new().socket(zmq::DEALER).expect("socket");
    socket.set_linger(1000).expect("linger");
    socket.connect(&client_file.url).expect("connect");
    socket.send(vec![7u8; 512 << 10], 0).expect("send");
    let deadline = Instant::now() + Duration::from_secs(10);
    while rejected(client.stats().await.expect("stats")) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        rejected(client.stats().await.expect("stats")),
        1,
        "the frame under the limit reached the decoder; the one over it never did"
    );
    let (_, reply) = run(&client, 0, "6 * 7").await;
    assert_eq!(reply["status"], "ok", "the controller still serves");
}

/// `cluster start --curve`: the controller's links are encrypted on loopback too. Each side's
/// file has the server's key and a key pair of its own; the Rust client (the kernel's, the
/// Clusters page's) and the engines use them, and a client holding the engine side's keys is
/// refused, with the reason in its error.
#[tokio::test]
async fn a_curve_cluster_admits_each_side_only_with_its_own_keys() {
    let world = World::new();
    world.start("c", 1, &["--curve"]);
    let profile = world.profile("c");
    let client_file: ControllerFile = read_json(&profile.client_file()).expect("client file");
    let engine_file: ControllerFile = read_json(&profile.engine_file()).expect("engine file");
    for file in [&client_file, &engine_file] {
        assert_eq!(
            file.curve_serverkey.as_deref().map(str::len),
            Some(40),
            "{file:?}"
        );
    }
    assert_eq!(client_file.curve_serverkey, engine_file.curve_serverkey);
    assert_ne!(client_file.curve_publickey, engine_file.curve_publickey);

    let client = world.client("c").await;
    let (_, reply) = run(&client, 0, "6 * 7").await;
    assert_eq!(
        reply["status"], "ok",
        "an encrypted engine runs code: {reply}"
    );

    let wrong = ControllerFile {
        curve_publickey: engine_file.curve_publickey.clone(),
        curve_secretkey: engine_file.curve_secretkey.clone(),
        ..client_file.clone()
    };
    let refused = parallax_client::ControllerClient::connect_to(&wrong, Duration::from_secs(3))
        .await
        .expect_err("the engine side's keys must not open the client side");
    assert!(
        refused
            .to_string()
            .contains("refused this link's CURVE key"),
        "{refused}"
    );
    let log = std::fs::read_to_string(profile.log_dir().join("controller.log")).expect("log");
    assert!(
        log.contains("refused a peer at 127.0.0.1: its CURVE key is not one this link admits"),
        "{log}"
    );
    let rejected = |stats: Value| stats["rejected"]["client"].as_u64().unwrap_or(0);
    let before = rejected(client.stats().await.expect("stats"));
    let plain = ControllerFile {
        curve_serverkey: None,
        curve_publickey: None,
        curve_secretkey: None,
        ..client_file.clone()
    };
    parallax_client::ControllerClient::connect_to(&plain, Duration::from_secs(2))
        .await
        .expect_err("a client without keys must not connect");
    assert!(
        rejected(client.stats().await.expect("stats")) > before,
        "the plain client's handshakes are counted as refused"
    );
    let (_, reply) = run(&client, 0, "6 * 7").await;
    assert_eq!(reply["status"], "ok", "the controller still serves");
}

#[tokio::test]
async fn garbage_on_every_controller_socket_is_rejected_and_counted() {
    let world = World::new();
    world.start("g", 1, &[]);
    let profile = world.profile("g");
    let client_file: ControllerFile = read_json(&profile.client_file()).expect("client file");
    let engine_file: ControllerFile = read_json(&profile.engine_file()).expect("engine file");

    let wrong_key = parallax_wire::Session::new(b"not-the-key", "attacker");
    let badly_signed =
        wrong_key.encode(&wrong_key.message("engines_request", &serde_json::json!({})));
    let garbage: Vec<Vec<Vec<u8>>> = vec![
        vec![b"hello".to_vec()],
        vec![b"<IDS|MSG>".to_vec(), b"sig".to_vec(), b"{}".to_vec()],
        vec![
            b"<IDS|MSG>".to_vec(),
            b"".to_vec(),
            b"{not json".to_vec(),
            b"{}".to_vec(),
            b"{}".to_vec(),
            b"{}".to_vec(),
        ],
        badly_signed.iter().map(|f| f.to_vec()).collect(),
    ];
    let context = zmq::Context::new();
    for url in [&client_file.url, &engine_file.url] {
        let socket = context.socket(zmq::DEALER).expect("socket");
        socket.set_linger(1000).expect("linger");
        socket.connect(url).expect("connect");
        for frames in &garbage {
            socket.send_multipart(frames.iter(), 0).expect("send");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let client = world.client("g").await;
    let stats = client.stats().await.expect("stats");
    assert!(
        stats["rejected"]["client"].as_u64().unwrap_or(0) >= 4,
        "{stats}"
    );
    assert!(
        stats["rejected"]["engine"].as_u64().unwrap_or(0) >= 4,
        "{stats}"
    );
    let (_, reply) = run(&client, 0, "6 * 7").await;
    assert_eq!(reply["status"], "ok");
}

#[tokio::test]
async fn two_profiles_run_side_by_side() {
    let world = World::new();
    world.start("a", 1, &[]);
    world.start("b", 1, &[]);
    let a = world.client("a").await;
    let b = world.client("b").await;
    run(&a, 0, "x = 'from a'").await;
    run(&b, 0, "x = 'from b'").await;
    let (outputs, _) = run(&a, 0, "x").await;
    assert_eq!(result_text(&outputs), "'from a'");
    let stop = world.run(&["cluster", "stop", "--profile", "a"]);
    assert!(stop.status.success());
    let (outputs, _) = run(&b, 0, "x").await;
    assert_eq!(result_text(&outputs), "'from b'");
    let list = world.run(&["cluster", "list", "--json"]);
    let list: Value = serde_json::from_slice(&list.stdout).expect("json");
    let state = |p: &str| {
        list.as_array()
            .and_then(|rows| rows.iter().find(|r| r["profile"] == p))
            .map(|r| r["state"].clone())
    };
    assert_eq!(state("a"), Some(Value::from("stopped")));
    assert_eq!(state("b"), Some(Value::from("running")));
}

#[tokio::test]
async fn print_and_fd_output_arrive_tagged_with_the_engine() {
    let world = World::new();
    world.start("o", 2, &[]);
    let client = world.client("o").await;
    let (outputs, reply) = run(
        &client,
        1,
        "import os, sys\nprint('from-print')\nsys.stdout.flush()\nos.system('echo from-fd')",
    )
    .await;
    assert_eq!(reply["status"], "ok");
    let text = stream_text(&outputs);
    assert_eq!(text.matches("from-print").count(), 1, "{text:?}");
    assert_eq!(text.matches("from-fd").count(), 1, "{text:?}");
    for message in outputs.iter().filter(|m| m.msg_type() == "stream") {
        assert_eq!(engine_of(message), Some(1));
    }
}

#[tokio::test]
async fn a_running_profile_is_refused_and_a_stale_one_cleaned() {
    let world = World::new();
    world.start("s", 1, &[]);
    let again = world.run(&[
        "cluster",
        "start",
        "--daemonize",
        "--profile",
        "s",
        "-n",
        "1",
    ]);
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("already running"), "{stderr}");

    // A crash: every process of the cluster killed, its files left behind.
    let client = world.client("s").await;
    let engines = client.engines().await.expect("engines");
    drop(client);
    let pids = all_pids(&world, "s", &engines);
    for pid in &pids {
        kill9(*pid);
    }
    assert!(eventually(Duration::from_secs(5), || pids.iter().all(|p| !alive(*p))).await);
    let list = world.run(&["cluster", "list", "--json"]);
    let list: Value = serde_json::from_slice(&list.stdout).expect("json");
    assert_eq!(list[0]["state"], "stale", "{list}");

    let out = world.start("s", 1, &[]);
    assert!(out.contains("ready: 1 engines"), "{out}");
}

/// Regression: `cluster stop` recognised the cluster's processes by a binary named `parallax`;
/// a cluster started by a copy under another name was reported stopped and left running.
#[tokio::test]
async fn a_cluster_started_by_a_renamed_binary_is_stopped() {
    let world = World::new();
    let renamed = world.dir.path().join("px-renamed");
    std::fs::copy(exe(), &renamed).expect("copy the binary");
    let start = world
        .command_of(
            &renamed,
            &[
                "cluster",
                "start",
                "--daemonize",
                "--profile",
                "r",
                "-n",
                "1",
            ],
        )
        .output()
        .expect("start");
    assert!(
        start.status.success(),
        "{}",
        String::from_utf8_lossy(&start.stderr)
    );
    let client = world.client("r").await;
    let engines = client.engines().await.expect("engines");
    drop(client);
    let pids = all_pids(&world, "r", &engines);
    let list = world
        .command_of(&renamed, &["cluster", "list", "--json"])
        .output();
    let list: Value = serde_json::from_slice(&list.expect("list").stdout).expect("json");
    assert_eq!(list[0]["state"], "running", "{list}");

    let stop = world
        .command_of(&renamed, &["cluster", "stop", "--profile", "r"])
        .output()
        .expect("stop");
    assert!(stop.status.success());
    assert!(
        eventually(Duration::from_secs(10), || pids.iter().all(|p| !alive(*p))).await,
        "left running: {:?}",
        pids.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn engines_that_cannot_start_are_named_with_their_log_and_nothing_is_left() {
    let world = World::new();
    let started = Instant::now();
    let out = world.run(&[
        "cluster",
        "start",
        "--daemonize",
        "--profile",
        "bad",
        "-n",
        "2",
        "--kernel",
        "no-such-kernel",
        "--timeout",
        "30",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        stderr.contains("0 of 2 engines ready (every engine process exited)"),
        "{stderr}"
    );
    assert!(stderr.contains("engine process 0"), "{stderr}");
    assert!(stderr.contains("engine-1.log"), "{stderr}");
    assert!(stderr.contains("no-such-kernel"), "{stderr}");
    let list = world.run(&["cluster", "list", "--json"]);
    let list: Value = serde_json::from_slice(&list.stdout).expect("json");
    assert_eq!(list[0]["state"], "stopped", "{list}");
}

#[tokio::test]
async fn interrupts_carry_the_chosen_signal_to_the_engine_kernel() {
    let world = World::new();
    world.start("sig", 2, &[]);
    let client = world.client("sig").await;
    let code = "import signal, time\n\
                def on_usr1(*_):\n    raise RuntimeError('got SIGUSR1')\n\
                signal.signal(signal.SIGUSR1, on_usr1)\n\
                print('waiting', flush=True)\n\
                time.sleep(30)";
    let mut execution = client.execute(0, code).await.expect("submit");
    // Wait until the handler is installed: the cell printed.
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), execution.next())
            .await
            .expect("output within 10 s")
            .expect("a message");
        if message.msg_type() == "stream" {
            break;
        }
    }
    let interrupted = client
        .interrupt(Some(vec![0]), Some("SIGUSR1".into()))
        .await
        .expect("interrupt");
    assert_eq!(interrupted, vec![0]);
    let (_, reply) = tokio::time::timeout(Duration::from_secs(5), execution.finish())
        .await
        .expect("the cell ends");
    let reply = content(&reply.expect("reply"));
    assert_eq!(reply["status"], "error");
    assert_eq!(reply["evalue"], "got SIGUSR1", "{reply}");
    // Engine 1 was not signalled.
    let (_, reply) = run(&client, 1, "'still here'").await;
    assert_eq!(reply["status"], "ok");
}

#[tokio::test]
async fn an_engine_stopped_by_sigterm_says_so_at_once() {
    let world = World::new();
    world.start("bye", 2, &[]);
    let client = world.client("bye").await;
    let mut notifications = client.subscribe();
    let engines = client.engines().await.expect("engines");
    let victim = engines
        .iter()
        .find(|e| e.id == 1)
        .expect("engine 1")
        .clone();
    let stopped_at = Instant::now();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &victim.pid.to_string()])
        .status();
    let died = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            if let Ok(Notification::EngineDied(died)) = notifications.recv().await {
                return died;
            }
        }
    })
    .await
    .expect("engine_died within 1 s, not after the heartbeat timeout");
    assert_eq!(died.id, 1);
    assert_eq!(died.reason, "the engine stopped");
    assert!(stopped_at.elapsed() < Duration::from_secs(1));
    assert!(eventually(Duration::from_secs(5), || !alive(victim.kernel_pid)).await);
}

/// `parallax engine --file -`: the engine reads the engine file as one line on standard input
/// (how the SSH launcher reaches a host without the profile's files), registers, and stops, its
/// kernel with it, when standard input closes (the launcher is gone).
#[tokio::test]
async fn an_engine_fed_on_stdin_registers_and_stops_when_stdin_closes() {
    use std::io::Write;
    let world = World::new();
    world.start("s", 1, &[]);
    let profile = world.profile("s");
    let connection = std::fs::read_to_string(profile.engine_file()).expect("engine file");
    let mut child = world
        .command(&["engine", "--file", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("engine");
    let mut stdin = child.stdin.take().expect("stdin");
    writeln!(stdin, "{}", connection.replace('\n', " ")).expect("write the connection info");
    let client = world.client("s").await;
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let engines = client.engines().await.expect("engines");
        if engines
            .iter()
            .any(|e| e.pid == pid && e.state == EngineState::Idle)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the engine fed on stdin registered: {engines:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(stdin);
    let exited = eventually(Duration::from_secs(20), || {
        matches!(child.try_wait(), Ok(Some(_)))
    })
    .await;
    assert!(exited, "the engine stops once its standard input closes");
}

/// `PARALLAX_CONNECTION_INFO` (an MPI or batch job's way) works too, and an engine whose
/// controller never answers says where it dialled and what became of the connection.
#[tokio::test]
async fn an_engine_reads_its_connection_from_the_environment_and_says_where_it_dialled() {
    let world = World::new();
    let unused = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = unused.local_addr().expect("port").port();
    drop(unused);
    let file = ControllerFile {
        url: format!("tcp://127.0.0.1:{port}"),
        key: "k".into(),
        signature_scheme: "hmac-sha256".into(),
        profile: "nowhere".into(),
        controller_pid: 1,
        ..ControllerFile::default()
    };
    let out = world
        .command(&["engine", "--timeout", "3"])
        .env(
            "PARALLAX_CONNECTION_INFO",
            serde_json::to_string(&file).expect("json"),
        )
        .output()
        .expect("engine");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!(
            "the controller at tcp://127.0.0.1:{port} did not answer register_request within 3s"
        )) && stderr.contains("no connection was made"),
        "{stderr}"
    );
    let missing = world.run(&["engine"]);
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("where is the controller?"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}
