//! Scaling a running cluster with the real `parallax` binary: start 2 engines, scale to 3, then
//! to 1, then stop; every engine process and kernel is gone at the end.

mod common;

use std::time::Duration;

use common::{alive, eventually, World};
use parallax_launcher::ClusterState;
use parallax_wire::cluster::{EngineInfo, EngineState};
use parallax_wire::profile::read_json;

fn live(engines: &[EngineInfo]) -> Vec<&EngineInfo> {
    engines
        .iter()
        .filter(|e| e.state != EngineState::Dead)
        .collect()
}

#[tokio::test]
async fn start_2_scale_to_3_then_1_then_stop_leaves_no_process() {
    let world = World::new();
    let out = world.start("s", 2, &[]);
    assert!(out.contains("ready: 2 engines"), "{out}");
    let profile = world.profile("s");
    let client = world.client("s").await;
    let mut pids: Vec<u32> = Vec::new();

    let state = parallax_launcher::scale(&profile, 3)
        .await
        .expect("scale to 3");
    assert_eq!(state.n, 3);
    assert_eq!(state.engine_pids.len(), 3);
    let engines = client.engines().await.expect("engines");
    assert_eq!(live(&engines).len(), 3, "{engines:?}");
    assert!(profile.log_dir().join("engine-2.log").exists());
    // The new engine runs code like the others.
    let new = live(&engines)
        .into_iter()
        .max_by_key(|e| e.id)
        .expect("an engine")
        .clone();
    let (_, reply) = client
        .execute(new.id, "1 + 1")
        .await
        .expect("submit")
        .finish()
        .await;
    let reply: serde_json::Value = reply.expect("reply").content_as().expect("json");
    assert_eq!(reply["status"], "ok", "{reply}");
    pids.extend(engines.iter().flat_map(|e| [e.pid, e.kernel_pid]));

    let state = parallax_launcher::scale(&profile, 1)
        .await
        .expect("scale to 1");
    assert_eq!(state.n, 1);
    assert_eq!(state.engine_pids.len(), 1);
    let engines = client.engines().await.expect("engines");
    assert_eq!(live(&engines).len(), 1, "{engines:?}");
    let on_disk: ClusterState = read_json(&profile.cluster_file()).expect("cluster.json");
    assert_eq!(on_disk.engine_pids, state.engine_pids);
    // The stopped engines' processes and kernels are gone.
    let kept = live(&engines)[0].pid;
    for engine in &engines {
        if engine.pid != kept {
            let (pid, kernel) = (engine.pid, engine.kernel_pid);
            assert!(
                eventually(Duration::from_secs(10), || !alive(pid) && !alive(kernel)).await,
                "engine process {pid} or its kernel {kernel} still running"
            );
        }
    }

    let list = world.run(&["cluster", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).expect("list json");
    assert_eq!(list[0]["engines"], 1, "{list}");

    pids.extend(on_disk.pids());
    let out = world.run(&["cluster", "stop", "--profile", "s"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        eventually(Duration::from_secs(10), || pids.iter().all(|p| !alive(*p))).await,
        "processes left: {:?}",
        pids.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
    );
    assert!(!parallax_launcher::scale::request_file(&profile).exists());
}

#[tokio::test]
async fn scaling_a_stopped_cluster_says_so() {
    let world = World::new();
    let profile = world.profile("none");
    profile.create().expect("create");
    let error = parallax_launcher::scale(&profile, 2)
        .await
        .expect_err("not running");
    assert!(
        error.to_string().contains("no cluster is running"),
        "{error}"
    );
}
