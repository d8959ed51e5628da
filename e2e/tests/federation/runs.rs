//! Runs end to end: queues, delivery, the runner, log streaming, stop, failures.

use broker::config::NodeAuth;
use cli::app_config::AppConfig;
use e2e::{APP, Db, Federation, PATIENCE, RunningNode};
use std::time::{Duration, Instant};
use wire::control::{ControlRequest, ControlResponse, RunInfo, RunStatus};
use wire::{ArrayRecord, RunId};

pub async fn start_run(federation: &Federation, overrides: &str) -> RunId {
    let config = AppConfig::load(federation.dir.path()).unwrap();
    let app = config.app.as_ref().unwrap();
    let run_config = cli::run_config::fuse(app, &[overrides.to_string()]).unwrap();
    let request = ControlRequest::StartRun {
        app_name: app.name.clone(),
        app_version: app.version.clone(),
        config: run_config,
    };
    match federation.request(request).await {
        ControlResponse::RunStarted { run_id } => run_id,
        other => panic!("run not started: {other:?}"),
    }
}

/// Follows the run's log to its end; returns the lines and the final status.
pub async fn follow(federation: &Federation, run_id: RunId) -> (Vec<String>, RunStatus) {
    follow_for(federation, run_id, PATIENCE * 2).await
}

/// [`follow`], giving the run `patience` to end.
pub async fn follow_for(
    federation: &Federation,
    run_id: RunId,
    patience: Duration,
) -> (Vec<String>, RunStatus) {
    let mut client = federation.operator().await.unwrap();
    client
        .send_request(ControlRequest::Log {
            run_id,
            after: 0,
            follow: true,
        })
        .await
        .unwrap();
    let mut lines = Vec::new();
    let status = tokio::time::timeout(patience, async {
        loop {
            match client.receive().await.unwrap() {
                ControlResponse::Log {
                    lines: new,
                    finished,
                } => {
                    lines.extend(new.into_iter().map(|l| l.text));
                    if let Some(status) = finished {
                        return status;
                    }
                }
                other => panic!("{other:?}"),
            }
        }
    })
    .await
    .expect("run never finished");
    client.close().await;
    (lines, status)
}

pub async fn run_info(federation: &Federation, run_id: RunId) -> RunInfo {
    match federation
        .request(ControlRequest::ListRuns {
            run_id: Some(run_id),
        })
        .await
    {
        ControlResponse::Runs(mut runs) => runs.remove(0),
        other => panic!("{other:?}"),
    }
}

/// Waits until the broker holds no instruction of `run_id` (its round let go), or fails after
/// [`PATIENCE`].
async fn wait_for_no_instructions(federation: &Federation, run_id: RunId) {
    let deadline = Instant::now() + PATIENCE;
    while leftover_instructions(federation, run_id) > 0 {
        assert!(Instant::now() < deadline, "the run's round never let go");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many of a finished run's instructions the broker still holds.
fn leftover_instructions(federation: &Federation, run_id: RunId) -> usize {
    federation.broker().shared.rounds.in_flight_for_run(run_id)
}

pub fn final_vector(federation: &Federation, run_id: RunId) -> Vec<f32> {
    let bytes = federation
        .broker()
        .shared
        .store
        .artifact(run_id, "final.arrays")
        .unwrap()
        .expect("final arrays stored");
    let arrays: ArrayRecord = postcard::from_bytes(&bytes).unwrap();
    arrays.get("vector").unwrap().to_f32().unwrap()
}

async fn nodes_with_values(federation: &Federation, values: &[&str]) -> Vec<RunningNode> {
    let mut nodes = Vec::new();
    for value in values {
        let mut node = RunningNode::start(federation.node_settings_with(None, value));
        node.online().await;
        nodes.push(node);
    }
    nodes
}

#[tokio::test]
async fn three_rounds_with_three_nodes_complete_with_the_exact_arrays() {
    let federation = Federation::start(NodeAuth::Automatic, false, Db::Memory).await;
    let nodes = nodes_with_values(&federation, &["value=1", "value=2", "value=6"]).await;
    let run_id = start_run(&federation, "min-nodes=3").await;
    let (lines, status) = follow(&federation, run_id).await;
    assert_eq!(status, RunStatus::Completed, "{lines:#?}");
    // Each round adds the mean of the values, 3: after three rounds every element is 9, exactly.
    assert_eq!(final_vector(&federation, run_id), [9.0; 4]);
    let rounds: Vec<&String> = lines.iter().filter(|l| l.starts_with("[ROUND")).collect();
    assert_eq!(rounds, ["[ROUND 1/3]", "[ROUND 2/3]", "[ROUND 3/3]"]);
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("received 3 results and 0 failures"))
            .count(),
        3,
        "{lines:#?}"
    );
    let info = run_info(&federation, run_id).await;
    assert_eq!(
        (info.status, info.app_name.as_str()),
        (RunStatus::Completed, APP)
    );
    assert!(
        info.starting_at_ms.is_some()
            && info.running_at_ms.is_some()
            && info.finished_at_ms.is_some()
    );
    for node in nodes {
        node.stop().await.unwrap();
    }
}

#[tokio::test]
async fn a_stopped_run_ends_at_once_and_sends_nothing_more() {
    let federation = Federation::start(NodeAuth::Automatic, false, Db::Memory).await;
    let _nodes = nodes_with_values(&federation, &["value=1 delay-ms=10000"]).await;
    let run_id = start_run(&federation, "").await;
    let mut client = federation.operator().await.unwrap();
    client
        .send_request(ControlRequest::Log {
            run_id,
            after: 0,
            follow: true,
        })
        .await
        .unwrap();
    // Wait until round 1 is under way.
    loop {
        let ControlResponse::Log { lines, .. } = client.receive().await.unwrap() else {
            panic!()
        };
        if lines.iter().any(|l| l.text.starts_with("[ROUND 1")) {
            break;
        }
    }
    let started = Instant::now();
    let response = federation.request(ControlRequest::StopRun { run_id }).await;
    assert_eq!(response, ControlResponse::RunStopped { run_id });
    // The follower hears the end at once.
    let status = loop {
        let ControlResponse::Log { finished, .. } = client.receive().await.unwrap() else {
            panic!()
        };
        if let Some(status) = finished {
            break status;
        }
    };
    assert_eq!(status, RunStatus::Stopped);
    // Not after the node's 10 s of training: the stop does not wait for the round.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        run_info(&federation, run_id).await.status,
        RunStatus::Stopped
    );
    // The server app is gone: no round 2 ever starts, no instruction waits in any queue.
    wait_for_no_instructions(&federation, run_id).await;
    let log = federation.broker().shared.store.logs(run_id, 0).unwrap();
    assert!(
        !log.iter().any(|l| l.text.starts_with("[ROUND 2")),
        "{log:#?}"
    );
    assert_eq!(
        leftover_instructions(&federation, run_id),
        0,
        "a stopped run leaves no instruction behind once its app has let go"
    );
    let stopped_again = federation.request(ControlRequest::StopRun { run_id }).await;
    assert!(matches!(stopped_again, ControlResponse::Error(_)));
    client.close().await;
}

#[tokio::test]
async fn a_node_killed_mid_round_fails_over_and_the_run_goes_on_with_the_others() {
    let federation = Federation::start(NodeAuth::Automatic, false, Db::Memory).await;
    let mut nodes = nodes_with_values(&federation, &["value=3", "value=1 delay-ms=4000"]).await;
    let slow = nodes.pop().unwrap();
    let run_id = start_run(&federation, "num-server-rounds=1 min-nodes=2").await;
    // Kill the slow node once its instruction is out.
    let store = federation.broker().shared.store.clone();
    let deadline = Instant::now() + PATIENCE;
    while !store
        .logs(run_id, 0)
        .unwrap()
        .iter()
        .any(|l| l.text.starts_with("configure_train"))
    {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    slow.task.abort();
    let (lines, status) = follow(&federation, run_id).await;
    assert_eq!(status, RunStatus::Completed, "{lines:#?}");
    // The round let go of the killed node when it left, not at its deadline (an hour away).
    assert!(
        lines.iter().any(|l| l.contains("went offline")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("received 1 results and 1 failures")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("NodeUnavailable")),
        "{lines:#?}"
    );
    assert_eq!(final_vector(&federation, run_id), [3.0; 4]);
}

#[tokio::test]
async fn too_few_nodes_fail_the_run_with_a_reason_instead_of_hanging() {
    let federation = Federation::start(NodeAuth::Automatic, false, Db::Memory).await;
    let _nodes = nodes_with_values(&federation, &["value=1"]).await;
    let run_id = start_run(&federation, "min-nodes=2 node-wait-timeout=0.5").await;
    let (lines, status) = follow(&federation, run_id).await;
    assert_eq!(status, RunStatus::Failed);
    let info = run_info(&federation, run_id).await;
    assert!(
        info.details.contains("only 1 of the 2 required nodes"),
        "{}",
        info.details
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("ERROR: round 1: only 1 of the 2")),
        "{lines:#?}"
    );
}

#[tokio::test]
async fn an_app_the_node_lacks_is_reported_in_the_run_log() {
    let federation = Federation::start(NodeAuth::Automatic, false, Db::Memory).await;
    let settings = federation.node_settings(None);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (state_tx, mut state) = tokio::sync::watch::channel(node::daemon::NodeState::Connecting);
    // A node with no apps at all.
    tokio::spawn(node::daemon::run(
        settings,
        model::apps::ClientApps::default(),
        shutdown.clone(),
        state_tx,
    ));
    state
        .wait_for(|s| matches!(s, node::daemon::NodeState::Online(_)))
        .await
        .unwrap();
    let run_id = start_run(&federation, "num-server-rounds=1").await;
    let (lines, status) = follow(&federation, run_id).await;
    assert_eq!(status, RunStatus::Failed);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("UnknownApp") && l.contains("has no app named")),
        "{lines:#?}"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn an_app_the_broker_lacks_is_refused_before_any_run_exists() {
    let federation = Federation::start(NodeAuth::Automatic, false, Db::Memory).await;
    let request = ControlRequest::StartRun {
        app_name: "no-such-app".into(),
        app_version: "1.0".into(),
        config: wire::ConfigRecord::new(),
    };
    assert_eq!(
        federation.request(request).await,
        ControlResponse::Error(wire::control::ControlError::UnknownApp(
            "no-such-app".into()
        ))
    );
    assert_eq!(
        federation
            .request(ControlRequest::ListRuns { run_id: None })
            .await,
        ControlResponse::Runs(Vec::new())
    );
}

#[tokio::test]
async fn poisoned_updates_are_rejected_and_the_rounds_go_on() {
    let federation = Federation::start(NodeAuth::Automatic, false, Db::Memory).await;
    // Non-finite values; a finite weight that is infinite in f32; finite values whose weighted
    // sum would overflow.
    let poisoned = [
        "value=1",
        "value=nan",
        "value=-inf",
        "value=2 num-examples=1e39",
        "value=3e38 num-examples=3",
    ];
    let _nodes = nodes_with_values(&federation, &poisoned).await;
    let run_id = start_run(&federation, "min-nodes=5").await;
    let (lines, status) = follow(&federation, run_id).await;
    assert_eq!(status, RunStatus::Completed, "{lines:#?}");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("received 1 results and 4 failures"))
            .count(),
        3,
        "{lines:#?}"
    );
    assert_eq!(
        final_vector(&federation, run_id),
        [3.0; 4],
        "only value=1 counted"
    );
}

#[tokio::test]
async fn a_stale_reply_from_an_earlier_round_is_not_aggregated() {
    let federation = Federation::start(NodeAuth::Automatic, false, Db::Memory).await;
    // The slow node answers round 1 while round 2 is under way, long after round 1 gave up on it.
    let _nodes = nodes_with_values(&federation, &["value=1", "value=100 delay-ms=700"]).await;
    let run_id = start_run(&federation, "num-server-rounds=2 round-timeout=0.4").await;
    let (lines, status) = follow(&federation, run_id).await;
    assert_eq!(status, RunStatus::Completed, "{lines:#?}");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("received 1 results and 1 failures"))
            .count(),
        2,
        "{lines:#?}"
    );
    // Wait for round 1's late reply: it answers a round that is over, so it is refused and never
    // counted. (Round 2's instruction the node abandons when it hears the run ended.)
    let metrics = &federation.broker().shared.metrics;
    let deadline = Instant::now() + PATIENCE;
    while metrics.replies("duplicate") + metrics.replies("rejected") < 1 {
        assert!(Instant::now() < deadline, "the late replies never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        metrics.replies("rejected") >= 1,
        "round 1's late reply came after its round closed"
    );
    assert_eq!(
        final_vector(&federation, run_id),
        [2.0; 4],
        "only value=1 counted"
    );
}

/// Waits until the run's stored log has a line starting with `prefix` `count` times.
async fn wait_for_log(federation: &Federation, run_id: RunId, prefix: &str, count: usize) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let lines = federation.broker().shared.store.logs(run_id, 0).unwrap();
        if lines.iter().filter(|l| l.text.starts_with(prefix)).count() >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never logged {prefix:?}: {lines:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_broker_restarted_mid_run_resumes_from_its_last_completed_round() {
    let mut federation = Federation::start(NodeAuth::Automatic, false, Db::File).await;
    let _nodes = nodes_with_values(&federation, &["value=2 delay-ms=600"]).await;
    let run_id = start_run(&federation, "").await;
    // Round 1 aggregated, round 2 under way.
    wait_for_log(&federation, run_id, "[ROUND 2/3]", 1).await;
    let before = federation.broker().shared.store.logs(run_id, 0).unwrap();
    let (fleet, control) = (
        federation.broker().fleet_addr,
        federation.broker().control_addr,
    );
    federation.stop_broker().await;
    federation.start_broker(fleet, control);
    let (lines, status) = follow(&federation, run_id).await;
    assert_eq!(status, RunStatus::Completed, "{lines:#?}");
    assert_eq!(
        &lines[..before.len()],
        before.iter().map(|l| l.text.clone()).collect::<Vec<_>>(),
        "no log line lost or changed"
    );
    let count = |prefix: &str| lines.iter().filter(|l| l.starts_with(prefix)).count();
    assert_eq!(
        count("[ROUND 1/3]"),
        1,
        "round 1 is not run again: {lines:#?}"
    );
    assert_eq!(count("[ROUND 2/3]"), 2, "round 2 is run again: {lines:#?}");
    assert_eq!(count("Resuming after round 1 of 3"), 1, "{lines:#?}");
    // Three rounds of +2 each, exactly as an uninterrupted run: nothing counted twice or lost.
    assert_eq!(final_vector(&federation, run_id), [6.0; 4]);
    assert_eq!(
        federation.broker().shared.store.checkpoint(run_id).unwrap(),
        None,
        "a finished run keeps no checkpoint"
    );
    assert_eq!(
        leftover_instructions(&federation, run_id),
        0,
        "nor any instruction in flight"
    );
}

/// One round of vector-add over a vector of `length` f32 values: the whole array goes to the node
/// in chunks, comes back in chunks, and is aggregated.
async fn round_trip_of(length: usize) {
    let federation = Federation::start(NodeAuth::Automatic, false, Db::Memory).await;
    let _nodes = nodes_with_values(&federation, &["value=1"]).await;
    let overrides = format!("num-server-rounds=1 vector-length={length} round-timeout=600.0");
    let run_id = start_run(&federation, &overrides).await;
    let (lines, status) = follow(&federation, run_id).await;
    assert_eq!(status, RunStatus::Completed, "{lines:#?}");
    let vector = final_vector(&federation, run_id);
    assert_eq!(vector.len(), length);
    assert!(vector.iter().all(|&v| v == 1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_array_record_goes_to_a_node_and_back() {
    round_trip_of(16 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "1 GiB each way: run with `cargo test --release -- --ignored` on a machine with 8 GiB free"]
async fn a_1_gib_array_record_goes_to_a_node_and_back() {
    round_trip_of(256 << 20).await;
}

/// `flwr run . local --run-config ... --stream` inside a directory with a Flower `pyproject.toml`
/// and no `flwr.toml`: the app, its config and the federation all come from pyproject.toml.
#[tokio::test]
async fn a_flower_app_directory_runs_from_its_pyproject_toml() {
    let federation = Federation::start(NodeAuth::Automatic, false, Db::Memory).await;
    let _nodes = nodes_with_values(&federation, &["value=2"]).await;
    let control = federation.broker().control_addr;
    std::fs::remove_file(federation.path("flwr.toml")).unwrap();
    std::fs::write(
        federation.path("pyproject.toml"),
        format!(
            "[project]\nname = \"vector-add\"\nversion = \"1.0.0\"\n\n[tool.flwr.app]\npublisher = \"me\"\n\n\
             [tool.flwr.app.config]\nnum-server-rounds = 3\nvector-length = 4\nmin-nodes = 1\n\
             round-timeout = 10.0\nnode-wait-timeout = 10.0\n\n[tool.flwr.federations]\ndefault = \"local\"\n\n\
             [tool.flwr.federations.local]\naddress = \"{control}\"\nroot-certificates = \"./certificates/ca.crt\"\n"
        ),
    )
    .unwrap();
    let target = cli::args::Target {
        app: federation.path("."),
        federation: Some("local".into()),
        format: cli::output::Format::Default,
    };
    cli::commands::runs::start(&target, &["num-server-rounds=1".into()], true)
        .await
        .unwrap();
    let runs = match federation
        .request(ControlRequest::ListRuns { run_id: None })
        .await
    {
        ControlResponse::Runs(runs) => runs,
        other => panic!("{other:?}"),
    };
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, RunStatus::Completed);
    assert_eq!(
        runs[0].config.get("num-server-rounds"),
        Some(&wire::ConfigValue::Int(1))
    );

    // The same directory with Python components is a Flower app, sent as its FAB: one Flower's
    // `flwr build` could not build (the directory's name is no app name) is refused before any
    // run exists.
    let text = std::fs::read_to_string(federation.path("pyproject.toml")).unwrap();
    std::fs::write(
        federation.path("pyproject.toml"),
        text.replace(
            "publisher = \"me\"\n",
            "publisher = \"me\"\n\n[tool.flwr.app.components]\nserverapp = \"pkg.server_app:app\"\n",
        ),
    )
    .unwrap();
    let error = cli::commands::runs::start(&target, &[], false)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("Flower App directory name") && error.contains("is invalid"),
        "{error}"
    );
    match federation
        .request(ControlRequest::ListRuns { run_id: None })
        .await
    {
        ControlResponse::Runs(runs) => assert_eq!(runs.len(), 1),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn every_node_hears_that_a_run_ended_so_none_keeps_anything_of_it() {
    let federation = Federation::start(NodeAuth::Automatic, false, Db::Memory).await;
    let _worker = nodes_with_values(&federation, &["value=1"]).await;
    // A second node that never answers, reading what the SuperLink tells it.
    let key = certs::IdentityKey::generate();
    let tls = certs::tls::client_config(
        &crate::refusals::roots(&federation),
        Some(&key),
        wire::alpn::FLEET,
    )
    .unwrap();
    let connection = crate::refusals::connect(federation.broker().fleet_addr, tls)
        .await
        .unwrap();
    let (mut send, mut recv, _) = crate::refusals::authenticate(&connection, &key).await;
    let heartbeats = tokio::spawn(async move {
        for seq in 0.. {
            let beat = wire::fleet::NodeFrame::Heartbeat { seq };
            if wire::io::write_value(&mut send, &beat).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let run_id = start_run(
        &federation,
        "num-server-rounds=1 min-nodes=1 round-timeout=0.5",
    )
    .await;
    let (lines, status) = follow(&federation, run_id).await;
    assert_eq!(status, RunStatus::Completed, "{lines:#?}");
    let told = tokio::time::timeout(PATIENCE, async {
        loop {
            match wire::io::read_value::<wire::fleet::BrokerFrame, _>(&mut recv, 1 << 16).await {
                Ok(wire::fleet::BrokerFrame::RunStopped { run_id: ended }) if ended == run_id => {
                    return true;
                }
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await;
    assert_eq!(told, Ok(true), "the node was told the run ended");
    heartbeats.abort();
}
