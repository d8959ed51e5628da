//! Binds the two QUIC endpoints and runs their accept loops until the shutdown token fires.
//!
//! Shutdown order: stop accepting, close every connection with a "shutting down" code, wait for
//! the connection tasks, then let the endpoints drain.

use crate::config::{BrokerConfig, NodeAuth, OperatorAuth};
use crate::runs::ActiveRuns;
use crate::runs::grid::{LiveContents, ReplyRouter};
use crate::sessions::Sessions;
use crate::store::Store;
use crate::{control, fleet};
use certs::PublicKey;
use certs::tls::ClientAuth;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use thiserror::Error;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use wire::control::NodeStatus;

/// A failure to start the broker.
#[derive(Debug, Error)]
pub enum BrokerError {
    /// TLS or QUIC configuration failed.
    #[error(transparent)]
    Certs(#[from] certs::CertsError),
    /// An address could not be bound.
    #[error("cannot listen on {address} ({api} API): {source}")]
    Bind {
        /// Which API.
        api: &'static str,
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// State shared by every connection task.
pub struct Shared {
    /// The durable state.
    pub store: Arc<Store>,
    /// Live node connections.
    pub sessions: Sessions,
    /// Settings.
    pub config: BrokerConfig,
    /// Runs whose server app is executing.
    pub runs: ActiveRuns,
    /// Replies on their way to the runs waiting for them.
    pub router: ReplyRouter,
    /// Contents of in-flight instructions.
    pub contents: LiveContents,
    /// Server apps by name.
    pub apps: model::apps::ServerApps,
    /// Counters for the metrics endpoint.
    pub metrics: crate::metrics::Metrics,
}

/// A broker running in this process.
pub struct RunningBroker {
    /// Where the Fleet API listens (with the real port when 0 was asked).
    pub fleet_addr: SocketAddr,
    /// Where the Control API listens.
    pub control_addr: SocketAddr,
    /// Where the metrics endpoint listens, if enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// Shared state, for inspection by tests and the binary.
    pub shared: Arc<Shared>,
    /// Cancels everything.
    shutdown: CancellationToken,
    /// The accept loops.
    task: tokio::task::JoinHandle<()>,
}

impl RunningBroker {
    /// Asks the broker to stop.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until the broker stopped (after [`Self::shutdown`] or the token passed to [`start`]).
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

/// Whether `key` may complete the TLS handshake on the Fleet API.
fn fleet_key_allowed(store: &Store, node_auth: NodeAuth, key: &PublicKey) -> bool {
    match store.node_by_key(key) {
        Ok(Some(record)) => record.info.status != NodeStatus::Unregistered,
        Ok(None) => node_auth == NodeAuth::Automatic,
        Err(error) => {
            tracing::error!(%error, "registry lookup failed during TLS; refusing the key");
            false
        }
    }
}

/// How long an operator's connection may stay silent (while it follows a quiet run's log, say);
/// its client sends keep-alives well inside this.
const CONTROL_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

fn endpoint(
    api: &'static str,
    address: SocketAddr,
    tls: rustls::ServerConfig,
    idle_timeout: std::time::Duration,
) -> Result<quinn::Endpoint, BrokerError> {
    // Nodes are judged gone after the heartbeat timeout; operators get longer.
    let transport = certs::quic::transport(idle_timeout, None);
    let server = certs::quic::server_config(tls, transport)?;
    quinn::Endpoint::server(server, address).map_err(|source| BrokerError::Bind {
        api,
        address,
        source,
    })
}

/// Binds both APIs and starts serving; returns once the endpoints listen.
pub fn start(
    config: BrokerConfig,
    store: Store,
    fleet_address: SocketAddr,
    control_address: SocketAddr,
    shutdown: CancellationToken,
) -> Result<RunningBroker, BrokerError> {
    let store = Arc::new(store);

    let fleet_policy = {
        // Weak: the TLS configuration may outlive the broker inside QUIC's endpoint driver, and
        // must not keep the database open after shutdown.
        let store = Arc::downgrade(&store);
        let node_auth = config.node_auth;
        move |key: &PublicKey| {
            store
                .upgrade()
                .is_some_and(|store| fleet_key_allowed(&store, node_auth, key))
        }
    };
    let fleet_tls = certs::tls::server_config(
        config.chain.clone(),
        config.key.clone_key(),
        ClientAuth {
            policy: Arc::new(fleet_policy),
            mandatory: true,
        },
        wire::alpn::FLEET,
    )?;

    let control_auth = match &config.operator_auth {
        OperatorAuth::Keys(lines) => {
            let keys: Vec<PublicKey> = lines.iter().map(|line| line.key).collect();
            ClientAuth {
                policy: Arc::new(move |key: &PublicKey| keys.contains(key)),
                mandatory: true,
            }
        }
        OperatorAuth::LoopbackOnly => ClientAuth {
            policy: Arc::new(|_: &PublicKey| true),
            mandatory: false,
        },
    };
    let control_tls = certs::tls::server_config(
        config.chain.clone(),
        config.key.clone_key(),
        control_auth,
        wire::alpn::CONTROL,
    )?;

    let fleet_endpoint = endpoint("Fleet", fleet_address, fleet_tls, config.heartbeat_timeout)?;
    let control_endpoint = endpoint(
        "Control",
        control_address,
        control_tls,
        CONTROL_IDLE_TIMEOUT,
    )?;
    let fleet_addr = local_addr(&fleet_endpoint, "Fleet", fleet_address)?;
    let control_addr = local_addr(&control_endpoint, "Control", control_address)?;

    let apps = config.apps.clone();
    let shared = Arc::new(Shared {
        store,
        sessions: Sessions::default(),
        config,
        runs: ActiveRuns::default(),
        router: ReplyRouter::default(),
        contents: LiveContents::default(),
        apps,
        metrics: crate::metrics::Metrics::default(),
    });
    match crate::runs::runner::resume_interrupted_runs(&shared) {
        Ok(0) => {}
        Ok(n) => tracing::warn!(runs = n, "resuming runs the previous process left active"),
        Err(error) => tracing::error!(%error, "could not resume interrupted runs"),
    }
    let metrics_addr = match shared.config.metrics_address {
        Some(address) => {
            let std_listener =
                std::net::TcpListener::bind(address).map_err(|source| BrokerError::Bind {
                    api: "metrics",
                    address,
                    source,
                })?;
            std_listener
                .set_nonblocking(true)
                .map_err(|source| BrokerError::Bind {
                    api: "metrics",
                    address,
                    source,
                })?;
            let bound = std_listener
                .local_addr()
                .map_err(|source| BrokerError::Bind {
                    api: "metrics",
                    address,
                    source,
                })?;
            let listener = tokio::net::TcpListener::from_std(std_listener).map_err(|source| {
                BrokerError::Bind {
                    api: "metrics",
                    address,
                    source,
                }
            })?;
            tokio::spawn(crate::metrics::serve(
                listener,
                shared.clone(),
                shutdown.clone(),
            ));
            Some(bound)
        }
        None => None,
    };
    let task = tokio::spawn(serve(
        shared.clone(),
        fleet_endpoint,
        control_endpoint,
        shutdown.clone(),
    ));
    Ok(RunningBroker {
        fleet_addr,
        control_addr,
        metrics_addr,
        shared,
        shutdown,
        task,
    })
}

fn local_addr(
    endpoint: &quinn::Endpoint,
    api: &'static str,
    address: SocketAddr,
) -> Result<SocketAddr, BrokerError> {
    endpoint.local_addr().map_err(|source| BrokerError::Bind {
        api,
        address,
        source,
    })
}

async fn serve(
    shared: Arc<Shared>,
    fleet_endpoint: quinn::Endpoint,
    control_endpoint: quinn::Endpoint,
    shutdown: CancellationToken,
) {
    let mut tasks = JoinSet::new();
    let fleet_slots = Arc::new(Semaphore::new(shared.config.max_pending_handshakes));
    let control_slots = Arc::new(Semaphore::new(shared.config.max_pending_handshakes));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            incoming = fleet_endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                if let Some((incoming, permit)) = admit(incoming, &fleet_slots, "Fleet") {
                    tasks.spawn(fleet::handle(shared.clone(), incoming, permit, shutdown.child_token()));
                }
            }
            incoming = control_endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                if let Some((incoming, permit)) = admit(incoming, &control_slots, "Control") {
                    tasks.spawn(control::handle(shared.clone(), incoming, permit, shutdown.child_token()));
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    // Connection tasks watch the same token: they close their connections with SHUTDOWN.
    shutdown.cancel();
    shared.runs.cancel_all();
    while tasks.join_next().await.is_some() {}
    fleet_endpoint.close(wire::fleet::close::SHUTDOWN.into(), b"broker shutting down");
    control_endpoint.close(wire::fleet::close::SHUTDOWN.into(), b"broker shutting down");
    drain(fleet_endpoint.wait_idle(), control_endpoint.wait_idle()).await;
}

async fn drain(a: impl Future<Output = ()>, b: impl Future<Output = ()>) {
    let both = async {
        a.await;
        b.await;
    };
    // Peers get their close frames; a peer that never answers does not hold up the exit.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), both).await;
}

/// Takes a handshake slot for `incoming`, or refuses it when too many are authenticating already.
fn admit(
    incoming: quinn::Incoming,
    slots: &Arc<Semaphore>,
    api: &str,
) -> Option<(quinn::Incoming, OwnedSemaphorePermit)> {
    match slots.clone().try_acquire_owned() {
        Ok(permit) => Some((incoming, permit)),
        Err(_) => {
            tracing::warn!(api, remote = %incoming.remote_address(), "too many unauthenticated connections; refusing");
            incoming.refuse();
            None
        }
    }
}
