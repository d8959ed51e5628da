//! The broker in a process of its own, killed with SIGKILL mid-round and restarted on the same
//! database: nothing acknowledged is lost and the run resumes from its last completed round.
//!
//! The broker process is this test binary again, running the ignored test [`broker_process`]
//! with the federation's directory in its environment.

use crate::runs::{follow, start_run};
use broker::config::NodeAuth;
use broker::store::Store;
use e2e::{Db, Federation, PATIENCE, RunningNode, broker_config, node_settings};
use node::settings::ServerTrust;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use wire::control::{ControlRequest, ControlResponse, NodeStatus, RunStatus};
use wire::{ArrayRecord, RunId};

/// The federation directory the broker process serves.
const DIR_VAR: &str = "FLWR_TEST_BROKER_DIR";
/// The Fleet and Control addresses it binds.
const FLEET_VAR: &str = "FLWR_TEST_BROKER_FLEET";
const CONTROL_VAR: &str = "FLWR_TEST_BROKER_CONTROL";
/// Its heartbeat interval in milliseconds (the timeout is three times that); the harness's fast
/// heartbeats when unset.
const HEARTBEAT_VAR: &str = "FLWR_TEST_BROKER_HEARTBEAT_MS";
/// Set: it also serves Flower's HTTP port (plain HTTP, on any free loopback port).
const FLOWER_HTTP_VAR: &str = "FLWR_TEST_BROKER_FLOWER_HTTP";
/// Where it announces the addresses it bound: "fleet control [flower-http]".
const ANNOUNCE_FILE: &str = "broker.addresses";

#[test]
#[ignore = "the broker half of the crash tests: does nothing unless they start it"]
fn broker_process() {
    let Some(dir) = std::env::var_os(DIR_VAR).map(PathBuf::from) else {
        return;
    };
    let address = |var: &str| -> SocketAddr { std::env::var(var).unwrap().parse().unwrap() };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut config = broker_config(&dir, NodeAuth::Automatic, false);
        if let Ok(ms) = std::env::var(HEARTBEAT_VAR) {
            config.heartbeat_interval = Duration::from_millis(ms.parse().unwrap());
            config.heartbeat_timeout = config.heartbeat_interval * 3;
        }
        if std::env::var_os(FLOWER_HTTP_VAR).is_some() {
            config.flower_http = Some(broker::flower_http::FlowerHttp {
                address: SocketAddr::from(([127, 0, 0, 1], 0)),
                required: true,
                tls: false,
            });
        }
        let store = Store::open(&dir.join("state.redb")).unwrap();
        let broker = broker::server::start(
            config,
            store,
            address(FLEET_VAR),
            address(CONTROL_VAR),
            CancellationToken::new(),
        )
        .unwrap();
        let staged = dir.join(format!("{ANNOUNCE_FILE}.part"));
        let flower_http = broker
            .flower_http_addr
            .map(|address| format!(" {address}"))
            .unwrap_or_default();
        std::fs::write(
            &staged,
            format!("{} {}{flower_http}", broker.fleet_addr, broker.control_addr),
        )
        .unwrap();
        std::fs::rename(staged, dir.join(ANNOUNCE_FILE)).unwrap();
        std::future::pending::<()>().await;
    });
}

/// A broker process; killed (SIGKILL) when dropped.
pub struct BrokerProcess {
    pub child: Child,
    pub fleet: SocketAddr,
    pub control: SocketAddr,
    /// Flower's HTTP port, when asked for.
    pub flower_http: Option<SocketAddr>,
}

impl BrokerProcess {
    /// Starts a broker on `dir`'s database and waits until it has bound its ports.
    pub fn spawn(dir: &Path, fleet: SocketAddr, control: SocketAddr) -> Self {
        Self::spawn_with(dir, fleet, control, None, false)
    }

    /// [`BrokerProcess::spawn`] with a heartbeat interval of its own.
    pub fn spawn_with(
        dir: &Path,
        fleet: SocketAddr,
        control: SocketAddr,
        heartbeat: Option<Duration>,
        flower_http: bool,
    ) -> Self {
        let announce = dir.join(ANNOUNCE_FILE);
        let _ = std::fs::remove_file(&announce);
        let mut command = Command::new(std::env::current_exe().unwrap());
        if let Some(heartbeat) = heartbeat {
            command.env(HEARTBEAT_VAR, heartbeat.as_millis().to_string());
        }
        if flower_http {
            command.env(FLOWER_HTTP_VAR, "1");
        }
        let child = command
            .args(["--exact", "crash::broker_process", "--ignored", "--quiet"])
            .env(DIR_VAR, dir)
            .env(FLEET_VAR, fleet.to_string())
            .env(CONTROL_VAR, control.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + PATIENCE;
        let text = loop {
            if let Ok(text) = std::fs::read_to_string(&announce) {
                break text;
            }
            assert!(Instant::now() < deadline, "the broker process never bound");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut addresses = text.split(' ').map(|a| a.parse::<SocketAddr>().unwrap());
        BrokerProcess {
            child,
            fleet: addresses.next().unwrap(),
            control: addresses.next().unwrap(),
            flower_http: addresses.next(),
        }
    }

    /// SIGKILL: no shutdown code runs, nothing is flushed.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn log_lines(federation: &Federation, run_id: RunId) -> Vec<String> {
    match federation
        .request(ControlRequest::Log {
            run_id,
            after: 0,
            follow: false,
        })
        .await
    {
        ControlResponse::Log { lines, .. } => lines.into_iter().map(|l| l.text).collect(),
        other => panic!("{other:?}"),
    }
}

async fn final_vector(federation: &Federation, run_id: RunId) -> Vec<f32> {
    let artifacts = match federation
        .request(ControlRequest::PullArtifacts { run_id })
        .await
    {
        ControlResponse::Artifacts(artifacts) => artifacts,
        other => panic!("{other:?}"),
    };
    let stored = artifacts
        .iter()
        .find(|a| a.name == "final.arrays")
        .expect("final arrays stored");
    let arrays: ArrayRecord = postcard::from_bytes(&stored.bytes).unwrap();
    arrays.get("vector").unwrap().to_f32().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_mid_round_resumes_the_run_on_restart_and_loses_nothing() {
    let federation = Federation::prepare(NodeAuth::Automatic, false, Db::File);
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut broker = BrokerProcess::spawn(federation.dir.path(), any, any);
    federation.write_flwr_toml(broker.control, None);
    let roots = certs::load::load_certificates(&federation.certs.ca_cert).unwrap();
    let mut nodes = Vec::new();
    for value in ["value=1 delay-ms=800", "value=3 delay-ms=800"] {
        let mut settings = node_settings(broker.fleet, ServerTrust::Roots(roots.clone()), None);
        settings.node_config = flwr_sdk::config::parse_overrides(value).unwrap();
        let mut node = RunningNode::start(settings);
        node.online().await;
        nodes.push(node);
    }
    let registry_before = federation.nodes(true).await;
    let run_id = start_run(&federation, "min-nodes=2").await;

    // Kill the broker while the nodes work on round 2.
    let deadline = Instant::now() + PATIENCE;
    while !log_lines(&federation, run_id)
        .await
        .iter()
        .any(|l| l == "[ROUND 2/3]")
    {
        assert!(Instant::now() < deadline, "round 2 never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = log_lines(&federation, run_id).await;
    broker.kill();

    let broker = BrokerProcess::spawn(federation.dir.path(), broker.fleet, broker.control);
    let (lines, status) = follow(&federation, run_id).await;
    assert_eq!(status, RunStatus::Completed, "{lines:#?}");
    assert_eq!(
        lines[..before.len()],
        before[..],
        "no log line lost or changed"
    );
    let count = |text: &str| lines.iter().filter(|l| l.starts_with(text)).count();
    assert_eq!(count("[ROUND 1/3]"), 1, "{lines:#?}");
    assert_eq!(count("[ROUND 2/3]"), 2, "{lines:#?}");
    assert_eq!(
        count("The SuperLink restarted while this run was active"),
        1
    );
    assert_eq!(count("Resuming after round 1 of 3"), 1, "{lines:#?}");
    // mean(1, 3) per round, three rounds: what an uninterrupted run gives, exactly. The replies
    // to the interrupted round's instructions, sent again after reconnecting, were not counted.
    assert_eq!(final_vector(&federation, run_id).await, [6.0; 4]);

    let mut registry_after = federation.nodes(true).await;
    let ids = |nodes: &[wire::control::NodeInfo]| {
        let mut ids: Vec<_> = nodes.iter().map(|n| n.node_id).collect();
        ids.sort();
        ids
    };
    assert_eq!(
        ids(&registry_after),
        ids(&registry_before),
        "same nodes, no duplicates"
    );
    registry_after.retain(|n| n.status != NodeStatus::Online);
    assert!(
        registry_after.is_empty(),
        "all back online: {registry_after:?}"
    );
    for node in nodes {
        node.stop().await.unwrap();
    }
    drop(broker);
}
