//! The federation harness of the end-to-end tests and the benches: a federation in a temporary
//! directory (certificates, keys, `flwr.toml`, a broker on `127.0.0.1:0`) and node daemons started
//! and stopped at will, all real (QUIC, TLS, redb) and in this process.
//!
//! The tests live in `tests/federation/`; the transport and broker benches build their probe
//! federation from [`node_settings`] and [`RunningNode`].

// A harness: a failed set-up step is a failed test, reported where it happened.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use broker::config::{BrokerConfig, NodeAuth, OperatorAuth};
use broker::server::RunningBroker;
use broker::store::Store;
use certs::generate::{CertificatePaths, generate_certificates, generate_federation_keys};
use cli::app_config::AppConfig;
use cli::control_client::ControlClient;
use node::daemon::{NodeError, NodeState};
use node::settings::{NodeSettings, ServerTrust};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wire::NodeId;
use wire::control::{ControlRequest, ControlResponse, NodeInfo, NodeStatus};

/// The app every test federation runs.
pub const APP: &str = model::apps::vector_add::NAME;

/// Upper bound for anything a test waits for; the expected case is milliseconds.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// Where the database lives.
pub enum Db {
    /// In memory: gone with the broker.
    Memory,
    /// A redb file in the federation's directory: survives a broker restart.
    File,
}

/// A broker (when started) with its certificates, keys and `flwr.toml` in a temporary directory.
pub struct Federation {
    /// The directory: `certificates/`, `keys/` (three node keys and an operator key), `flwr.toml`.
    pub dir: tempfile::TempDir,
    /// Where the certificates are.
    pub certs: CertificatePaths,
    /// The broker, while it runs.
    pub broker: Option<RunningBroker>,
    /// How the broker admits nodes.
    pub node_auth: NodeAuth,
    /// Whether operators need the operator key (else loopback is trusted).
    pub operator_keys: bool,
    /// Where the broker keeps its state.
    pub db: Db,
    /// Applied to the broker's configuration at every start.
    pub tune: fn(&mut BrokerConfig),
}

/// The broker configuration of a test federation in `dir`: fast heartbeats, metrics on.
pub fn broker_config(dir: &Path, node_auth: NodeAuth, operator_keys: bool) -> BrokerConfig {
    let certs = CertificatePaths::in_dir(&dir.join("certificates"));
    let chain = certs::load::load_certificates(&certs.server_cert).unwrap();
    let key = certs::load::load_tls_private_key(&certs.server_key).unwrap();
    let operator_auth = if operator_keys {
        OperatorAuth::Keys(
            certs::load::load_public_key_list(&dir.join("keys/operator.pub")).unwrap(),
        )
    } else {
        OperatorAuth::LoopbackOnly
    };
    let mut config = BrokerConfig::new(chain, key, node_auth, operator_auth);
    config.heartbeat_interval = Duration::from_millis(200);
    config.heartbeat_timeout = Duration::from_millis(1000);
    config.metrics_address = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.apps_dir = dir.join("superlink-apps");
    config
}

impl Federation {
    /// Certificates, keys and a running broker.
    pub async fn start(node_auth: NodeAuth, operator_keys: bool, db: Db) -> Self {
        Self::start_tuned(node_auth, operator_keys, db, |_| {}).await
    }

    /// A federation whose broker configuration `tune` adjusts.
    pub async fn start_tuned(
        node_auth: NodeAuth,
        operator_keys: bool,
        db: Db,
        tune: fn(&mut BrokerConfig),
    ) -> Self {
        let mut federation = Self::prepare(node_auth, operator_keys, db);
        federation.tune = tune;
        federation.start_broker(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            SocketAddr::from(([127, 0, 0, 1], 0)),
        );
        federation
    }

    /// Certificates and keys in a fresh directory; no broker yet.
    pub fn prepare(node_auth: NodeAuth, operator_keys: bool, db: Db) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certs = generate_certificates(&dir.path().join("certificates"), &[], false).unwrap();
        generate_federation_keys(
            &dir.path().join("keys"),
            "client_credentials",
            3,
            Some("alice"),
            false,
        )
        .unwrap();
        Federation {
            dir,
            certs,
            broker: None,
            node_auth,
            operator_keys,
            db,
            tune: |_| {},
        }
    }

    /// A path inside the federation's directory.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Starts the broker on these addresses and points `flwr.toml` at it.
    pub fn start_broker(&mut self, fleet: SocketAddr, control: SocketAddr) {
        let mut config = broker_config(self.dir.path(), self.node_auth, self.operator_keys);
        (self.tune)(&mut config);
        let store = match self.db {
            Db::Memory => Store::in_memory().unwrap(),
            Db::File => Store::open(&self.path("state.redb")).unwrap(),
        };
        let broker =
            broker::server::start(config, store, fleet, control, CancellationToken::new()).unwrap();
        self.write_flwr_toml(
            broker.control_addr,
            self.operator_keys.then_some("keys/operator"),
        );
        self.broker = Some(broker);
    }

    /// Stops the broker and waits until it stopped.
    pub async fn stop_broker(&mut self) {
        let broker = self.broker.take().expect("broker running");
        broker.shutdown();
        broker.join().await;
    }

    /// The running broker.
    pub fn broker(&self) -> &RunningBroker {
        self.broker.as_ref().expect("broker running")
    }

    /// Writes `flwr.toml`: the test app and one federation at `control`.
    pub fn write_flwr_toml(&self, control: SocketAddr, operator_key: Option<&str>) {
        let operator_line = operator_key
            .map(|k| format!("operator-key = \"{k}\"\n"))
            .unwrap_or_default();
        let text = format!(
            "[app]\nname = \"{APP}\"\nversion = \"1.0.0\"\n\n[app.config]\nnum-server-rounds = 3\nvector-length = 4\n\
             min-nodes = 1\nround-timeout = 10.0\nnode-wait-timeout = 10.0\n\n[federations]\ndefault = \"local\"\n\n\
             [federations.local]\naddress = \"{control}\"\nroot-certificates = \"certificates/ca.crt\"\n{operator_line}"
        );
        std::fs::write(self.path("flwr.toml"), text).unwrap();
    }

    /// A Control API session, as `flwr` opens it from `flwr.toml`.
    pub async fn operator(&self) -> Result<ControlClient, cli::CliError> {
        let config = AppConfig::load(self.dir.path()).unwrap();
        let (_, federation) = config.federation(None).unwrap();
        ControlClient::connect(&federation).await
    }

    /// One raw request on a fresh session.
    pub async fn request(&self, request: ControlRequest) -> ControlResponse {
        let mut client = self.operator().await.unwrap();
        let response = client.request(request).await.unwrap();
        client.close().await;
        response
    }

    /// Registers the key `keys/<key>.pub`.
    pub async fn register(&self, key: &str) -> NodeId {
        let public_key = std::fs::read_to_string(self.path(&format!("keys/{key}.pub"))).unwrap();
        match self
            .request(ControlRequest::RegisterNode { public_key })
            .await
        {
            ControlResponse::NodeRegistered { node_id } => node_id,
            other => panic!("registration failed: {other:?}"),
        }
    }

    /// The registry's nodes.
    pub async fn nodes(&self, include_unregistered: bool) -> Vec<NodeInfo> {
        match self
            .request(ControlRequest::ListNodes {
                include_unregistered,
            })
            .await
        {
            ControlResponse::Nodes(nodes) => nodes,
            other => panic!("list failed: {other:?}"),
        }
    }

    /// One node's status, if it is registered.
    pub async fn status_of(&self, node_id: NodeId) -> Option<NodeStatus> {
        self.nodes(true)
            .await
            .into_iter()
            .find(|n| n.node_id == node_id)
            .map(|n| n.status)
    }

    /// Polls the registry until `node_id` has `status`, or fails after [`PATIENCE`].
    pub async fn wait_for_status(&self, node_id: NodeId, status: NodeStatus) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if self.status_of(node_id).await == Some(status) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {node_id} never became {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Settings of a node with `--node-config` `config`.
    pub fn node_settings_with(&self, key: Option<&str>, config: &str) -> NodeSettings {
        let mut settings = self.node_settings(key);
        settings.node_config = flwr_sdk::config::parse_overrides(config).unwrap();
        settings
    }

    /// Settings of a node with the key `keys/<key>` (or a fresh one), trusting this CA.
    pub fn node_settings(&self, key: Option<&str>) -> NodeSettings {
        static NODES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let roots = certs::load::load_certificates(&self.certs.ca_cert).unwrap();
        let mut settings = node_settings(
            self.broker().fleet_addr,
            ServerTrust::Roots(roots),
            key.map(|k| self.path(&format!("keys/{k}"))).as_deref(),
        );
        // Each node's own, as on separate hosts: what one node keeps, a test can look for.
        let n = NODES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        settings.apps_dir = self.path(&format!("node-apps-{n}"));
        settings
    }
}

/// Settings of an in-process node on the CPU connecting to `fleet`, with the key at `key` or a fresh
/// ephemeral one.
pub fn node_settings(fleet: SocketAddr, trust: ServerTrust, key: Option<&Path>) -> NodeSettings {
    let (identity, ephemeral_identity) = match key {
        Some(path) => (certs::load::load_identity_key(path).unwrap(), false),
        None => (certs::IdentityKey::generate(), true),
    };
    NodeSettings {
        superlink: fleet.to_string(),
        trust,
        identity,
        ephemeral_identity,
        node_config: wire::ConfigRecord::new(),
        clientappio_address: SocketAddr::from(([127, 0, 0, 1], 0)),
        clientappio_allow_remote: false,
        // Client app processes are tested in `tests/federation/isolation.rs`.
        isolation: node::isolation::Isolation::InProcess,
        max_retries: None,
        max_wait_time: None,
        backend: model::cnn::backend::BackendChoice::Cpu,
        // Bundles are content-addressed and unpacked atomically: tests may share the cache.
        // The user's own: a fixed name another user created first would be refused.
        apps_dir: std::env::temp_dir()
            .join(format!("flwr-rs-test-apps-{}", nix::unistd::geteuid())),
        trusted_apps: None,
        flwr_clientapp: None,
        flwr_clientapp_warm: node::flower::warm::WarmLimits::default(),
        native_clientapps: Default::default(),
        virtual_nodes: None,
        max_workers: None,
        clientapp_memory_limit: None,
    }
}

/// This workspace's executable `name` (`flower-supernode`, ...), which `cargo test --workspace`
/// builds beside the test binaries' directory.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let program = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join(name))
        .unwrap();
    assert!(
        program.is_file(),
        "no {name} at {}: build it with cargo build --bins",
        program.display()
    );
    program
}

/// Flower's program `name` (`flwr-serverapp`, `flwr-clientapp`) in the virtual environment
/// `scripts/flower-venv` makes (`target/flower-venv`), or in `$FLOWER_VENV`.
pub fn flower_program(name: &str) -> PathBuf {
    let venv = std::env::var_os("FLOWER_VENV").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/flower-venv"),
        PathBuf::from,
    );
    let program = venv.join("bin").join(name);
    assert!(
        program.is_file(),
        "no {name} at {}: run scripts/flower-venv, or set FLOWER_VENV",
        program.display()
    );
    program
}

/// A node daemon running in this process.
pub struct RunningNode {
    /// The daemon's state as it changes.
    pub state: watch::Receiver<NodeState>,
    /// Cancelling it stops the daemon cleanly.
    pub shutdown: CancellationToken,
    /// The daemon.
    pub task: JoinHandle<Result<(), NodeError>>,
}

impl RunningNode {
    /// Starts a node with the built-in client apps.
    pub fn start(settings: NodeSettings) -> Self {
        Self::start_with_apps(settings, model::apps::ClientApps::builtin())
    }

    /// Starts a node with these client apps.
    pub fn start_with_apps(settings: NodeSettings, apps: model::apps::ClientApps) -> Self {
        let shutdown = CancellationToken::new();
        let (state_tx, state) = watch::channel(NodeState::Connecting);
        let task = tokio::spawn(node::daemon::run(
            settings,
            apps,
            shutdown.clone(),
            state_tx,
        ));
        RunningNode {
            state,
            shutdown,
            task,
        }
    }

    /// Waits until the node is online and returns its id.
    pub async fn online(&mut self) -> NodeId {
        self.online_within(PATIENCE).await
    }

    /// Waits up to `patience` until the node is online and returns its id.
    pub async fn online_within(&mut self, patience: Duration) -> NodeId {
        let state = tokio::time::timeout(
            patience,
            self.state
                .wait_for(|s| matches!(s, NodeState::Online(_) | NodeState::Stopped)),
        )
        .await
        .expect("node never came online")
        .expect("node task gone")
        .to_owned();
        match state {
            NodeState::Online(id) => id,
            other => panic!("node stopped instead of coming online: {other:?}"),
        }
    }

    /// Stops the node cleanly.
    pub async fn stop(self) -> Result<(), NodeError> {
        self.shutdown.cancel();
        self.finished().await
    }

    /// Waits for the node to end by itself.
    pub async fn finished(self) -> Result<(), NodeError> {
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("node did not stop")
            .expect("node panicked")
    }
}
