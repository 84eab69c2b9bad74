//! `apply_request`s: direct and load-balanced, through fake engines whose kernels' engine
//! support is played by a second peer per engine.

mod common;

use std::time::Duration;

use common::{Client, Controller, Engine, Peer};
use parallax_wire::cluster::EngineId;
use parallax_wire::{Bytes, Message};
use serde_json::{json, Value};

/// A fake engine with its kernel's engine support attached.
struct Supported {
    engine: Engine,
    support: Peer,
}

impl Supported {
    async fn start(controller: &Controller) -> Supported {
        let file = controller.engine_file();
        let mut engine = Engine::connect(&file).await;
        let mut support = Peer::connect(&file, None).await;
        let (_, reply) = support
            .ask("attach_request", json!({"uuid": engine.uuid}))
            .await;
        assert_eq!(reply["status"], "ok", "{reply}");
        engine.register(None).await;
        engine.start_heartbeats();
        Supported { engine, support }
    }

    fn id(&self) -> EngineId {
        self.engine.id.expect("registered")
    }

    async fn next_apply(&mut self) -> Message {
        self.support.recv_type("apply_request").await
    }

    /// Prints `text`, then answers `request` with `buffers` as the result.
    async fn answer(&self, request: &Message, text: &str, buffers: Vec<Bytes>) {
        let mut stream = self
            .support
            .session
            .message("stream", &json!({"name": "stdout", "text": text}));
        stream.set_parent(request);
        self.support.send(stream).await;
        let mut reply = self
            .support
            .session
            .message("apply_reply", &json!({"status": "ok"}))
            .with_metadata(&json!({
                "status": "ok",
                "started": "2026-01-01T00:00:00.000000Z",
                "completed": "2026-01-01T00:00:00.000100Z",
            }));
        reply.set_parent(request);
        reply.buffers = buffers;
        self.support.send(reply).await;
    }
}

async fn apply(client: &Client, metadata: Value, buffers: Vec<Bytes>) -> Message {
    let mut request = client
        .peer
        .session
        .message("apply_request", &json!({}))
        .with_metadata(&metadata);
    request.buffers = buffers;
    client.peer.send(request.clone()).await;
    request
}

async fn reply_to(client: &mut Client, request: &Message) -> (Message, Value) {
    let id = request.msg_id().to_owned();
    let reply = client
        .peer
        .recv_where("apply_reply", move |m| {
            m.msg_type() == "apply_reply" && m.parent_msg_id() == Some(id.as_str())
        })
        .await;
    let content = reply.content_as::<Value>().expect("content");
    (reply, content)
}

fn balanced(retries: u32) -> Value {
    json!({"balanced": true, "targets": null, "retries": retries, "timeout": null})
}

#[tokio::test]
async fn direct_applies_reach_the_support_and_results_outlive_the_client() {
    let root = tempfile::tempdir().expect("tempdir");
    let controller = Controller::start(root.path(), "direct").await;
    let mut engine = Supported::start(&controller).await;
    let mut client = Client::connect(&controller.client_file()).await;

    let call = vec![
        Bytes::from_static(b"pickle"),
        Bytes::from(vec![7u8; 100_000]),
    ];
    let request = apply(&client, json!({"engine": 0}), call.clone()).await;
    let got = engine.next_apply().await;
    assert_eq!(got.header_raw(), request.header_raw());
    assert_eq!(got.buffers, call, "buffers arrive untouched");
    engine
        .answer(&got, "hello\n", vec![Bytes::from_static(b"result")])
        .await;

    let stream = client.peer.recv_child(&request).await;
    assert_eq!(stream.msg_type(), "stream");
    let (reply, content) = reply_to(&mut client, &request).await;
    assert_eq!(content["status"], "ok");
    assert_eq!(reply.buffers, vec![Bytes::from_static(b"result")]);
    let metadata: Value = reply.metadata_as().expect("metadata");
    assert_eq!(metadata["engine_id"], 0);

    // A client that comes later gets the record and the result.
    let mut later = Client::connect(&controller.client_file()).await;
    let (task_reply, task) = later
        .peer
        .ask("task_request", json!({"msg_id": request.msg_id()}))
        .await;
    assert_eq!(task["status"], "ok", "{task}");
    assert_eq!(task["task"]["stdout"], "hello\n");
    assert_eq!(task["task"]["status"], "ok");
    assert_eq!(task["task"]["started"], "2026-01-01T00:00:00.000000Z");
    assert_eq!(task_reply.buffers, vec![Bytes::from_static(b"result")]);

    let records = later
        .ask(
            "query_request",
            json!({"query": {"msg_id": {"$in": [request.msg_id(), "nope"]}},
                   "keys": ["msg_id", "engine", "status", "result_bytes"]}),
        )
        .await;
    assert_eq!(
        records["records"],
        json!([{"msg_id": request.msg_id(), "engine": 0, "status": "ok", "result_bytes": 6}])
    );
    let bad = later
        .ask("query_request", json!({"query": {"nope": 1}}))
        .await;
    assert_eq!(bad["status"], "error");
    assert!(bad["evalue"]
        .as_str()
        .expect("evalue")
        .contains("cannot query on \"nope\""));

    let purged = later
        .ask("purge_request", json!({"msg_ids": [request.msg_id()]}))
        .await;
    assert_eq!(purged["purged"], 1);
    let (_, gone) = later
        .peer
        .ask("task_request", json!({"msg_id": request.msg_id()}))
        .await;
    assert_eq!(gone["ename"], "KeyError");
    controller.stop().await;
}

#[tokio::test]
async fn an_engine_without_support_refuses_applies_clearly() {
    let root = tempfile::tempdir().expect("tempdir");
    let controller = Controller::start(root.path(), "nosupport").await;
    let _engine = Engine::start(&controller.engine_file()).await;
    let mut client = Client::connect(&controller.client_file()).await;
    let request = apply(&client, json!({"engine": 0}), vec![]).await;
    let (_, content) = reply_to(&mut client, &request).await;
    assert_eq!(content["ename"], "EngineError");
    let evalue = content["evalue"].as_str().expect("evalue");
    assert!(
        evalue.starts_with("engine 0 cannot run apply requests"),
        "{evalue}"
    );
    let request = apply(&client, json!({"engine": 3}), vec![]).await;
    let (_, content) = reply_to(&mut client, &request).await;
    assert_eq!(content["evalue"], "there is no engine 3 (engines: 0)");
    let request = apply(&client, json!({"balanced": false}), vec![]).await;
    let (_, content) = reply_to(&mut client, &request).await;
    assert_eq!(content["ename"], "RoutingError");
    controller.stop().await;
}

#[tokio::test]
async fn load_balanced_tasks_are_pipelined_over_the_least_loaded_engines() {
    let root = tempfile::tempdir().expect("tempdir");
    let controller = Controller::start(root.path(), "balance").await;
    let mut engines = vec![
        Supported::start(&controller).await,
        Supported::start(&controller).await,
    ];
    let mut client = Client::connect(&controller.client_file()).await;
    let mut requests = Vec::new();
    for _ in 0..6 {
        requests.push(apply(&client, balanced(0), vec![Bytes::from_static(b"f")]).await);
    }
    // One in flight per engine until run times are known; the rest wait at the controller.
    let mut first = Vec::new();
    for engine in &mut engines {
        first.push(engine.next_apply().await);
    }
    let status = client.ask("queue_request", json!({})).await;
    assert_eq!(status["unassigned"], 4, "{status}");
    assert_eq!(status["engines"]["0"]["tasks"], 1, "{status}");
    assert_eq!(status["engines"]["0"]["queue"], 0, "{status}");

    // Answers (of 100 µs tasks) open the pipelines; the queue drains; every task gets its reply.
    let mut answered = 0;
    for (index, request) in first.iter().enumerate() {
        engines[index].answer(request, "", vec![]).await;
        answered += 1;
    }
    for engine in &mut engines {
        while answered < 6 {
            let more = tokio::time::timeout(Duration::from_millis(500), engine.next_apply()).await;
            let Ok(request) = more else { break };
            engine.answer(&request, "", vec![]).await;
            answered += 1;
        }
    }
    assert_eq!(answered, 6);
    for request in &requests {
        let (reply, content) = reply_to(&mut client, request).await;
        assert_eq!(content["status"], "ok");
        let metadata: Value = reply.metadata_as().expect("metadata");
        assert!(metadata["engine_id"].is_u64());
    }
    let status = client.ask("queue_request", json!({})).await;
    assert_eq!(status["unassigned"], 0);
    let done = |id: &str| status["engines"][id]["completed"].as_u64().expect("count");
    assert_eq!(done("0") + done("1"), 6);
    controller.stop().await;
}

#[tokio::test]
async fn tasks_of_a_dead_engine_are_retried_elsewhere_or_fail_naming_it() {
    let root = tempfile::tempdir().expect("tempdir");
    let controller = Controller::start(root.path(), "retry").await;
    let mut doomed = Supported::start(&controller).await;
    let mut client = Client::connect(&controller.client_file()).await;
    // A first short task lets the engine hold several at once.
    let warm_up = apply(&client, balanced(0), vec![]).await;
    let got = doomed.next_apply().await;
    doomed.answer(&got, "", vec![]).await;
    reply_to(&mut client, &warm_up).await;
    let retried = apply(&client, balanced(1), vec![Bytes::from_static(b"f")]).await;
    let lost = apply(&client, balanced(0), vec![Bytes::from_static(b"g")]).await;
    assert_eq!(doomed.next_apply().await.msg_id(), retried.msg_id());
    assert_eq!(doomed.next_apply().await.msg_id(), lost.msg_id());

    let mut survivor = Supported::start(&controller).await;
    doomed
        .engine
        .peer
        .send_new(
            "kernel_died",
            json!({"id": doomed.id(), "exit": "killed by SIGKILL", "restarting": false}),
        )
        .await;

    let (_, content) = reply_to(&mut client, &lost).await;
    assert_eq!(content["ename"], "EngineError");
    assert_eq!(
        content["evalue"],
        "engine 0 died while running this request"
    );
    let again = survivor.next_apply().await;
    assert_eq!(again.msg_id(), retried.msg_id());
    assert_eq!(
        again.buffers,
        vec![Bytes::from_static(b"f")],
        "resent whole"
    );
    survivor.answer(&again, "", vec![]).await;
    let (reply, content) = reply_to(&mut client, &retried).await;
    assert_eq!(content["status"], "ok");
    let metadata: Value = reply.metadata_as().expect("metadata");
    assert_eq!(metadata["engine_id"], survivor.id());
    controller.stop().await;
}

#[tokio::test]
async fn queued_tasks_can_be_aborted_time_out_or_fail_when_their_targets_are_gone() {
    let root = tempfile::tempdir().expect("tempdir");
    let controller = Controller::start(root.path(), "abort").await;
    let mut engine = Supported::start(&controller).await;
    let mut client = Client::connect(&controller.client_file()).await;
    // Fill the engine's pipeline (one task until its run times are known) so that the next
    // tasks stay queued.
    let running = [apply(&client, balanced(0), vec![]).await];
    let queued = apply(&client, balanced(0), vec![]).await;
    let timed = apply(
        &client,
        json!({"balanced": true, "retries": 0, "timeout": 0.2}),
        vec![],
    )
    .await;
    engine.next_apply().await;

    let abort = client
        .ask(
            "abort_request",
            json!({"msg_ids": [queued.msg_id(), running[0].msg_id()]}),
        )
        .await;
    assert_eq!(abort["aborted"], json!([queued.msg_id()]));
    assert_eq!(abort["forwarded"], json!([running[0].msg_id()]));
    let forwarded = engine.support.recv_type("abort_request").await;
    let content: Value = forwarded.content_as().expect("content");
    assert_eq!(content["msg_ids"], json!([running[0].msg_id()]));
    let (_, content) = reply_to(&mut client, &queued).await;
    assert_eq!(content["status"], "aborted");
    assert_eq!(content["ename"], "TaskAborted");

    let (_, content) = reply_to(&mut client, &timed).await;
    assert_eq!(content["ename"], "TaskTimeout");

    let pinned = apply(
        &client,
        json!({"balanced": true, "targets": [engine.id()], "retries": 0}),
        vec![],
    )
    .await;
    engine
        .engine
        .peer
        .send_new(
            "kernel_died",
            json!({"id": engine.id(), "exit": "exit status 1", "restarting": false}),
        )
        .await;
    let (_, content) = reply_to(&mut client, &pinned).await;
    assert_eq!(content["ename"], "EngineError");
    assert!(content["evalue"]
        .as_str()
        .expect("evalue")
        .starts_with("no engine this task may run on is alive"));
    controller.stop().await;
}

#[tokio::test]
async fn a_client_can_shut_the_controller_down() {
    let root = tempfile::tempdir().expect("tempdir");
    let controller = Controller::start(root.path(), "shutdown").await;
    let mut client = Client::connect(&controller.client_file()).await;
    let reply = client.ask("shutdown_request", json!({"hub": true})).await;
    assert_eq!(reply["status"], "ok");
    tokio::time::timeout(Duration::from_secs(5), controller.join())
        .await
        .expect("the controller stops");
}

#[tokio::test]
async fn a_task_queued_behind_a_long_one_moves_to_an_idle_engine() {
    let root = tempfile::tempdir().expect("tempdir");
    let controller = Controller::start(root.path(), "reclaim").await;
    let mut engines = vec![
        Supported::start(&controller).await,
        Supported::start(&controller).await,
    ];
    let mut client = Client::connect(&controller.client_file()).await;
    // Short first tasks let both engines hold several at once.
    for engine in &mut engines {
        let warm_up = apply(&client, balanced(0), vec![]).await;
        let got = engine.next_apply().await;
        engine.answer(&got, "", vec![]).await;
        reply_to(&mut client, &warm_up).await;
    }
    let tasks = [
        apply(&client, balanced(0), vec![Bytes::from_static(b"a")]).await,
        apply(&client, balanced(0), vec![Bytes::from_static(b"b")]).await,
        apply(&client, balanced(0), vec![Bytes::from_static(b"c")]).await,
    ];
    // Engine 0 gets a and c (c waits behind a, which runs long); engine 1 gets b.
    let mut on_zero = vec![engines[0].next_apply().await, engines[0].next_apply().await];
    let b = engines[1].next_apply().await;
    assert_eq!(b.msg_id(), tasks[1].msg_id());
    engines[1].answer(&b, "", vec![]).await;

    // Engine 1 is idle: the controller asks engine 0 for c back...
    let abort = engines[0].support.recv_type("abort_request").await;
    let content: Value = abort.content_as().expect("content");
    assert_eq!(content["msg_ids"], json!([tasks[2].msg_id()]));
    let c = on_zero.pop().expect("c");
    let mut aborted = engines[0]
        .support
        .session
        .message(
            "apply_reply",
            &json!({"status": "aborted", "ename": "TaskAborted", "evalue": "", "traceback": []}),
        )
        .with_metadata(&json!({"status": "aborted"}));
    aborted.set_parent(&c);
    engines[0].support.send(aborted).await;
    // ... and gives it, whole, to engine 1; the client never sees the abort.
    let moved = engines[1].next_apply().await;
    assert_eq!(moved.msg_id(), tasks[2].msg_id());
    assert_eq!(moved.buffers, vec![Bytes::from_static(b"c")]);
    engines[1].answer(&moved, "", vec![]).await;
    let (reply, content) = reply_to(&mut client, &tasks[2]).await;
    assert_eq!(content["status"], "ok");
    let metadata: Value = reply.metadata_as().expect("metadata");
    assert_eq!(metadata["engine_id"], engines[1].id());

    // A task that had started when asked back just finishes where it is.
    engines[0].answer(&on_zero[0], "", vec![]).await;
    let (_, content) = reply_to(&mut client, &tasks[0]).await;
    assert_eq!(content["status"], "ok");
    controller.stop().await;
}
