//! Flower 1.42's own `flower-supernode` (from PyPI, in `target/flower-venv`), unchanged, against
//! flower-superlink's HTTP Fleet API: registered keys over TLS, runs of Flower's SuperNodes alone
//! and beside this project's, and an unregistered key cut off.

use crate::flower_apps::{echo_app, flower_nodes, follow, start_flower_app, with_flower_serverapp};
use broker::config::{BrokerConfig, NodeAuth};
use broker::flower_http::FlowerHttp;
use e2e::{Db, Federation, PATIENCE, flower_program};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use wire::NodeId;
use wire::control::{NodeStatus, RunStatus};

fn with_flower_https(config: &mut BrokerConfig) {
    with_flower_serverapp(config);
    config.flower_http = Some(FlowerHttp {
        address: SocketAddr::from(([127, 0, 0, 1], 0)),
        required: true,
        tls: true,
    });
}

/// A free loopback port (for a SuperNode's own runtime API).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `flower-supernode` process, its group killed when dropped.
pub(crate) struct FlowerSuperNode {
    child: tokio::process::Child,
    log: PathBuf,
}

impl FlowerSuperNode {
    /// Starts Flower's SuperNode against the federation's SuperLink over TLS, trusting its CA,
    /// signing with `keys/<key>`.
    pub(crate) fn start(federation: &Federation, key: &str) -> Self {
        let address = federation.broker().flower_http_addr.expect("served");
        let log = federation.path(&format!("flower-supernode-{key}.log"));
        let output = std::fs::File::create(&log).unwrap();
        let bin = flower_program("flower-supernode");
        let path = format!(
            "{}:{}",
            bin.parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let child = tokio::process::Command::new(&bin)
            .arg("--superlink")
            .arg(address.to_string())
            .arg("--root-certificates")
            .arg(federation.path("certificates/ca.crt"))
            .arg("--auth-supernode-private-key")
            .arg(federation.path(&format!("keys/{key}")))
            .arg("--port")
            .arg(free_port().to_string())
            .current_dir(federation.path(""))
            .env("PATH", path)
            .env("FLWR_HOME", federation.path(&format!("flwr-home-{key}")))
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("flower-supernode started");
        FlowerSuperNode { child, log }
    }

    /// What it printed so far.
    pub(crate) fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until it exited on its own, within `patience`; whether it did.
    async fn exits_within(&mut self, patience: Duration) -> bool {
        tokio::time::timeout(patience, self.child.wait())
            .await
            .is_ok()
    }
}

impl Drop for FlowerSuperNode {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            let group = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Registers `keys/<key>.pub` and waits until Flower's SuperNode with that key is online.
async fn registered_flower_supernode(
    federation: &Federation,
    key: &str,
) -> (NodeId, FlowerSuperNode) {
    let node_id = federation.register(key).await;
    let supernode = FlowerSuperNode::start(federation, key);
    let deadline = tokio::time::Instant::now() + PATIENCE * 4;
    while federation.status_of(node_id).await != Some(NodeStatus::Online) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "Flower's SuperNode never came online:\n{}",
            supernode.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (node_id, supernode)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flowers_own_supernodes_join_with_registered_keys_over_tls_and_complete_a_run() {
    let federation =
        Federation::start_tuned(NodeAuth::Registered, false, Db::Memory, with_flower_https).await;
    let (first, one) = registered_flower_supernode(&federation, "client_credentials_1").await;
    let (_, two) = registered_flower_supernode(&federation, "client_credentials_2").await;

    let run_id = start_flower_app(&federation, &echo_app(), &["factor=3.0".into()]).await;
    let (lines, status) = follow(&federation, run_id).await;
    assert_eq!(
        status,
        RunStatus::Completed,
        "{lines:#?}\n{}\n{}",
        one.output(),
        two.output()
    );
    assert!(
        lines
            .iter()
            .any(|line| line.contains("final [0.0, 3.0, 6.0, 9.0]")),
        "{lines:#?}"
    );

    // Unregistering a key cuts its SuperNode off: refused at its next call, it stops.
    let mut one = one;
    federation
        .request(wire::control::ControlRequest::UnregisterNode { node_id: first })
        .await;
    assert!(
        one.exits_within(Duration::from_secs(90)).await,
        "an unregistered SuperNode kept going:\n{}",
        one.output()
    );
    assert_eq!(
        federation.status_of(first).await,
        Some(NodeStatus::Unregistered)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_mixes_flowers_own_supernodes_and_a_flower_rs_supernode() {
    let federation =
        Federation::start_tuned(NodeAuth::Automatic, false, Db::Memory, with_flower_https).await;
    let (_, one) = registered_flower_supernode(&federation, "client_credentials_1").await;
    let (_, two) = registered_flower_supernode(&federation, "client_credentials_2").await;
    let _ours = flower_nodes(&federation, 1).await;

    let run_id = start_flower_app(&federation, &echo_app(), &[]).await;
    let (lines, status) = follow(&federation, run_id).await;
    assert_eq!(
        status,
        RunStatus::Completed,
        "{lines:#?}\n{}\n{}",
        one.output(),
        two.output()
    );
    // Three nodes answered, two of them Flower's, and all doubled [0, 1, 2, 3].
    assert!(
        lines.iter().any(|line| line.contains("Received 3 results")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|line| line.contains("final [0.0, 2.0, 4.0, 6.0]")),
        "{lines:#?}"
    );
}
