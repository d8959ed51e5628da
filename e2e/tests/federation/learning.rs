//! The seed's training for real: Fashion-MNIST (Debian's `dataset-fashion-mnist`, installed by
//! `.ci/run`), two partitions, two nodes, two rounds of FedAvg on the CPU backend.

use broker::config::NodeAuth;
use e2e::{Db, Federation, PATIENCE, RunningNode};
use model::data::format::{TEST_FILE, TRAIN_FILE};
use model::data::{partition, sources};
use std::sync::Arc;
use wire::control::{ControlRequest, ControlResponse, RunStatus};

/// Samples used: 10,000 of the 60,000 keep the test to seconds on two cores while leaving 4,000
/// training images (125 steps of 32) per node and round.
const SAMPLES: usize = 10_000;

fn prepare(federation: &Federation) -> Vec<String> {
    let data = sources::fashion_mnist(std::path::Path::new(sources::FASHION_MNIST_DIR)).expect(
        "Fashion-MNIST must be installed (apt-get install dataset-fashion-mnist; .ci/run does)",
    );
    let mut subset = partition::iid(data.len(), 1, 42).remove(0);
    subset.truncate(SAMPLES);
    let data = data.select(&subset);
    let mut paths = Vec::new();
    for (i, shard) in partition::iid(data.len(), 2, 42).into_iter().enumerate() {
        let dir = federation.path(&format!("datasets/fashion-mnist_part_{}", i + 1));
        let (train, test) = partition::train_test(&shard, i as u64);
        data.select(&train).write(&dir.join(TRAIN_FILE)).unwrap();
        data.select(&test).write(&dir.join(TEST_FILE)).unwrap();
        paths.push(dir.display().to_string());
    }
    paths
}

fn cnn_node(federation: &Federation, dataset: &str) -> RunningNode {
    let settings = federation.node_settings_with(None, &format!("dataset-path=\"{dataset}\""));
    let device = model::cnn::backend::select(model::cnn::backend::BackendChoice::Cpu).unwrap();
    let mut apps = model::apps::ClientApps::builtin();
    apps.add(
        model::apps::fedavg_cnn::NAME,
        Arc::new(model::cnn::client::Client::new(device)),
    );
    RunningNode::start_with_apps(settings, apps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fedavg_on_fashion_mnist_learns_well_above_chance_in_two_rounds() {
    let federation = Federation::start(NodeAuth::Automatic, false, Db::Memory).await;
    let datasets = prepare(&federation);
    let mut nodes = Vec::new();
    for dataset in &datasets {
        let mut node = cnn_node(&federation, dataset);
        node.online().await;
        nodes.push(node);
    }
    let mut config = flwr_sdk::config::parse_overrides(
        // The seed's learning rate 0.1 diverges with this CNN (in PyTorch too); 0.01 learns.
        "num-server-rounds=2 fraction-evaluate=1.0 learning-rate=0.01 min-nodes=2",
    )
    .unwrap();
    config.insert("batch-size", wire::ConfigValue::Int(32));
    let request = ControlRequest::StartRun {
        app_name: model::apps::fedavg_cnn::NAME.into(),
        app_version: "1.0.0".into(),
        config,
    };
    let ControlResponse::RunStarted { run_id } = federation.request(request).await else {
        panic!()
    };
    let store = federation.broker().shared.store.clone();
    let deadline = tokio::time::Instant::now() + PATIENCE * 20;
    let info = loop {
        let info = store.run(run_id).unwrap().unwrap();
        if info.status.is_finished() {
            break info;
        }
        assert!(tokio::time::Instant::now() < deadline, "run did not finish");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let log: Vec<String> = store
        .logs(run_id, 0)
        .unwrap()
        .into_iter()
        .map(|l| l.text)
        .collect();
    assert_eq!(
        info.status,
        RunStatus::Completed,
        "{}\n{}",
        info.details,
        log.join("\n")
    );
    let metrics: serde_json::Value =
        serde_json::from_slice(&store.artifact(run_id, "metrics.json").unwrap().unwrap()).unwrap();
    let accuracy: Vec<f64> = metrics["rounds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["eval_acc"].as_f64().unwrap())
        .collect();
    assert_eq!(accuracy.len(), 2, "{metrics}");
    eprintln!("accuracy per round: {accuracy:?}");
    // Chance is 0.10. Round 1 must reach three times chance; round 2 must improve on round 1 and reach 0.5,
    // five times chance (this configuration measured 0.72-0.75 here, 0.63-0.66 after round 1).
    assert!(
        accuracy[0] > 0.3,
        "round 1 accuracy {}: {}",
        accuracy[0],
        log.join("\n")
    );
    assert!(accuracy[1] > accuracy[0], "accuracy fell: {accuracy:?}");
    assert!(
        accuracy[1] > 0.5,
        "round 2 accuracy {}: {}",
        accuracy[1],
        log.join("\n")
    );
    let model = store
        .artifact(run_id, "model.safetensors")
        .unwrap()
        .unwrap();
    let arrays = flwr_sdk::safetensors::decode(&model).unwrap();
    assert_eq!(arrays.get("conv1.weight").unwrap().shape, [6, 1, 5, 5]);
    assert_eq!(arrays.get("fc1.weight").unwrap().shape, [120, 256]);
    let chart = store.artifact(run_id, "metrics.png").unwrap().unwrap();
    assert!(
        chart.starts_with(b"\x89PNG\r\n\x1a\n"),
        "the chart is a PNG"
    );
    for node in nodes {
        node.stop().await.unwrap();
    }
}
