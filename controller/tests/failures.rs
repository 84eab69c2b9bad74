//! What goes wrong: requests for engines that are not there, engines that die, kernels that
//! restart, and bad input on both sockets.

mod common;

use std::time::{Duration, Instant};

use common::{Client, Controller, Engine};
use parallax_wire::{Bytes, Session, DELIMITER};
use serde_json::{json, Value};

#[tokio::test]
async fn requests_for_missing_or_dead_engines_fail_clearly() {
    let root = tempfile::tempdir().expect("tempdir");
    let controller = Controller::start(root.path(), "missing").await;
    let mut engine0 = Engine::start(&controller.engine_file()).await;
    let _engine1 = Engine::start(&controller.engine_file()).await;
    let mut client = Client::connect(&controller.client_file()).await;

    let request = client.execute(5, "x").await;
    let (reply, content) = client.reply_to(&request).await;
    assert_eq!(content["status"], "error");
    assert_eq!(content["ename"], "EngineError");
    assert_eq!(content["evalue"], "there is no engine 5 (engines: 0, 1)");
    assert_eq!(content["execution_count"], Value::Null);
    let metadata: Value = reply.metadata_as().expect("metadata");
    assert_eq!(metadata, json!({"engine_id": 5, "status": "error"}));

    // No routing metadata at all.
    let unrouted = client
        .peer
        .send_new("execute_request", common::execute_content("x"))
        .await;
    let (_, content) = client.reply_to(&unrouted).await;
    assert_eq!(content["ename"], "RoutingError");
    assert!(
        content["evalue"]
            .as_str()
            .expect("evalue")
            .contains("needs metadata {\"engine\": <id>}"),
        "{content}"
    );

    // A dead engine.
    engine0
        .peer
        .send_new(
            "kernel_died",
            json!({"id": 0, "exit": "exit status 1", "restarting": false}),
        )
        .await;
    engine0.stop_heartbeats();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let request = client.execute(0, "x").await;
        let (_, content) = client.reply_to(&request).await;
        if content["evalue"] == "engine 0 is dead" {
            break;
        }
        assert!(Instant::now() < deadline, "engine 0 never reported dead");
    }
    // The refused requests are recorded too.
    let record = client
        .ask("task_request", json!({"msg_id": unrouted.msg_id()}))
        .await;
    assert_eq!(record["task"]["status"], "error");
    assert_eq!(record["task"]["engine"], Value::Null);
    assert_eq!(record["task"]["error"]["ename"], "RoutingError");
    controller.stop().await;
}

#[tokio::test]
async fn silent_engines_die_within_3_s_and_fail_their_requests() {
    let root = tempfile::tempdir().expect("tempdir");
    let controller = Controller::start(root.path(), "heartbeat").await;
    let (mut client, _) = Client::connect_and_subscribe(&controller.client_file()).await;
    let _engine0 = Engine::start(&controller.engine_file()).await;
    let mut engine1 = Engine::start(&controller.engine_file()).await;
    let request = client.execute(1, "import time; time.sleep(100)").await;
    let got = engine1.next_request("execute_request").await;
    // The kernel starts it and prints, then the engine vanishes.
    engine1
        .peer
        .send(engine1.child(&got, "status", json!({"execution_state": "busy"})))
        .await;
    engine1
        .peer
        .send(engine1.child(&got, "stream", json!({"name": "stdout", "text": "zzz\n"})))
        .await;
    engine1.peer.recv_type("heartbeat_reply").await;
    engine1.stop_heartbeats();
    let stopped = Instant::now();

    let died = client.peer.recv_type("engine_died").await;
    let elapsed = stopped.elapsed();
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    assert!(
        elapsed >= Duration::from_millis(1500),
        "too eager: {elapsed:?}"
    );
    let died: Value = died.content_as().expect("content");
    assert_eq!(
        died,
        json!({"id": 1, "reason": "no heartbeat for 2.0 s", "restarting": false})
    );

    let (reply, content) = client.reply_to(&request).await;
    assert_eq!(content["status"], "error");
    assert_eq!(content["ename"], "EngineError");
    assert_eq!(
        content["evalue"],
        "engine 1 died while running this request"
    );
    assert_eq!(
        content["traceback"],
        json!(["EngineError: engine 1 died while running this request"])
    );
    let metadata: Value = reply.metadata_as().expect("metadata");
    assert_eq!(metadata, json!({"engine_id": 1, "status": "error"}));

    let engines = client.ask("engines_request", json!({})).await;
    assert_eq!(engines["engines"][1]["state"], "dead");
    assert_eq!(engines["engines"][0]["state"], "idle");
    let queue = client.ask("queue_request", json!({})).await;
    assert_eq!(queue["engines"].as_object().expect("engines").len(), 1);

    let record = client
        .ask("task_request", json!({"msg_id": request.msg_id()}))
        .await;
    assert_eq!(record["task"]["status"], "error");
    assert_eq!(record["task"]["stdout"], "zzz\n");
    assert_eq!(
        record["task"]["error"]["evalue"],
        "engine 1 died while running this request"
    );

    // Its heartbeats are no longer answered; registering again brings it back as engine 1.
    engine1.peer.forget(|m| m.msg_type() == "heartbeat_reply");
    engine1.peer.send_new("heartbeat", json!({"id": 1})).await;
    assert!(
        !engine1
            .peer
            .receives_within(Duration::from_millis(300), |m| m.msg_type()
                == "heartbeat_reply")
            .await
    );
    assert_eq!(engine1.register(Some(1)).await, 1);
    controller.stop().await;
}

#[tokio::test]
async fn a_restarted_kernel_reclaims_its_id() {
    let root = tempfile::tempdir().expect("tempdir");
    let controller = Controller::start(root.path(), "restart").await;
    let (mut client, _) = Client::connect_and_subscribe(&controller.client_file()).await;
    let _engine0 = Engine::start(&controller.engine_file()).await;
    let mut engine1 = Engine::start(&controller.engine_file()).await;
    client.peer.forget(|m| m.msg_type() == "engine_registered");

    engine1
        .peer
        .send_new(
            "kernel_died",
            json!({"id": 1, "exit": "exit status 1", "restarting": true}),
        )
        .await;
    let died: Value = client
        .peer
        .recv_type("engine_died")
        .await
        .content_as()
        .expect("content");
    assert_eq!(
        died,
        json!({"id": 1, "reason": "kernel exited (exit status 1)", "restarting": true})
    );
    let engines = client.ask("engines_request", json!({})).await;
    assert_eq!(engines["engines"][1]["state"], "restarting");

    // Another engine asking for id 1 while it restarts does not get it, nor id 0 (live).
    let mut intruder = Engine::connect(&controller.engine_file()).await;
    assert_eq!(intruder.register(Some(1)).await, 2);
    let mut other = Engine::connect(&controller.engine_file()).await;
    assert_eq!(other.register(Some(0)).await, 3);

    assert_eq!(engine1.register(Some(1)).await, 1);
    let info: Value = client
        .peer
        .recv_where("engine 1 registered", |m| {
            m.msg_type() == "engine_registered"
                && m.content_as::<Value>().is_ok_and(|c| c["id"] == 1)
        })
        .await
        .content_as()
        .expect("content");
    assert_eq!(info["id"], 1);
    assert_eq!(info["uuid"], engine1.uuid);
    assert_eq!(info["state"], "idle");

    // It runs requests again.
    let request = client.execute(1, "1").await;
    let got = engine1.next_request("execute_request").await;
    engine1.answer(&got, "", "1").await;
    let (_, content) = client.reply_to(&request).await;
    assert_eq!(content["status"], "ok");

    // A kernel that is not coming back fails what is still in flight.
    let request = client.execute(1, "2").await;
    engine1.next_request("execute_request").await;
    engine1
        .peer
        .send_new(
            "kernel_died",
            json!({"id": 1, "exit": "killed by SIGKILL", "restarting": false}),
        )
        .await;
    let (_, content) = client.reply_to(&request).await;
    assert_eq!(
        content["evalue"],
        "engine 1 died while running this request"
    );
    let died: Value = client
        .peer
        .recv_type("engine_died")
        .await
        .content_as()
        .expect("content");
    assert_eq!(died["reason"], "kernel exited (killed by SIGKILL)");
    assert_eq!(died["restarting"], false);
    controller.stop().await;
}

/// Sends raw frames on a fresh DEALER: garbage, a truncated message, a badly signed one.
fn send_bad_frames(url: &str, key: &str) -> zmq::Socket {
    let raw = zmq::Context::new().socket(zmq::DEALER).expect("socket");
    raw.set_rcvtimeo(i32::try_from(common::TIMEOUT.as_millis()).unwrap_or(i32::MAX))
        .expect("timeout");
    raw.connect(url).expect("connect");
    raw.send("garbage", 0).expect("send");
    let truncated: [&[u8]; 3] = [DELIMITER, b"sig", b"{}"];
    raw.send_multipart(truncated, 0).expect("send");
    let wrong_key = Session::new(b"not-the-key", "intruder");
    let badly_signed = wrong_key.encode(&wrong_key.message("connect_request", &json!({})));
    raw.send_multipart(badly_signed.iter().map(|f| f.to_vec()), 0)
        .expect("send");
    // Then a good request on the same connection: once it is answered, the bad ones have
    // been through the controller too.
    let session = Session::new(key.as_bytes(), "raw");
    let good = session.encode(&session.message(
        "register_request",
        &json!({"uuid": "raw", "host": "h", "pid": 1, "kernel": "k", "kernel_pid": 2}),
    ));
    raw.send_multipart(good.iter().map(|f| f.to_vec()), 0)
        .expect("send");
    raw
}

/// The next message on a raw socket, received off the runtime's thread.
async fn recv_raw(raw: zmq::Socket) -> (zmq::Socket, Vec<Bytes>) {
    tokio::task::spawn_blocking(move || {
        let frames = raw.recv_multipart(0).expect("answered in time");
        (raw, frames.into_iter().map(Bytes::from).collect())
    })
    .await
    .expect("receiver")
}

#[tokio::test]
async fn bad_frames_are_rejected_counted_and_harmless() {
    let root = tempfile::tempdir().expect("tempdir");
    let controller = Controller::start(root.path(), "bad").await;
    let key = controller.client_file().key;
    let session = Session::new(key.as_bytes(), "raw");

    // Client side: the good message is a register_request, which a client may not send: it
    // gets an UnknownMessageType reply, so we know the bad frames before it were handled.
    let raw = send_bad_frames(&controller.client_file().url, &key);
    let (_raw, frames) = recv_raw(raw).await;
    let reply = session.decode(frames).expect("valid reply");
    assert_eq!(reply.msg_type(), "register_reply");
    let content: Value = reply.content_as().expect("content");
    assert_eq!(content["ename"], "UnknownMessageType");

    // Engine side: the good message registers.
    let raw = send_bad_frames(&controller.engine_file().url, &key);
    let (_engine_link, frames) = recv_raw(raw).await;
    let reply = session.decode(frames).expect("valid reply");
    assert_eq!(reply.msg_type(), "register_reply");
    let content: Value = reply.content_as().expect("content");
    assert_eq!(content["status"], "ok");
    assert_eq!(content["id"], 0);

    let mut client = Client::connect(&controller.client_file()).await;
    let stats = client.ask("stats_request", json!({})).await;
    assert_eq!(
        stats,
        json!({"status": "ok", "rejected": {"client": 3, "engine": 3}})
    );
    // And it still serves.
    let engines = client.ask("engines_request", json!({})).await;
    assert_eq!(engines["engines"][0]["uuid"], "raw");
    controller.stop().await;
}
