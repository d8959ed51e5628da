//! Flower's own `flwr-clientapp` 1.42, run against our runtime API with the FAB of
//! `fixtures/echo-app` (built by Flower's `flwr build --app fixtures/echo-app`): it installs the
//! app, takes the instruction, runs the Python ClientApp and pushes a reply with the arrays
//! doubled. The program is `$FLWR_CLIENTAPP`, or the one in `target/flower-venv`, which
//! `scripts/flower-venv` makes (`scripts/install-test-deps` and `./test` run it).

#![allow(clippy::unwrap_used)]

use flower_runtime::clientapp::ClientAppTask;
use flower_runtime::objects::{Body, deflate, object_id};
use flower_runtime::proto;
use flower_runtime::records::scalar_of;
use flower_runtime::server::serve;
use flower_runtime::tasks::{TaskInput, Tasks};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use wire::records::{Array, ConfigRecord, ConfigValue, Record, RecordDict};

const FAB: &[u8] = include_bytes!("../fixtures/echo-app.fab");
const RUN: u64 = 8_000_000_000_000_000_001;
const NODE: u64 = 4_242;

/// `$FLWR_CLIENTAPP`, else the virtual environment's.
fn clientapp() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("FLWR_CLIENTAPP") {
        return path.into();
    }
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/flower-venv/bin/flwr-clientapp");
    assert!(
        venv.is_file(),
        "no flwr-clientapp at {}: run scripts/flower-venv, or set FLWR_CLIENTAPP",
        venv.display()
    );
    venv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flowers_own_clientapp_answers_an_instruction_through_our_runtime_api() {
    let clientapp = clientapp();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let metadata = proto::Metadata {
        run_id: RUN,
        src_node_id: 1,
        dst_node_id: NODE,
        group_id: "1".into(),
        ttl: 600.0,
        message_type: "train".into(),
        created_at: now,
        ..proto::Metadata::default()
    };
    let arrays = [(
        "0".to_string(),
        Array::from_f32(vec![3], &[1.0, 2.0, 3.5]).unwrap(),
    )];
    let content = RecordDict::new()
        .with("arrays", Record::Arrays(arrays.into_iter().collect()))
        .with(
            "config",
            Record::Config(ConfigRecord::new().with("server-round", ConfigValue::Int(1))),
        );
    let fab_hash = object_id(FAB);
    let run_config = [(
        "factor".to_string(),
        scalar_of(&ConfigValue::Float(2.0)).unwrap(),
    )];
    let input = TaskInput {
        task_id: 77,
        context: proto::Context {
            run_id: RUN,
            node_id: NODE,
            run_config: run_config.into_iter().collect(),
            state: Some(proto::RecordDict::default()),
            ..proto::Context::default()
        },
        run: proto::Run {
            run_id: RUN,
            fab_id: "flower-rs/echo-app".into(),
            fab_version: "1.0.0".into(),
            fab_hash: fab_hash.clone(),
            ..proto::Run::default()
        },
        fab: proto::Fab {
            hash_str: fab_hash,
            content: FAB.to_vec(),
            ..proto::Fab::default()
        },
    };
    let deflated = deflate(&metadata, &Body::Content(content)).unwrap();
    let task = ClientAppTask::new(input, metadata, deflated, 1 << 20);
    let tasks = Arc::new(Tasks::default());
    let token = tasks.admit(task.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(serve(listener, tasks, shutdown.clone()));
    let home = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(&clientapp)
        .args([
            "--runtime-api-address",
            &address.to_string(),
            "--token",
            &token,
            "--insecure",
        ])
        .env("FLWR_HOME", home.path())
        .env("FLWR_TELEMETRY_ENABLED", "0")
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", clientapp.display()));
    let outcome = tokio::time::timeout(Duration::from_secs(120), task.finished())
        .await
        .expect("flwr-clientapp finished within two minutes");
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    assert_eq!(
        outcome.sub_status.as_deref(),
        Some("completed"),
        "{}",
        outcome.details
    );
    let reply = outcome.reply.unwrap().inflate(u64::MAX).unwrap();
    assert_eq!(reply.metadata.run_id, RUN);
    assert_eq!(reply.metadata.src_node_id, NODE);
    let Body::Content(content) = reply.body else {
        panic!("an error reply: {:?}", reply.body);
    };
    let doubled = content.arrays("arrays").unwrap();
    let values = doubled.iter().next().unwrap().1.to_f32().unwrap();
    assert_eq!(values, [2.0, 4.0, 7.0]);
    assert!(
        matches!(status, Ok(Ok(exit)) if exit.success()),
        "{status:?}"
    );
}
