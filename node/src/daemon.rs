//! The node's life: connect, serve the session, and when it breaks, reconnect with capped
//! exponential backoff and jitter; stop for good on a permanent refusal or when the retry budget
//! (`--max-retries`, `--max-wait-time`) is spent.

use crate::isolation::{ClientAppIo, Isolation, Launch};
use crate::session::{self, SessionEnd, SessionError};
use crate::settings::NodeSettings;
use crate::work::{Isolated, Worker};
use rand::RngExt as _;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use wire::NodeId;

/// First reconnect delay.
const BACKOFF_START: Duration = Duration::from_millis(250);

/// Longest reconnect delay.
const BACKOFF_CAP: Duration = Duration::from_secs(10);

/// Heartbeat period assumed before the broker announced its own (sizes the idle timeout).
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(2);

/// What the node is doing, for observers (the binary's logs, tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Trying to reach the broker.
    Connecting,
    /// Authenticated, with this id.
    Online(NodeId),
    /// Finished.
    Stopped,
}

/// Why the node stopped without being asked to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// The broker refused this node for good.
    #[error("{0}")]
    Refused(String),
    /// The retry budget ran out.
    #[error("gave up after {attempts} failed connection attempts: {last}")]
    GaveUp {
        /// Consecutive failures.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// The node could not even start (socket, configuration).
    #[error("{0}")]
    Setup(String),
}

/// Retry bookkeeping for one stretch of consecutive failures.
struct Backoff {
    /// Failures so far in this stretch.
    attempts: u32,
    /// When this stretch began.
    since: tokio::time::Instant,
    /// Next delay before jitter.
    delay: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff {
            attempts: 0,
            since: tokio::time::Instant::now(),
            delay: BACKOFF_START,
        }
    }

    /// Records a failure; returns how long to wait, or `None` when the budget is spent.
    fn next(&mut self, settings: &NodeSettings) -> Option<Duration> {
        self.attempts += 1;
        if settings.max_retries.is_some_and(|max| self.attempts > max) {
            return None;
        }
        if settings
            .max_wait_time
            .is_some_and(|max| self.since.elapsed() >= max)
        {
            return None;
        }
        let jitter = rand::rng().random_range(0.75..1.25);
        let wait = self.delay.mul_f64(jitter);
        self.delay = (self.delay * 2).min(BACKOFF_CAP);
        Some(wait)
    }
}

/// Runs the node until `shutdown` fires (`Ok`) or it must stop (`Err`). `state` follows along
/// (for virtual nodes, the first one's).
pub async fn run(
    settings: NodeSettings,
    apps: model::apps::ClientApps,
    shutdown: CancellationToken,
    state: watch::Sender<NodeState>,
) -> Result<(), NodeError> {
    let worker = std::sync::Arc::new(worker(&settings, apps, &shutdown).await?);
    let (_, address) = session::resolve(&settings.superlink)
        .await
        .map_err(|e| NodeError::Setup(e.to_string()))?;
    let endpoint = certs::quic::client_endpoint(address)
        .map_err(|e| NodeError::Setup(format!("cannot open a UDP socket: {e}")))?;
    let result = match &settings.virtual_nodes {
        None => {
            let node = Node {
                identity: &settings.identity,
                config: std::sync::Arc::new(settings.node_config.clone()),
                connecting: None,
            };
            serve_node(&settings, node, &worker, &endpoint, &shutdown, &state).await
        }
        Some(virtual_nodes) => {
            crate::simulation::host(
                &settings,
                virtual_nodes,
                &worker,
                &endpoint,
                &shutdown,
                &state,
            )
            .await
        }
    };
    let _ = state.send(NodeState::Stopped);
    // Let close frames reach the broker before the socket goes away.
    let _ = tokio::time::timeout(Duration::from_millis(500), endpoint.wait_idle()).await;
    result
}

/// The node's work, set up from its settings: the APIs its app processes use, its bundles,
/// Flower's ClientApps, its trusted apps and its bound on workers.
async fn worker(
    settings: &NodeSettings,
    apps: model::apps::ClientApps,
    shutdown: &CancellationToken,
) -> Result<Worker, NodeError> {
    // Apps run from here as the node's user: nobody else may change it, nor its path.
    ops::private_dir::create_private_dir(&settings.apps_dir)
        .map_err(|e| NodeError::Setup(format!("--apps-dir: {e}")))?;
    let mut worker = Worker::new(apps).native_clientapps(settings.native_clientapps.clone());
    if let Some(workers) = settings.max_workers {
        worker = worker.max_workers(workers);
    }
    let launch = match &settings.isolation {
        Isolation::InProcess => None,
        Isolation::Subprocess { program, args } => Some(Launch::Child(
            crate::isolation::ChildCommand::clientapp(program.clone(), args.clone()),
        )),
        Isolation::Process => Some(Launch::Operator),
    };
    let mut programs_io = None;
    if let Some(launch) = launch {
        let address = settings.clientappio_address;
        let io = ClientAppIo::start(
            address,
            settings.clientappio_allow_remote,
            launch == Launch::Operator,
            shutdown.clone(),
        )
        .await
        .map_err(|error| {
            let hint = if error.kind() == std::io::ErrorKind::AddrInUse {
                " (another SuperNode on this machine? give each its own --clientappio-api-address)"
            } else {
                ""
            };
            NodeError::Setup(format!(
                "cannot serve the ClientAppIo API on {address}: {error}{hint}"
            ))
        })?;
        match &launch {
            Launch::Child(command) => tracing::info!(
                address = %io.address(),
                program = %command.program.display(),
                "client apps run in their own processes"
            ),
            Launch::Operator => tracing::info!(
                address = %io.address(),
                "client apps run in processes you start: flwr-clientapp --clientappio-api-address {}",
                io.address()
            ),
        }
        // Bundle programs share the API only where it hands out nothing unasked: under process
        // isolation any process showing the pull token takes the next instruction, which a
        // bundle's program must never do.
        if launch != Launch::Operator {
            programs_io = Some(io.clone());
        }
        worker = worker.isolated(Isolated { io, launch });
    }
    let programs_io = match programs_io {
        Some(io) => io,
        // A bundle's program is a process whatever the isolation: without an API to share, it
        // gets one of its own on a free loopback port (nodes on one host never compete for it).
        None => ClientAppIo::start(
            std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)),
            false,
            false,
            shutdown.clone(),
        )
        .await
        .map_err(|e| NodeError::Setup(format!("cannot serve the ClientAppIo API: {e}")))?,
    };
    let flower = crate::flower::FlowerClientApps::start(
        std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)),
        settings.flwr_clientapp.clone(),
        settings.apps_dir.join("flwr-home"),
        settings.flwr_clientapp_warm,
        settings.clientapp_memory_limit,
        shutdown.clone(),
    )
    .await
    .map_err(|e| NodeError::Setup(format!("cannot serve Flower's runtime API: {e}")))?;
    worker = worker.programs(crate::work::Programs {
        bundles: crate::bundles::BundleCache::new(settings.apps_dir.clone()),
        io: programs_io,
        flower,
    });
    match &settings.trusted_apps {
        Some(trusted) => {
            tracing::info!(
                entries = trusted.len(),
                "this node runs only the apps on its --trusted-apps list"
            );
            worker = worker.trusting(trusted.clone());
        }
        None => tracing::info!(
            "this node runs every app its SuperLink sends (restrict it with --trusted-apps FILE)"
        ),
    }
    Ok(worker)
}

/// One node's session with the SuperLink: its key, its config, and for virtual nodes the bound
/// on handshakes in flight they share.
pub(crate) struct Node<'a> {
    /// Its key.
    pub identity: &'a certs::IdentityKey,
    /// Given to its apps.
    pub config: std::sync::Arc<wire::ConfigRecord>,
    /// Held while connecting, when nodes of one process connect together.
    pub connecting: Option<&'a tokio::sync::Semaphore>,
}

/// Keeps `node` connected and serving, reconnecting with backoff, until `shutdown` (`Ok`) or
/// until it must stop (`Err`).
pub(crate) async fn serve_node(
    settings: &NodeSettings,
    node: Node<'_>,
    worker: &std::sync::Arc<Worker>,
    endpoint: &quinn::Endpoint,
    shutdown: &CancellationToken,
    state: &watch::Sender<NodeState>,
) -> Result<(), NodeError> {
    let mut heartbeat = DEFAULT_HEARTBEAT;
    let mut backoff = Backoff::new();
    loop {
        let _ = state.send(NodeState::Connecting);
        let attempt = async {
            let _turn = match node.connecting {
                Some(connecting) => connecting.acquire().await.ok(),
                None => None,
            };
            let config = session::client_config(settings, node.identity, heartbeat)?;
            session::open(endpoint, settings, node.identity, config).await
        };
        let opened = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            opened = attempt => opened,
        };
        let failure = match opened {
            Ok(session) => {
                backoff = Backoff::new();
                heartbeat = session.heartbeat_interval;
                tracing::info!(node_id = session.node_id.0, "connected to the SuperLink");
                let _ = state.send(NodeState::Online(session.node_id));
                match session
                    .run(worker.clone(), node.config.clone(), shutdown.clone())
                    .await
                {
                    Ok(SessionEnd::Shutdown) => return Ok(()),
                    Err(error) => error,
                }
            }
            Err(error) => error,
        };
        match failure {
            SessionError::Permanent(reason) => return Err(NodeError::Refused(reason)),
            SessionError::Transient(reason) => {
                let Some(wait) = backoff.next(settings) else {
                    return Err(NodeError::GaveUp {
                        attempts: backoff.attempts,
                        last: reason,
                    });
                };
                tracing::warn!(%reason, retry_in = ?wait, "connection to the SuperLink failed");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}
