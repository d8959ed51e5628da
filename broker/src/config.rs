//! What a running broker needs, resolved from flags (see [`crate::settings`]) or built by tests.

use certs::openssh::PublicKeyLine;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::time::Duration;

/// Default cap on the array bytes of one reply (1 GiB), whatever its instruction carried.
pub const DEFAULT_MAX_REPLY_BYTES: u64 = 1 << 30;

/// Which nodes may join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeAuth {
    /// Only keys registered with `flwr supernode register` (`--enable-supernode-auth`).
    Registered,
    /// Any node; unknown keys register themselves on connect (Flower's automatic mode).
    Automatic,
}

/// Who may use the Control API.
#[derive(Debug, Clone)]
pub enum OperatorAuth {
    /// Holders of these keys, named by each line's comment (`--control-auth-public-keys`).
    Keys(Vec<PublicKeyLine>),
    /// Anyone connecting from a loopback address (no operator keys given).
    LoopbackOnly,
}

impl OperatorAuth {
    /// Whether `key` is one of the operators' keys (never, in loopback-only mode).
    pub fn is_operator_key(&self, key: &certs::PublicKey) -> bool {
        match self {
            OperatorAuth::Keys(lines) => lines.iter().any(|line| line.key == *key),
            OperatorAuth::LoopbackOnly => false,
        }
    }
}

/// Everything the broker's endpoints need.
#[derive(Debug)]
pub struct BrokerConfig {
    /// The server certificate chain presented on both APIs.
    pub chain: Vec<CertificateDer<'static>>,
    /// The server's private key.
    pub key: PrivateKeyDer<'static>,
    /// Node admission.
    pub node_auth: NodeAuth,
    /// Operator admission.
    pub operator_auth: OperatorAuth,
    /// How often nodes should send heartbeats.
    pub heartbeat_interval: Duration,
    /// How long without a heartbeat before a node is considered gone.
    pub heartbeat_timeout: Duration,
    /// Longest time a connection may take from its first packet to a finished authentication.
    pub handshake_timeout: Duration,
    /// Longest time the TLS part of a handshake may take (within `handshake_timeout`).
    pub tls_timeout: Duration,
    /// Most connections allowed to be authenticating at once (per API).
    pub max_pending_handshakes: usize,
    /// Most of those from one source (an IPv4 address or an IPv6 /64; four times as many from one
    /// IPv6 /48).
    pub max_pending_per_source: usize,
    /// Most reply streams one node may have open at once.
    pub reply_streams_per_node: u32,
    /// Server apps runs may use, by name.
    pub apps: model::apps::ServerApps,
    /// Limits on messages nodes send (replies). A reply is further bounded by what its
    /// instruction carried (see [`crate::delivery`]).
    pub limits: wire::stream::Limits,
    /// Where to serve Prometheus metrics (off when `None`).
    pub metrics_address: Option<std::net::SocketAddr>,
    /// Where Flower's own `flwr` reaches the Control API over HTTP (off when `None`; never
    /// served with operator keys).
    pub flower_http: Option<crate::flower_http::FlowerHttp>,
    /// Where to serve the operators' dashboard (off when `None`).
    pub dashboard: Option<crate::dashboard::DashboardConfig>,
    /// Where server app programs connect (the ServerAppIo API; port 0 picks a free one).
    pub serverappio_address: std::net::SocketAddr,
    /// Where server app programs run: one fresh workspace per run, removed afterwards.
    pub apps_dir: std::path::PathBuf,
    /// `--simulation`: each run on a virtual federation of its own.
    pub simulation: Option<crate::simulation::SimulationConfig>,
    /// Flower's `flwr-serverapp`, which runs Flower apps' ServerApps (`None`: the one on
    /// `PATH`).
    pub flwr_serverapp: Option<std::path::PathBuf>,
    /// How long a Flower ServerApp may go unheard (no heartbeat, no call) before it is killed
    /// and its run fails; Flower's apps send a heartbeat every 20 s or so.
    pub flower_app_patience: Duration,
}

impl BrokerConfig {
    /// A configuration with the default timings and limits.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        node_auth: NodeAuth,
        operator_auth: OperatorAuth,
    ) -> Self {
        BrokerConfig {
            chain,
            key,
            node_auth,
            operator_auth,
            heartbeat_interval: Duration::from_secs(2),
            heartbeat_timeout: Duration::from_secs(6),
            handshake_timeout: Duration::from_secs(10),
            tls_timeout: Duration::from_secs(5),
            max_pending_handshakes: 1024,
            max_pending_per_source: 8,
            reply_streams_per_node: 4,
            apps: model::apps::ServerApps::builtin(),
            limits: wire::stream::Limits {
                max_payload: DEFAULT_MAX_REPLY_BYTES,
                ..wire::stream::Limits::default()
            },
            metrics_address: None,
            dashboard: None,
            flower_http: None,
            // A free port: brokers embedded in tests and tools never compete for Flower's 9091,
            // which the binary binds by default.
            serverappio_address: std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)),
            // The user's own: a fixed name another user created first would be refused.
            apps_dir: std::env::temp_dir()
                .join(format!("flower-superlink-apps-{}", nix::unistd::geteuid())),
            simulation: None,
            flwr_serverapp: None,
            flower_app_patience: Duration::from_secs(90),
        }
    }
}
