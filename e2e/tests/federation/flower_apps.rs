//! Flower's own apps end to end: a Flower app directory (the echo app, a numpy-only Python app)
//! built into its FAB as `flwr run` builds it, its ServerApp run by Flower's `flwr-serverapp`
//! on the SuperLink and its ClientApp by Flower's `flwr-clientapp` on each node, all from the
//! virtual environment `scripts/flower-venv` makes; the ServerApp's output is the run's log.

use crate::runs::follow_for;
use broker::config::{BrokerConfig, NodeAuth};
use cli::app_config::AppConfig;
use e2e::{Db, Federation, RunningNode, flower_program};
use std::path::{Path, PathBuf};
use wire::control::RunStatus;
use wire::{BundleHash, ConfigRecord, RunId};

/// Doubles the arrays it is sent (times the run config's `factor`); its ServerApp runs one
/// round of FedAvg from `[0, 1, 2, 3]` and prints the result.
pub(crate) fn echo_app() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../flower-runtime/tests/fixtures/echo-app")
}

pub(crate) fn with_flower_serverapp(config: &mut BrokerConfig) {
    config.flwr_serverapp = Some(flower_program("flwr-serverapp"));
}

/// Follows a run to its end. Python programs start for every instruction: under a full test
/// suite on two cores they take their time.
pub(crate) async fn follow(federation: &Federation, run_id: RunId) -> (Vec<String>, RunStatus) {
    follow_for(federation, run_id, std::time::Duration::from_secs(300)).await
}

/// Builds the app's FAB and offers it, as `flwr run` does: a session on which to start it, the
/// FAB's hash, and its run config with `overrides`.
pub(crate) async fn offer_flower_app(
    federation: &Federation,
    dir: &Path,
    overrides: &[String],
) -> (cli::control_client::ControlClient, BundleHash, ConfigRecord) {
    let config = AppConfig::load(dir).unwrap();
    let app = config.app.as_ref().unwrap();
    let run_config = cli::run_config::fuse(app, overrides).unwrap();
    let fab = cli::fab::build(dir).unwrap();
    let hash = app_bundle::hash_of(&fab.fab.archive);
    let mut client = federation.operator().await.unwrap();
    client
        .offer_bundle(hash, &fab.fab.archive, Vec::new())
        .await
        .unwrap();
    (client, hash, run_config)
}

/// Builds the app's FAB, offers it and starts a run with its config and `overrides`.
pub(crate) async fn start_flower_app(
    federation: &Federation,
    dir: &Path,
    overrides: &[String],
) -> RunId {
    let (mut client, hash, run_config) = offer_flower_app(federation, dir, overrides).await;
    let run_id = client.start_bundled_run(hash, run_config).await.unwrap();
    client.close().await;
    run_id
}

pub(crate) async fn flower_nodes(federation: &Federation, count: usize) -> Vec<RunningNode> {
    let mut nodes = Vec::new();
    for _ in 0..count {
        let mut settings = federation.node_settings(None);
        settings.flwr_clientapp = Some(flower_program("flwr-clientapp"));
        let mut node = RunningNode::start(settings);
        node.online().await;
        nodes.push(node);
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flower_app_runs_on_flowers_own_serverapp_and_clientapps() {
    let federation = Federation::start_tuned(
        NodeAuth::Automatic,
        false,
        Db::Memory,
        with_flower_serverapp,
    )
    .await;
    let _nodes = flower_nodes(&federation, 2).await;
    let run_id = start_flower_app(&federation, &echo_app(), &[]).await;
    let (lines, status) = follow(&federation, run_id).await;
    assert_eq!(status, RunStatus::Completed, "{lines:#?}");
    // Both nodes doubled [0, 1, 2, 3]; FedAvg averaged their replies.
    assert!(
        lines
            .iter()
            .any(|line| line.contains("final [0.0, 2.0, 4.0, 6.0]")),
        "the ServerApp's output is in the run's log: {lines:#?}"
    );
    // What the ServerApp saved (np.save("final.npy", ...)) is the run's artifact.
    let saved = federation
        .broker()
        .shared
        .store
        .artifact(run_id, "final.npy")
        .unwrap()
        .expect("final.npy kept");
    let values: Vec<f32> = saved[saved.len() - 16..]
        .chunks(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(values, [0.0, 2.0, 4.0, 6.0]);

    // The run config reaches the ClientApps: factor 3 triples.
    let run_id = start_flower_app(&federation, &echo_app(), &["factor=3.0".into()]).await;
    let (lines, status) = follow(&federation, run_id).await;
    assert_eq!(status, RunStatus::Completed, "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|line| line.contains("final [0.0, 3.0, 6.0, 9.0]")),
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clientapp_that_raises_puts_flowers_error_in_the_run_log() {
    let federation = Federation::start_tuned(
        NodeAuth::Automatic,
        false,
        Db::Memory,
        with_flower_serverapp,
    )
    .await;
    let _nodes = flower_nodes(&federation, 2).await;
    // A factor that is no number: float("many") raises in the Python ClientApp.
    let run_id = start_flower_app(&federation, &echo_app(), &["factor='many'".into()]).await;
    let (lines, _) = follow(&federation, run_id).await;
    assert!(
        lines
            .iter()
            .any(|line| line.contains("CLIENT_APP_RAISED_EXCEPTION")
                && line.contains("could not convert string to float")),
        "{lines:#?}"
    );
}

#[tokio::test]
async fn a_superlink_without_flwr_serverapp_refuses_a_flower_app_saying_what_to_install() {
    fn missing(config: &mut BrokerConfig) {
        config.flwr_serverapp = Some("/nonexistent/flwr-serverapp".into());
    }
    let federation = Federation::start_tuned(NodeAuth::Automatic, false, Db::Memory, missing).await;
    let (mut client, hash, run_config) = offer_flower_app(&federation, &echo_app(), &[]).await;
    let error = client
        .start_bundled_run(hash, run_config)
        .await
        .unwrap_err()
        .to_string();
    client.close().await;
    assert!(error.contains("pip install 'flwr==1.42.*'"), "{error}");
    // Refused before a run exists: nothing in `flwr ls`.
    match federation
        .request(wire::control::ControlRequest::ListRuns { run_id: None })
        .await
    {
        wire::control::ControlResponse::Runs(runs) => assert!(runs.is_empty(), "{runs:?}"),
        other => panic!("{other:?}"),
    }
}

/// The echo app's ClientApp in Rust: every array times the run config's `factor`.
struct NativeEcho;

impl flwr_sdk::app::ClientApp for NativeEcho {
    fn handle(
        &self,
        message: &wire::Message,
        context: &flwr_sdk::app::ClientContext,
    ) -> Result<wire::RecordDict, flwr_sdk::app::AppError> {
        use wire::records::{Array, ConfigValue, MetricValue, Record};
        let fail = |why: &str| flwr_sdk::app::AppError::new(why.to_string());
        let Some(ConfigValue::Float(factor)) = context.run_config.get("factor") else {
            return Err(fail("no float factor in the run config"));
        };
        let wire::MessageBody::Content(content) = &message.body else {
            return Err(fail("no content"));
        };
        let arrays = content.arrays("arrays").ok_or_else(|| fail("no arrays"))?;
        let mut scaled = wire::ArrayRecord::new();
        for (name, array) in arrays.iter() {
            let values: Vec<f32> = array
                .to_f32()
                .ok_or_else(|| fail("not f32"))?
                .iter()
                .map(|v| v * *factor as f32)
                .collect();
            let array =
                Array::from_f32(array.shape.clone(), &values).map_err(|e| fail(&e.to_string()))?;
            scaled.insert(name, array);
        }
        // The metrics the Python ClientApp returns: Flower aggregates only replies whose metrics
        // have the same keys.
        let node = i64::try_from(context.node_id.0 % 1000).unwrap_or(0);
        let metrics = wire::MetricRecord::new()
            .with("num-examples", MetricValue::Int(1))
            .with("node", MetricValue::Int(node));
        Ok(wire::RecordDict::new()
            .with("arrays", Record::Arrays(scaled))
            .with("metrics", Record::Metrics(metrics)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_mixes_a_flower_clientapp_node_and_a_native_one() {
    let federation = Federation::start_tuned(
        NodeAuth::Automatic,
        false,
        Db::Memory,
        with_flower_serverapp,
    )
    .await;
    let mut nodes = flower_nodes(&federation, 1).await;
    let mut settings = federation.node_settings(None);
    settings
        .native_clientapps
        .insert("flower-rs/echo-app".into(), "native-echo".into());
    let mut apps = model::apps::ClientApps::builtin();
    apps.add("native-echo", std::sync::Arc::new(NativeEcho));
    let mut native = RunningNode::start_with_apps(settings, apps);
    native.online().await;
    nodes.push(native);
    let run_id = start_flower_app(&federation, &echo_app(), &["factor=3.0".into()]).await;
    let (lines, status) = follow(&federation, run_id).await;
    assert_eq!(status, RunStatus::Completed, "{lines:#?}");
    // Python and Rust both tripled [0, 1, 2, 3]: the mean of equal replies is the same.
    assert!(
        lines
            .iter()
            .any(|line| line.contains("final [0.0, 3.0, 6.0, 9.0]")),
        "{lines:#?}"
    );
}

#[tokio::test]
async fn a_serverapp_that_never_takes_its_input_is_killed_and_its_run_fails() {
    fn hanging(config: &mut BrokerConfig) {
        use std::os::unix::fs::PermissionsExt as _;
        let program = config.apps_dir.join("hanging-serverapp");
        std::fs::create_dir_all(&config.apps_dir).unwrap();
        std::fs::write(&program, "#!/bin/sh\necho starting >&2\nexec sleep 600\n").unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        config.flwr_serverapp = Some(program);
        config.flower_app_patience = std::time::Duration::from_secs(2);
    }
    let federation = Federation::start_tuned(NodeAuth::Automatic, false, Db::Memory, hanging).await;
    let run_id = start_flower_app(&federation, &echo_app(), &[]).await;
    let (lines, status) = follow(&federation, run_id).await;
    assert_eq!(status, RunStatus::Failed, "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|line| line.contains("did not take its input") && line.contains("starting")),
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_flower_app_run_ends_its_serverapp() {
    use wire::control::{ControlRequest, ControlResponse};
    let federation = Federation::start_tuned(
        NodeAuth::Automatic,
        false,
        Db::Memory,
        with_flower_serverapp,
    )
    .await;
    // One node where the app waits for two: its ServerApp waits until stopped.
    let _nodes = flower_nodes(&federation, 1).await;
    let run_id = start_flower_app(&federation, &echo_app(), &[]).await;
    let mut client = federation.operator().await.unwrap();
    client
        .send_request(ControlRequest::Log {
            run_id,
            after: 0,
            follow: true,
        })
        .await
        .unwrap();
    let waiting = tokio::time::timeout(std::time::Duration::from_secs(300), async {
        loop {
            let ControlResponse::Log { lines, .. } = client.receive().await.unwrap() else {
                panic!("not a log page")
            };
            if lines.iter().any(|l| l.text.contains("Waiting for nodes")) {
                break;
            }
        }
    });
    waiting
        .await
        .expect("the ServerApp waits for a second node");
    let response = federation.request(ControlRequest::StopRun { run_id }).await;
    assert_eq!(response, ControlResponse::RunStopped { run_id });
    // The supervisor ends with its process: the task's token file goes with it.
    let homes = federation.path("superlink-apps/flwr-home");
    let token_files = || {
        std::fs::read_dir(&homes)
            .unwrap()
            .flatten()
            .filter_map(|home| std::fs::read_dir(home.path().join("tokens")).ok())
            .flat_map(|tokens| tokens.flatten())
            .count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while token_files() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the ServerApp's task outlived its run"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (_, status) = follow(&federation, run_id).await;
    assert_eq!(status, RunStatus::Stopped);
}
