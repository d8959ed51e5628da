//! Client apps in processes of their own: a real broker and real nodes in this process, and the
//! node's `flwr-clientapp` (built in this package as `e2e-clientapp`) started for every
//! instruction, or by hand for a node under `--isolation process`.

use crate::runs::final_vector;
use broker::config::NodeAuth;
use e2e::{Db, Federation, PATIENCE, RunningNode};
use node::isolation::Isolation;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use wire::control::RunStatus;
use wire::{ConfigRecord, ConfigValue, RunId};

/// The client app program, and the name its processes have.
const CLIENTAPP: &str = env!("CARGO_BIN_EXE_e2e-clientapp");
const CLIENTAPP_NAME: &str = "e2e-clientapp";

/// Tests that start client app processes take turns: some count this process's children.
static CHILDREN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn clientapp() -> Isolation {
    Isolation::Subprocess {
        program: PathBuf::from(CLIENTAPP),
        args: vec!["--backend".into(), "cpu".into()],
    }
}

async fn federation() -> Federation {
    Federation::start(NodeAuth::Automatic, false, Db::Memory).await
}

/// A node with `--node-config` `node_config` whose client apps run under `isolation`, online.
async fn node(federation: &Federation, node_config: &str, isolation: Isolation) -> RunningNode {
    let mut settings = federation.node_settings_with(None, node_config);
    settings.isolation = isolation;
    let mut node = RunningNode::start(settings);
    node.online().await;
    node
}

fn is_online(node: &RunningNode) -> bool {
    matches!(*node.state.borrow(), node::daemon::NodeState::Online(_))
}

/// Starts a vector-add run with `config`.
fn start_vector_add(federation: &Federation, config: ConfigRecord) -> RunId {
    broker::runs::runner::start(
        &federation.broker().shared,
        "test",
        model::apps::vector_add::NAME.into(),
        "1.0.0".into(),
        config,
        None,
    )
    .unwrap()
    .run_id
}

/// Waits up to five seconds for every client app process of this test process to be gone.
async fn wait_until_no_client_app_runs(why: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while children_named(CLIENTAPP_NAME) > 0 {
        assert!(
            Instant::now() < deadline,
            "a client app process outlived {why}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs vector-add with `config` to its end; returns the status and the log.
async fn run_vector_add(
    federation: &Federation,
    config: ConfigRecord,
) -> (RunId, RunStatus, Vec<String>) {
    let shared = &federation.broker().shared;
    let run_id = start_vector_add(federation, config);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let run = shared.store.run(run_id).unwrap().unwrap();
        if run.status.is_finished() {
            let lines = shared.store.logs(run_id, 0).unwrap();
            return (
                run_id,
                run.status,
                lines.into_iter().map(|l| l.text).collect(),
            );
        }
        assert!(Instant::now() < deadline, "run never finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_app_that_aborts_runs_out_of_memory_or_panics_costs_one_reply_not_the_node() {
    let _turn = CHILDREN.lock().await;
    let federation = federation().await;
    let mut nodes = Vec::new();
    for node_config in [
        "value=1",
        "value=1 fault=\"abort\" fault-round=1",
        "value=1 fault=\"out-of-memory\" fault-round=1",
        "value=1 fault=\"panic\" fault-round=1",
    ] {
        nodes.push(node(&federation, node_config, clientapp()).await);
    }
    let config = ConfigRecord::new()
        .with("num-server-rounds", ConfigValue::Int(2))
        .with("min-nodes", ConfigValue::Int(4));
    let (run_id, status, lines) = run_vector_add(&federation, config).await;
    assert_eq!(status, RunStatus::Completed, "{lines:#?}");
    let has = |text: &str| lines.iter().any(|l| l.contains(text));
    assert!(has("received 1 results and 3 failures"), "{lines:#?}");
    assert!(
        has("received 4 results and 0 failures"),
        "round 2 whole again: {lines:#?}"
    );
    let failures: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("failure from"))
        .collect();
    let aborted = failures
        .iter()
        .filter(|l| l.contains("signal 6 (SIGABRT)"))
        .count();
    assert_eq!(aborted, 2, "abort and out-of-memory: {failures:#?}");
    assert!(
        failures.iter().any(|l| l.contains("memory allocation of")),
        "the allocator's last words: {failures:#?}"
    );
    assert!(
        failures.iter().any(|l| l.contains("simulated panic")),
        "{failures:#?}"
    );
    // Round 1 kept value 1 from the healthy node, round 2 the mean of four 1s.
    assert_eq!(final_vector(&federation, run_id), [2.0; 4]);
    for node in &nodes {
        assert!(is_online(node), "a node went down with its app");
    }
    for node in nodes {
        node.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_run_kills_the_client_app_process() {
    let _turn = CHILDREN.lock().await;
    let federation = federation().await;
    let node = node(&federation, "value=1 delay-ms=30000", clientapp()).await;
    let shared = &federation.broker().shared;
    let run_id = start_vector_add(&federation, ConfigRecord::new());
    let deadline = Instant::now() + PATIENCE;
    while !shared
        .store
        .logs(run_id, 0)
        .unwrap()
        .iter()
        .any(|l| l.text.starts_with("configure_train"))
    {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Once the child runs, stop the run: the node kills the child within its poll period.
    let deadline = Instant::now() + PATIENCE;
    while children_named(CLIENTAPP_NAME) == 0 {
        assert!(Instant::now() < deadline, "the client app never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(children_named(CLIENTAPP_NAME), 1);
    broker::runs::runner::stop(shared, run_id, "test").unwrap();
    wait_until_no_client_app_runs("its run").await;
    assert!(is_online(&node));
}

/// Live (not zombie) child processes of this test process with the executable name `name`.
fn children_named(name: &str) -> usize {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
        .filter(|stat| {
            // pid (comm) state ppid ...
            let Some((comm, rest)) = stat.split_once(") ") else {
                return false;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            comm.ends_with(&format!("({name}"))
                && fields.first() != Some(&"Z")
                && fields.get(1) == Some(&me.as_str())
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_app_still_working_after_the_round_timeout_is_killed() {
    let _turn = CHILDREN.lock().await;
    let federation = federation().await;
    let node = node(&federation, "value=1 delay-ms=60000", clientapp()).await;
    let config = ConfigRecord::new()
        .with("num-server-rounds", ConfigValue::Int(1))
        .with("round-timeout", ConfigValue::Float(1.0));
    let started = Instant::now();
    let (_, status, lines) = run_vector_add(&federation, config).await;
    assert_eq!(status, RunStatus::Failed, "{lines:#?}");
    wait_until_no_client_app_runs("its instruction").await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(is_online(&node));
}

#[tokio::test]
async fn a_clientappio_address_in_use_stops_the_node_with_a_hint() {
    let federation = federation().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut settings = federation.node_settings(None);
    settings.isolation = clientapp();
    settings.clientappio_address = taken.local_addr().unwrap();
    let node = RunningNode::start(settings);
    let error = tokio::time::timeout(PATIENCE, node.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("give each its own --clientappio-api-address"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_process_isolation_a_client_app_the_operator_started_answers_every_round() {
    let _turn = CHILDREN.lock().await;
    let federation = federation().await;
    let address = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut settings = federation.node_settings_with(None, "value=3");
    settings.isolation = Isolation::Process;
    settings.clientappio_address = address;
    let mut node = RunningNode::start(settings);
    node.online().await;
    // Started by hand, without a token, as an operator would.
    let mut process = tokio::process::Command::new(CLIENTAPP)
        .args(["--clientappio-api-address", &address.to_string()])
        .args(["--backend", "cpu"])
        .env_remove(wire::clientappio::TOKEN_ENV)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let config = ConfigRecord::new()
        .with("num-server-rounds", ConfigValue::Int(2))
        .with("min-nodes", ConfigValue::Int(1));
    let (run_id, status, lines) = run_vector_add(&federation, config).await;
    assert_eq!(status, RunStatus::Completed, "{lines:#?}");
    // Two rounds of adding 3 to a zero vector.
    assert_eq!(final_vector(&federation, run_id), [6.0; 4]);
    assert!(
        process.try_wait().unwrap().is_none(),
        "the process stays for the next instruction"
    );
    process.kill().await.unwrap();
    node.stop().await.unwrap();
}
