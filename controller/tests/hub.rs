//! The controller's normal work: registration, routing executes and their outputs, the queries.

mod common;

use common::{Client, Controller, Engine};
use serde_json::{json, Value};

#[tokio::test]
async fn registration_gives_0_1_2_and_notifies_connected_clients() {
    let root = tempfile::tempdir().expect("tempdir");
    let controller = Controller::start(root.path(), "reg").await;
    let (mut client, reply) = Client::connect_and_subscribe(&controller.client_file()).await;
    assert_eq!(reply["profile"], "reg");
    assert_eq!(reply["engines"], json!([]));

    let mut engines = Vec::new();
    for expected in 0..3 {
        let engine = Engine::start(&controller.engine_file()).await;
        assert_eq!(engine.id, Some(expected));
        let note = client.peer.recv_type("engine_registered").await;
        let info: Value = note.content_as().expect("content");
        assert_eq!(info["id"], expected);
        assert_eq!(info["uuid"], engine.uuid);
        assert_eq!(info["state"], "idle");
        assert_eq!(info["kernel"], "python3");
        engines.push(engine);
    }

    let reply = client.ask("engines_request", json!({})).await;
    let ids: Vec<u64> = reply["engines"]
        .as_array()
        .expect("engines")
        .iter()
        .map(|e| e["id"].as_u64().expect("id"))
        .collect();
    assert_eq!(ids, vec![0, 1, 2]);

    // A client connecting later sees them in its connect_reply.
    let (_, reply) = Client::connect_and_subscribe(&controller.client_file()).await;
    assert_eq!(reply["engines"].as_array().expect("engines").len(), 3);
    controller.stop().await;
}

#[tokio::test]
async fn executes_reach_their_engine_and_outputs_come_back_to_their_client_in_order() {
    let root = tempfile::tempdir().expect("tempdir");
    let controller = Controller::start(root.path(), "route").await;
    let mut engine0 = Engine::start(&controller.engine_file()).await;
    let mut engine1 = Engine::start(&controller.engine_file()).await;
    let mut alice = Client::connect(&controller.client_file()).await;
    let mut bob = Client::connect(&controller.client_file()).await;

    let to_one = alice.execute(1, "print('alice')").await;
    let to_zero = bob.execute(0, "print('bob')").await;

    // Each engine gets its request unchanged.
    let got1 = engine1.next_request("execute_request").await;
    assert_eq!(got1.header_raw(), to_one.header_raw());
    assert_eq!(got1.content, to_one.content);
    let got0 = engine0.next_request("execute_request").await;
    assert_eq!(got0.msg_id(), to_zero.msg_id());

    let sent1 = engine1.answer(&got1, "alice\n", "1").await;
    let sent0 = engine0.answer(&got0, "bob\n", "0").await;

    for (client, request, sent, engine_id) in [
        (&mut alice, &to_one, &sent1, 1),
        (&mut bob, &to_zero, &sent0, 0),
    ] {
        for expected in sent {
            let got = client.peer.recv_child(request).await;
            assert_eq!(got.msg_id(), expected.msg_id(), "in order");
            assert_eq!(got.msg_type(), expected.msg_type());
            assert_eq!(got.content, expected.content);
            let metadata: Value = got.metadata_as().expect("metadata");
            assert_eq!(metadata["engine_id"], engine_id);
        }
    }
    // Nobody got the other's messages.
    assert!(
        !alice
            .peer
            .receives_within(std::time::Duration::from_millis(200), |m| m.parent_msg_id()
                == Some(to_zero.msg_id()))
            .await
    );
    controller.stop().await;
}

#[tokio::test]
async fn task_request_returns_the_record() {
    let root = tempfile::tempdir().expect("tempdir");
    let controller = Controller::start(root.path(), "task").await;
    let _engine0 = Engine::start(&controller.engine_file()).await;
    let mut engine1 = Engine::start(&controller.engine_file()).await;
    let mut client = Client::connect(&controller.client_file()).await;

    let request = client.execute(1, "print('hello'); 6 * 7").await;
    let pending = client
        .ask("task_request", json!({"msg_id": request.msg_id()}))
        .await;
    assert_eq!(pending["status"], "ok", "{pending}");
    assert_eq!(pending["task"]["status"], "pending");

    let got = engine1.next_request("execute_request").await;
    engine1.answer(&got, "hello\n", "42").await;
    let (_, reply) = client.reply_to(&request).await;
    assert_eq!(reply["status"], "ok");

    let reply = client
        .ask("task_request", json!({"msg_id": request.msg_id()}))
        .await;
    assert_eq!(reply["status"], "ok", "{reply}");
    let task = &reply["task"];
    assert_eq!(task["msg_id"], request.msg_id());
    assert_eq!(task["client"], client.peer.session.id());
    assert_eq!(task["engine"], 1);
    assert_eq!(task["msg_type"], "execute_request");
    assert_eq!(task["status"], "ok");
    assert_eq!(task["stdout"], "hello\n");
    assert_eq!(task["stderr"], "");
    assert_eq!(task["result"], json!({"text/plain": "42"}));
    assert_eq!(task["error"], Value::Null);
    for time in ["submitted", "started", "completed", "received"] {
        assert!(
            task[time].as_str().is_some_and(|t| t.len() >= 20),
            "{time}: {task}"
        );
    }

    let reply = client.ask("task_request", json!({"msg_id": "xyz"})).await;
    assert_eq!(reply["status"], "error");
    assert_eq!(reply["evalue"], "'No such message: xyz'");
    controller.stop().await;
}

#[tokio::test]
async fn queue_request_counts_outstanding_and_completed_requests() {
    let root = tempfile::tempdir().expect("tempdir");
    let controller = Controller::start(root.path(), "queue").await;
    let mut engine0 = Engine::start(&controller.engine_file()).await;
    let _engine1 = Engine::start(&controller.engine_file()).await;
    let mut client = Client::connect_and_subscribe(&controller.client_file())
        .await
        .0;

    let first = client.execute(0, "a").await;
    let second = client.execute(0, "b").await;
    let got = engine0.next_request("execute_request").await;
    assert_eq!(got.msg_id(), first.msg_id());
    engine0.next_request("execute_request").await;

    let queue = client.ask("queue_request", json!({})).await;
    assert_eq!(queue["status"], "ok");
    assert_eq!(queue["unassigned"], 0);
    assert_eq!(
        queue["engines"],
        json!({"0": {"queue": 2, "completed": 0, "tasks": 0},
               "1": {"queue": 0, "completed": 0, "tasks": 0}})
    );
    let engines = client.ask("engines_request", json!({})).await;
    assert_eq!(engines["engines"][0]["state"], "busy");

    engine0.answer(&got, "", "1").await;
    client.reply_to(&first).await;
    let queue = client.ask("queue_request", json!({})).await;
    assert_eq!(
        queue["engines"]["0"],
        json!({"queue": 1, "completed": 1, "tasks": 0})
    );
    let _ = second;
    controller.stop().await;
}

#[tokio::test]
async fn engines_request_names_the_request_each_busy_engine_runs() {
    let root = tempfile::tempdir().expect("tempdir");
    let controller = Controller::start(root.path(), "running").await;
    let mut engine0 = Engine::start(&controller.engine_file()).await;
    let _engine1 = Engine::start(&controller.engine_file()).await;
    let mut client = Client::connect(&controller.client_file()).await;

    let before = parallax_wire::now_iso8601();
    let first = client.execute(0, "a = 1\nb = 2").await;
    let second = client.execute(0, "c = 3").await;
    let got = engine0.next_request("execute_request").await;
    engine0.next_request("execute_request").await;

    let engines = client.ask("engines_request", json!({})).await;
    let running = &engines["engines"][0]["running"];
    assert_eq!(running["msg_id"], first.msg_id(), "{engines}");
    assert_eq!(running["msg_type"], "execute_request");
    assert_eq!(running["code"], "a = 1\nb = 2");
    let started = running["started"].as_str().expect("started");
    assert!(started >= before.as_str(), "{started} < {before}");
    assert!(
        engines["engines"][1].get("running").is_none(),
        "an idle engine runs nothing: {engines}"
    );

    // The second began when the engine answered the first, not when it was sent.
    let answered = parallax_wire::now_iso8601();
    engine0.answer(&got, "", "1").await;
    client.reply_to(&first).await;
    let (_, reply) = client.peer.ask("connect_request", json!({})).await;
    let running = &reply["engines"][0]["running"];
    assert_eq!(running["msg_id"], second.msg_id(), "{reply}");
    let started = running["started"].as_str().expect("started");
    assert!(started >= answered.as_str(), "{started} < {answered}");
    controller.stop().await;
}

#[tokio::test]
async fn unknown_requests_get_error_replies() {
    let root = tempfile::tempdir().expect("tempdir");
    let controller = Controller::start(root.path(), "unknown").await;
    let mut client = Client::connect(&controller.client_file()).await;
    for (sent, expected) in [("foo_request", "foo_reply"), ("bar", "bar_reply")] {
        let (reply, content) = client.peer.ask(sent, json!({})).await;
        assert_eq!(reply.msg_type(), expected);
        assert_eq!(content["status"], "error");
        assert_eq!(content["ename"], "UnknownMessageType");
        assert!(content["evalue"].as_str().expect("evalue").contains(sent));
    }
    let stats = client.ask("stats_request", json!({})).await;
    assert_eq!(
        stats,
        json!({"status": "ok", "rejected": {"client": 0, "engine": 0}})
    );
    controller.stop().await;
}

#[tokio::test]
async fn interrupts_are_forwarded_to_their_engines() {
    let root = tempfile::tempdir().expect("tempdir");
    let controller = Controller::start(root.path(), "interrupt").await;
    let mut engine0 = Engine::start(&controller.engine_file()).await;
    let mut engine1 = Engine::start(&controller.engine_file()).await;
    let mut client = Client::connect(&controller.client_file()).await;

    let reply = client
        .ask("interrupt_request", json!({"targets": [1]}))
        .await;
    assert_eq!(reply, json!({"status": "ok", "engines": [1]}));
    engine1.next_request("interrupt_request").await;

    let reply = client.ask("interrupt_request", json!({})).await;
    assert_eq!(reply, json!({"status": "ok", "engines": [0, 1]}));
    engine0.next_request("interrupt_request").await;
    engine1.next_request("interrupt_request").await;

    let reply = client
        .ask("interrupt_request", json!({"targets": [0, 7]}))
        .await;
    assert_eq!(reply["status"], "error");
    assert_eq!(reply["engines"], json!([0]));
    assert_eq!(reply["evalue"], "there is no engine 7 (engines: 0, 1)");
    controller.stop().await;
}
