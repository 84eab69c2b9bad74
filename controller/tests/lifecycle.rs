//! Starting, stopping, restarting: the security files, shutdown of engines, the task database
//! outliving the controller, controllers side by side.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{Client, Controller, Engine};
use parallax_controller::{run, ControllerError, ControllerOptions};
use serde_json::json;

#[tokio::test]
async fn security_files_are_private_and_removed_at_shutdown_after_engines_are_stopped() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut controller = Controller::start(root.path(), "stop").await;
    let client_file = controller.client_file();
    let engine_file = controller.engine_file();
    assert!(client_file.url.starts_with("tcp://127.0.0.1:"));
    assert_ne!(client_file.url, engine_file.url);
    assert_eq!(client_file.key, engine_file.key);
    assert_eq!(client_file.signature_scheme, "hmac-sha256");
    assert_eq!(client_file.profile, "stop");
    assert_eq!(client_file.controller_pid, std::process::id());
    for path in [
        controller.profile.client_file(),
        controller.profile.engine_file(),
    ] {
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", path.display());
    }
    let mode = std::fs::metadata(controller.profile.security_dir())
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);

    let mut engines = vec![
        Engine::start(&engine_file).await,
        Engine::start(&engine_file).await,
    ];
    let mut client = Client::connect(&client_file).await;
    let running = client.execute(1, "while True: pass").await;
    engines[1].next_request("execute_request").await;

    controller.signal_stop();
    for engine in &mut engines {
        let request = engine.next_request("shutdown_request").await;
        let reply = engine.child(&request, "shutdown_reply", json!({"status": "ok"}));
        engine.peer.send(reply).await;
    }
    let profile = controller.profile.clone();
    controller.join().await;
    assert!(!profile.client_file().exists());
    assert!(!profile.engine_file().exists());
    // The request still running was answered.
    let (_, content) = client.reply_to(&running).await;
    assert_eq!(content["ename"], "EngineError");
    assert_eq!(
        content["evalue"],
        "the controller shut down before engine 1 finished this request"
    );
}

#[tokio::test]
async fn the_task_database_outlives_the_controller() {
    let root = tempfile::tempdir().expect("tempdir");
    let controller = Controller::start(root.path(), "db").await;
    let mut engine = Engine::start(&controller.engine_file()).await;
    let mut client = Client::connect(&controller.client_file()).await;
    let request = client.execute(0, "print('kept')").await;
    let got = engine.next_request("execute_request").await;
    engine.answer(&got, "kept\n", "None").await;
    client.reply_to(&request).await;
    let profile = controller.profile.clone();
    drop(engine);
    controller.stop().await;

    {
        let db = rusqlite::Connection::open(profile.tasks_db()).expect("open");
        let (status, stdout, code, engine): (String, String, String, u32) = db
            .query_row(
                "SELECT status, stdout, code, engine FROM tasks WHERE msg_id = ?1",
                [request.msg_id()],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
            )
            .expect("row");
        assert_eq!(
            (status.as_str(), stdout.as_str(), code.as_str(), engine),
            ("ok", "kept\n", "print('kept')", 0)
        );
        let (state, done): (String, u64) = db
            .query_row(
                "SELECT state, tasks_done FROM engines WHERE id = 0",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .expect("engine row");
        assert_eq!((state.as_str(), done), ("dead", 1));
        let mode: String = db
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))
            .expect("mode");
        assert_eq!(mode, "wal");
    }

    // A new controller on the same profile answers for the old task.
    let controller = Controller::start(root.path(), "db").await;
    let mut client = Client::connect(&controller.client_file()).await;
    let reply = client
        .ask("task_request", json!({"msg_id": request.msg_id()}))
        .await;
    assert_eq!(reply["status"], "ok", "{reply}");
    assert_eq!(reply["task"]["stdout"], "kept\n");
    assert_eq!(reply["task"]["result"], json!({"text/plain": "None"}));
    // Ids start again from 0 for the new controller's engines.
    let engine = Engine::start(&controller.engine_file()).await;
    assert_eq!(engine.id, Some(0));
    controller.stop().await;
}

#[tokio::test]
async fn controllers_on_two_profiles_do_not_interfere() {
    let root = tempfile::tempdir().expect("tempdir");
    let a = Controller::start(root.path(), "a").await;
    let b = Controller::start(root.path(), "b").await;
    assert_ne!(a.client_file().url, b.client_file().url);
    assert_ne!(a.client_file().key, b.client_file().key);

    let engine_a = Engine::start(&a.engine_file()).await;
    let engine_b = Engine::start(&b.engine_file()).await;
    assert_eq!((engine_a.id, engine_b.id), (Some(0), Some(0)));
    let _second_a = Engine::start(&a.engine_file()).await;

    let (mut client_a, reply) = Client::connect_and_subscribe(&a.client_file()).await;
    assert_eq!(reply["profile"], "a");
    assert_eq!(reply["engines"].as_array().expect("engines").len(), 2);
    let (mut client_b, reply) = Client::connect_and_subscribe(&b.client_file()).await;
    assert_eq!(reply["profile"], "b");
    assert_eq!(reply["engines"][0]["uuid"], engine_b.uuid);

    // A client holding b's key is refused by a.
    let mut wrong = b.client_file();
    wrong.url = a.client_file().url;
    let intruder = Client::connect(&wrong).await;
    intruder.peer.send_new("connect_request", json!({})).await;
    let deadline = tokio::time::Instant::now() + common::TIMEOUT;
    loop {
        let stats = client_a.ask("stats_request", json!({})).await;
        if stats["rejected"]["client"] == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{stats}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let stats = client_b.ask("stats_request", json!({})).await;
    assert_eq!(stats["rejected"], json!({"client": 0, "engine": 0}));

    b.stop().await;
    let engines = client_a.ask("engines_request", json!({})).await;
    assert_eq!(engines["engines"].as_array().expect("engines").len(), 2);
    a.stop().await;
}

#[tokio::test]
async fn a_second_controller_on_a_running_profile_is_refused() {
    let root = tempfile::tempdir().expect("tempdir");
    let controller = Controller::start(root.path(), "busy").await;
    // The running controller is this process: a file naming another live process that
    // accepts connections is what refuses. Pretend the file names our parent.
    let original = controller.client_file();
    let mut file = original.clone();
    file.controller_pid = std::os::unix::process::parent_id();
    parallax_wire::profile::write_json(&controller.profile.client_file(), &file, true)
        .expect("write");
    let second = run(
        ControllerOptions::new(controller.profile.clone()),
        std::future::ready(()),
    )
    .await;
    match second {
        Err(ControllerError::AlreadyRunning { pid, .. }) => assert_eq!(pid, file.controller_pid),
        other => panic!("expected AlreadyRunning, got {other:?}"),
    }
    // The files are removed at shutdown only while they are the controller's own.
    parallax_wire::profile::write_json(&controller.profile.client_file(), &original, true)
        .expect("write");
    let profile = controller.profile.clone();
    controller.stop().await;
    assert!(!profile.client_file().exists());
}
