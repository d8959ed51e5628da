//! The node's Flower ClientApps, with Flower's own `flwr-clientapp` 1.42 (`$FLWR_CLIENTAPP`, or
//! the one in `target/flower-venv`, which `scripts/flower-venv` makes): an instruction of a FAB
//! run is answered by the FAB's Python ClientApp; a ClientApp that raises, a missing program and
//! a program that hangs past the instruction's time to live each give an error reply that says
//! so, and the node goes on.

#![allow(clippy::unwrap_used)]

use app_bundle::{Bundle, Fab, hash_of};
use node::flower::warm::WarmLimits;
use node::flower::{FlowerClientApps, FlowerJob};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use wire::message::{ErrorCode, MessageType, Metadata, now_ms};
use wire::records::{Array, ConfigRecord, ConfigValue, Record, RecordDict};
use wire::{Message, MessageBody, MessageId, NodeId, RunId};

const FAB: &[u8] = include_bytes!("../../../flower-runtime/tests/fixtures/echo-app.fab");
const NODE: u64 = 9_000_000_000_000_000_007;

fn flowers_clientapp() -> PathBuf {
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

fn fab() -> Fab {
    Bundle::open(FAB, hash_of(FAB)).unwrap().fab.unwrap()
}

const RUN: u64 = 12_345;

fn instruction_of(run: u64, ttl: Duration) -> Message {
    let arrays = [(
        "0".to_string(),
        Array::from_f32(vec![2], &[1.5, -4.0]).unwrap(),
    )];
    let content = RecordDict::new()
        .with("arrays", Record::Arrays(arrays.into_iter().collect()))
        .with(
            "config",
            Record::Config(ConfigRecord::new().with("server-round", ConfigValue::Int(1))),
        );
    Message {
        metadata: Metadata {
            run_id: RunId(run),
            message_id: MessageId::random(),
            src_node_id: NodeId(1),
            dst_node_id: NodeId(NODE),
            reply_to: None,
            group_id: "1".into(),
            ttl_ms: ttl.as_millis() as u64,
            message_type: MessageType::TRAIN,
            created_at_ms: now_ms(),
        },
        body: MessageBody::Content(content),
    }
}

async fn apps(program: PathBuf, home: &std::path::Path) -> Arc<FlowerClientApps> {
    apps_warm(program, home, WarmLimits::default()).await
}

async fn apps_warm(
    program: PathBuf,
    home: &std::path::Path,
    warm: WarmLimits,
) -> Arc<FlowerClientApps> {
    apps_within(program, home, warm, None).await
}

async fn apps_within(
    program: PathBuf,
    home: &std::path::Path,
    warm: WarmLimits,
    memory_limit: Option<u64>,
) -> Arc<FlowerClientApps> {
    FlowerClientApps::start(
        "127.0.0.1:0".parse().unwrap(),
        Some(program),
        home.to_path_buf(),
        warm,
        memory_limit,
        CancellationToken::new(),
    )
    .await
    .unwrap()
}

async fn answer(apps: &FlowerClientApps, run_config: &ConfigRecord, ttl: Duration) -> MessageBody {
    answer_in(apps, RUN, run_config, ttl).await
}

async fn answer_in(
    apps: &FlowerClientApps,
    run: u64,
    run_config: &ConfigRecord,
    ttl: Duration,
) -> MessageBody {
    let fab = fab();
    let job = FlowerJob {
        node_id: NodeId(NODE),
        node_config: &ConfigRecord::new(),
        run_config,
        fab: &fab,
        hash: hash_of(FAB),
    };
    apps.answer(
        &job,
        &instruction_of(run, ttl),
        Arc::new(AtomicBool::new(false)),
    )
    .await
}

/// The doubled values of a reply of the echo app with `factor` 3.
fn scaled(body: MessageBody) -> Vec<f32> {
    let MessageBody::Content(content) = body else {
        panic!("an error reply: {body:?}");
    };
    let arrays = content.arrays("arrays").unwrap();
    arrays.iter().next().unwrap().1.to_f32().unwrap()
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_instructions_share_one_warm_process_and_runs_do_not() {
    let home = tempfile::tempdir().unwrap();
    let apps = apps(flowers_clientapp(), home.path()).await;
    let factor = ConfigRecord::new().with("factor", ConfigValue::Float(3.0));
    let ttl = Duration::from_secs(120);
    assert_eq!(scaled(answer(&apps, &factor, ttl).await), [4.5, -12.0]);
    let first = apps.warm_process_id(RUN).expect("the run's process waits");
    assert_eq!(scaled(answer(&apps, &factor, ttl).await), [4.5, -12.0]);
    assert_eq!(apps.warm_process_id(RUN), Some(first), "the same process");
    // Another run gets a process (and FLWR_HOME) of its own.
    assert_eq!(
        scaled(answer_in(&apps, RUN + 1, &factor, ttl).await),
        [4.5, -12.0]
    );
    let other = apps.warm_process_id(RUN + 1).unwrap();
    assert_ne!(other, first);
    // A stopped run's process ends.
    apps.end_run(RUN);
    assert_eq!(apps.warm_process_id(RUN), None);
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(first) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!alive(first), "the stopped run's process is gone");
    assert!(alive(other));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_process_that_dies_between_instructions_costs_nothing_and_idle_ones_end() {
    let home = tempfile::tempdir().unwrap();
    let limits = WarmLimits {
        runs: 4,
        idle: Duration::from_secs(3),
        per_run: 1,
    };
    let apps = apps_warm(flowers_clientapp(), home.path(), limits).await;
    let factor = ConfigRecord::new().with("factor", ConfigValue::Float(3.0));
    let ttl = Duration::from_secs(120);
    assert_eq!(scaled(answer(&apps, &factor, ttl).await), [4.5, -12.0]);
    let killed = apps.warm_process_id(RUN).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(killed as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // The next instruction finds it gone and is served by a fresh one.
    assert_eq!(scaled(answer(&apps, &factor, ttl).await), [4.5, -12.0]);
    let fresh = apps.warm_process_id(RUN).unwrap();
    assert_ne!(fresh, killed);
    // Idle past the limit, it is ended, and its FLWR_HOME with it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while (alive(fresh) || apps.warm_process_id(RUN).is_some()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!alive(fresh), "the idle process is gone");
    assert_eq!(std::fs::read_dir(home.path()).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_warm_runs_every_instruction_gets_a_fresh_process() {
    let home = tempfile::tempdir().unwrap();
    let limits = WarmLimits {
        runs: 0,
        ..WarmLimits::default()
    };
    let apps = apps_warm(flowers_clientapp(), home.path(), limits).await;
    let factor = ConfigRecord::new().with("factor", ConfigValue::Float(3.0));
    assert_eq!(
        scaled(answer(&apps, &factor, Duration::from_secs(120)).await),
        [4.5, -12.0]
    );
    assert_eq!(apps.warm_process_id(RUN), None);
    assert_eq!(std::fs::read_dir(home.path()).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flowers_clientapp_answers_and_a_raising_app_reports_flowers_error() {
    let home = tempfile::tempdir().unwrap();
    let apps = apps(flowers_clientapp(), home.path()).await;
    let factor = ConfigRecord::new().with("factor", ConfigValue::Float(3.0));
    let body = answer(&apps, &factor, Duration::from_secs(120)).await;
    let MessageBody::Content(content) = body else {
        panic!("an error reply: {body:?}");
    };
    let arrays = content.arrays("arrays").unwrap();
    let values = arrays.iter().next().unwrap().1.to_f32().unwrap();
    assert_eq!(values, [4.5, -12.0]);
    // Without `factor` in the run config the Python app raises a KeyError.
    let body = answer(&apps, &ConfigRecord::new(), Duration::from_secs(120)).await;
    let MessageBody::Error(error) = body else {
        panic!("content from an app that raised: {body:?}");
    };
    // Flower's own code and reason, as Flower's ClientApp gave them.
    assert_eq!(error.code, ErrorCode::ClientAppRaisedException);
    assert!(error.reason.contains("factor"), "{}", error.reason);
    // A process whose task failed is not used again: the next instruction gets a fresh one.
    assert_eq!(apps.warm_process_id(RUN), None);
}

#[tokio::test]
async fn a_missing_flwr_clientapp_gets_an_error_reply_saying_what_to_install() {
    let home = tempfile::tempdir().unwrap();
    let apps = apps("/nonexistent/flwr-clientapp".into(), home.path()).await;
    let body = answer(&apps, &ConfigRecord::new(), Duration::from_secs(60)).await;
    let MessageBody::Error(error) = body else {
        panic!("content without a program: {body:?}");
    };
    assert!(
        error.reason.contains("pip install 'flwr==1.42.*'"),
        "{}",
        error.reason
    );
}

#[tokio::test]
async fn a_process_that_never_connects_is_killed_at_the_time_to_live() {
    let home = tempfile::tempdir().unwrap();
    let program = home.path().join("hangs");
    std::fs::write(&program, "#!/bin/sh\nsleep 600\n").unwrap();
    let mut permissions = std::fs::metadata(&program).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&program, permissions).unwrap();
    let apps = apps(program, home.path()).await;
    let started = Instant::now();
    let body = answer(&apps, &ConfigRecord::new(), Duration::from_secs(2)).await;
    let MessageBody::Error(error) = body else {
        panic!("content from a process that hung: {body:?}");
    };
    assert!(error.reason.contains("time to live"), "{}", error.reason);
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test]
async fn a_clientapp_that_leaks_memory_is_killed_at_the_limit_with_an_error_reply_saying_so() {
    use std::os::unix::fs::PermissionsExt as _;
    let home = tempfile::tempdir().unwrap();
    // Stands in for a ClientApp that leaks: it holds more and more memory and never replies.
    let program = home.path().join("leaks");
    std::fs::write(
        &program,
        "#!/usr/bin/env python3\nimport time\nheld = []\nwhile True:\n    \
         held.append(b'x' * (16 << 20))\n    time.sleep(0.05)\n",
    )
    .unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let apps = apps_within(program, home.path(), WarmLimits::default(), Some(128 << 20)).await;
    let started = Instant::now();
    let body = answer(&apps, &ConfigRecord::new(), Duration::from_secs(120)).await;
    let MessageBody::Error(error) = body else {
        panic!("content from a process that leaked: {body:?}");
    };
    assert!(
        error.reason.contains("--max-clientapp-memory"),
        "{}",
        error.reason
    );
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[tokio::test]
async fn a_clientapp_that_rewrites_its_install_changes_nothing_for_the_next_execution() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("seen");
    // Stands in for a compromised ClientApp: it looks for what an earlier execution left in its
    // install, then rewrites its own module there, as Flower would find it next time.
    let program = dir.path().join("rewrites-its-install");
    std::fs::write(
        &program,
        format!(
            "#!/bin/sh\n\
             app=\"$FLWR_HOME/apps/flwrlabs.echo.1.0.0.abcdef01\"\n\
             if [ -e \"$app/client_app.py\" ]; then echo reused >> {seen}; else echo fresh >> {seen}; fi\n\
             mkdir -p \"$app\" && echo 'import os  # planted' > \"$app/client_app.py\"\n\
             exit 1\n",
            seen = seen.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = dir.path().join("flwr-home");
    let apps = apps(program, &home).await;
    for _ in 0..2 {
        let body = answer(&apps, &ConfigRecord::new(), Duration::from_secs(30)).await;
        assert!(matches!(body, MessageBody::Error(_)), "{body:?}");
    }
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), "fresh\nfresh\n");
    // Nothing of either execution is left.
    assert_eq!(std::fs::read_dir(&home).unwrap().count(), 0);
}
