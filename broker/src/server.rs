//! Binds the two QUIC endpoints and runs their accept loops until the shutdown token fires.
//!
//! Shutdown order: stop accepting, signal every run to stop, close every QUIC connection with a
//! "shutting down" code, wait for the connection tasks and (a few seconds at most) for the runs'
//! server apps, then let the endpoints drain.

use crate::admission::{Gate, Slot, Turned};
use crate::config::{BrokerConfig, NodeAuth, OperatorAuth};
use crate::runs::ActiveRuns;
use crate::sessions::Sessions;
use crate::state::Shared;
use crate::store::Store;
use crate::{control, fleet};
use certs::PublicKey;
use certs::tls::ClientAuth;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use thiserror::Error;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use wire::control::NodeStatus;

/// A failure to start the broker.
#[derive(Debug, Error)]
pub enum BrokerError {
    /// TLS or QUIC configuration failed.
    #[error(transparent)]
    Certs(#[from] certs::CertsError),
    /// The operator key list cannot be used as it is.
    #[error("--control-auth-public-keys: {0}")]
    OperatorKeys(String),
    /// The dashboard could not start.
    #[error(transparent)]
    Dashboard(#[from] crate::dashboard::DashboardError),
    /// The apps directory could be changed by other users.
    #[error("--apps-dir: {0}")]
    AppsDir(#[from] ops::private_dir::NotPrivate),
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
    /// `--simulation`'s directory could not be prepared.
    #[error("cannot prepare the simulations' directory {}: {source}", dir.display())]
    Simulation {
        /// The directory.
        dir: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A broker running in this process.
pub struct RunningBroker {
    /// Where the Fleet API listens (with the real port when 0 was asked).
    pub fleet_addr: SocketAddr,
    /// Where the Control API listens.
    pub control_addr: SocketAddr,
    /// Where the metrics endpoint listens, if enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// Where server app programs connect.
    pub serverappio_addr: SocketAddr,
    /// Where the dashboard listens, if enabled.
    pub dashboard_addr: Option<SocketAddr>,
    /// Where Flower's HTTP API listens, if served.
    pub flower_http_addr: Option<SocketAddr>,
    /// Shared state, for inspection by tests and the binary.
    pub shared: Arc<Shared>,
    /// Cancels everything.
    shutdown: CancellationToken,
    /// The accept loops.
    task: tokio::task::JoinHandle<()>,
    /// The metrics endpoint, when enabled.
    metrics_task: Option<tokio::task::JoinHandle<()>>,
    /// The dashboard, when enabled.
    dashboard_task: Option<tokio::task::JoinHandle<()>>,
    /// Flower's HTTP API, when served.
    flower_http_task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningBroker {
    /// Asks the broker to stop.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until the broker stopped (after [`Self::shutdown`] or the token passed to [`start`]).
    pub async fn join(self) {
        let _ = self.task.await;
        if let Some(metrics) = self.metrics_task {
            let _ = metrics.await;
        }
        if let Some(dashboard) = self.dashboard_task {
            let _ = dashboard.await;
        }
        if let Some(flower_http) = self.flower_http_task {
            let _ = flower_http.await;
        }
    }
}

/// Whether `key` may complete the TLS handshake on the Fleet API: never an operator's key (node
/// and operator keys are disjoint, in automatic mode too), otherwise as the registry says.
fn fleet_key_allowed(
    store: &Store,
    node_auth: NodeAuth,
    operators: &OperatorAuth,
    key: &PublicKey,
) -> bool {
    if operators.is_operator_key(key) {
        return false;
    }
    match store.node_by_key(key) {
        Ok(Some(record)) => record.info.status != NodeStatus::Unregistered,
        Ok(None) => node_auth == NodeAuth::Automatic,
        Err(error) => {
            tracing::error!(%error, "registry lookup failed during TLS; refusing the key");
            false
        }
    }
}

/// Operators are told apart by name (a key line's comment, or its fingerprint without one), and
/// node owners are recorded by that name: two keys must not share one, and none may take a name
/// the broker uses itself.
fn check_operator_keys(lines: &[certs::openssh::PublicKeyLine]) -> Result<(), BrokerError> {
    let mut names = std::collections::HashSet::new();
    for line in lines {
        let name = crate::control::operator_name(line);
        if name == crate::store::AUTOMATIC_OWNER || name == control::LOCAL_OPERATOR {
            return Err(BrokerError::OperatorKeys(format!(
                "the name {name:?} is reserved; give that key another comment"
            )));
        }
        if !names.insert(name.clone()) {
            return Err(BrokerError::OperatorKeys(format!(
                "two keys are named {name:?}; give each operator a name of their own"
            )));
        }
    }
    Ok(())
}

/// Operator keys that a node was registered with before they became operator keys: such a node
/// can no longer connect (operator keys never pass the Fleet API's TLS), and is reported at start
/// so that an operator unregisters it.
fn operator_keys_registered_as_nodes(
    lines: &[certs::openssh::PublicKeyLine],
    store: &Store,
) -> Vec<(String, wire::NodeId)> {
    lines
        .iter()
        .filter_map(|line| match store.node_by_key(&line.key) {
            Ok(Some(node)) if node.info.status != NodeStatus::Unregistered => {
                Some((crate::control::operator_name(line), node.info.node_id))
            }
            _ => None,
        })
        .collect()
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
    // Nodes are judged gone after the heartbeat timeout; operators get longer. Until a peer has
    // authenticated it gets one stream and a small window: a stranger pins little memory.
    let transport = certs::quic::unauthenticated_transport(idle_timeout);
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
    // Apps run from here as the SuperLink's user: nobody else may change it, nor its path.
    ops::private_dir::create_private_dir(&config.apps_dir)?;
    if let OperatorAuth::Keys(lines) = &config.operator_auth {
        check_operator_keys(lines)?;
        for (name, node_id) in operator_keys_registered_as_nodes(lines, &store) {
            tracing::warn!(
                operator = name,
                %node_id,
                "an operator key is registered as a node; that node cannot connect: unregister it"
            );
        }
    }
    let store = Arc::new(store);

    // A simulation SuperLink admits its current virtual SuperNodes' keys, and no other.
    let virtual_keys = config
        .simulation
        .as_ref()
        .map(|_| Arc::new(crate::simulation::VirtualKeys::default()));
    let fleet_policy = {
        // Weak: the TLS configuration may outlive the broker inside QUIC's endpoint driver, and
        // must not keep the database open after shutdown.
        let store = Arc::downgrade(&store);
        let node_auth = config.node_auth;
        let operators = config.operator_auth.clone();
        let virtual_keys = virtual_keys.clone();
        move |key: &PublicKey| {
            if let Some(virtual_keys) = &virtual_keys
                && !virtual_keys.admits(key)
            {
                return false;
            }
            store
                .upgrade()
                .is_some_and(|store| fleet_key_allowed(&store, node_auth, &operators, key))
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

    let serverappio_address = config.serverappio_address;
    let serverappio_error = |source| BrokerError::Bind {
        api: "ServerAppIo",
        address: serverappio_address,
        source,
    };
    let serverappio = crate::serverappio::bind(serverappio_address)
        .and_then(|bound| crate::serverappio::ServerAppIo::serve(bound, shutdown.clone()))
        .map_err(serverappio_error)?;
    let flower = crate::flower_api::FlowerRuntime::start(shutdown.clone()).map_err(|source| {
        BrokerError::Bind {
            api: "Flower runtime",
            address: std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)),
            source,
        }
    })?;
    let dashboard = match &config.dashboard {
        Some(dashboard) => Some(crate::dashboard::bind(
            dashboard,
            &config.operator_auth,
            config.chain.clone(),
            config.key.clone_key(),
        )?),
        None => None,
    };
    let flower_http = match config.flower_http {
        Some(http) => crate::flower_http::bind(http).map_err(|source| BrokerError::Bind {
            api: "Flower HTTP",
            address: http.address,
            source,
        })?,
        None => None,
    };
    let simulations = match (&config.simulation, virtual_keys) {
        (Some(simulation), Some(virtual_keys)) => Some(
            crate::simulation::Simulations::prepare(simulation.clone(), fleet_addr, virtual_keys)
                .map_err(|source| BrokerError::Simulation {
                dir: simulation.dir.clone(),
                source,
            })?,
        ),
        _ => None,
    };
    let apps = config.apps.clone();
    let shared = Arc::new(Shared {
        store,
        sessions: Sessions::default(),
        config,
        runs: ActiveRuns::default(),
        rounds: Arc::new(crate::rounds::Rounds::default()),
        apps,
        metrics: crate::metrics::Metrics::default(),
        bundle_sender: crate::bundle_sender::BundleSender::default(),
        serverappio,
        flower,
        dashboard: dashboard.as_ref().map(|bound| bound.dashboard.clone()),
        simulations,
    });
    match crate::runs::runner::resume_interrupted_runs(&shared) {
        Ok(0) => {}
        Ok(n) => tracing::warn!(runs = n, "resuming runs the previous process left active"),
        Err(error) => tracing::error!(%error, "could not resume interrupted runs"),
    }
    let (metrics_addr, metrics_task) = match shared.config.metrics_address {
        Some(address) => {
            let bind_error = |source| BrokerError::Bind {
                api: "metrics",
                address,
                source,
            };
            let std_listener = std::net::TcpListener::bind(address).map_err(bind_error)?;
            std_listener.set_nonblocking(true).map_err(bind_error)?;
            let bound = std_listener.local_addr().map_err(bind_error)?;
            let listener = tokio::net::TcpListener::from_std(std_listener).map_err(bind_error)?;
            let render: crate::metrics::Render = {
                let shared = shared.clone();
                Arc::new(move || {
                    shared
                        .metrics
                        .render(&shared.store, &shared.sessions, &shared.rounds)
                })
            };
            let task = tokio::spawn(crate::metrics::serve(listener, render, shutdown.clone()));
            (Some(bound), Some(task))
        }
        None => (None, None),
    };
    let flower_http_addr = flower_http.as_ref().and_then(|l| l.local_addr().ok());
    let flower_http_task = match flower_http {
        Some(listener) => Some(
            crate::flower_http::spawn(listener, &shared, shutdown.clone()).map_err(|source| {
                BrokerError::Bind {
                    api: "Flower HTTP",
                    address: flower_http_addr.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0))),
                    source,
                }
            })?,
        ),
        None => None,
    };
    let dashboard_addr = dashboard.as_ref().map(|bound| bound.dashboard.address);
    let dashboard_task = dashboard.map(|bound| bound.spawn(shared.clone(), shutdown.clone()));
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
        serverappio_addr: shared.serverappio.address(),
        dashboard_addr,
        flower_http_addr,
        shared,
        shutdown,
        task,
        metrics_task,
        dashboard_task,
        flower_http_task,
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
    let config = &shared.config;
    let fleet_gate = Gate::new(
        config.max_pending_handshakes,
        config.max_pending_per_source,
        false,
    );
    let control_gate = Gate::new(
        config.max_pending_handshakes,
        config.max_pending_per_source,
        matches!(config.operator_auth, OperatorAuth::LoopbackOnly),
    );
    // The connections close on a token of their own, cancelled only once every run has been told
    // to stop: closing them first would show each round its nodes departing, and a round whose
    // nodes all depart fails instead of resuming after the restart. A round that sees both takes
    // the stop (the grid checks its run's token first).
    let connections = CancellationToken::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            incoming = fleet_endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                if let Some((incoming, slot)) = admit(&shared, incoming, &fleet_gate, "Fleet") {
                    tasks.spawn(fleet::handle(shared.clone(), incoming, slot, connections.child_token()));
                }
            }
            incoming = control_endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                if let Some((incoming, slot)) = admit(&shared, incoming, &control_gate, "Control") {
                    tasks.spawn(control::handle(shared.clone(), incoming, slot, connections.child_token()));
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    shutdown.cancel();
    shared.runs.cancel_all();
    // Connection tasks close their connections with SHUTDOWN.
    connections.cancel();
    while tasks.join_next().await.is_some() {}
    // A stopped run's app returns at its next grid call; its run stays active in the store, so
    // the next start resumes it.
    if !shared.runs.stopped_within(RUN_STOP_PATIENCE).await {
        tracing::warn!("a server app did not stop within {RUN_STOP_PATIENCE:?}; exiting anyway");
    }
    fleet_endpoint.close(wire::close::SHUTDOWN.into(), b"broker shutting down");
    control_endpoint.close(wire::close::SHUTDOWN.into(), b"broker shutting down");
    drain(fleet_endpoint.wait_idle(), control_endpoint.wait_idle()).await;
}

/// How long a shutting-down broker waits for its runs' server apps to stop.
const RUN_STOP_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

async fn drain(a: impl Future<Output = ()>, b: impl Future<Output = ()>) {
    let both = async {
        a.await;
        b.await;
    };
    // Peers get their close frames; a peer that never answers does not hold up the exit.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), both).await;
}

/// Passes `incoming` through `gate`: a slot for the handshake, or a Retry or refusal already sent.
fn admit(
    shared: &Shared,
    incoming: quinn::Incoming,
    gate: &Gate,
    api: &str,
) -> Option<(quinn::Incoming, Slot)> {
    let remote = incoming.remote_address();
    match gate.admit(incoming) {
        Ok(admitted) => Some(admitted),
        Err(Turned::Retried) => None,
        Err(turned) => {
            tracing::warn!(api, %remote, reason = turned.label(), "connection refused before TLS");
            shared.metrics.handshake_failed(turned.label());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use certs::IdentityKey;
    use certs::openssh::PublicKeyLine;

    fn line(comment: &str) -> PublicKeyLine {
        PublicKeyLine {
            key: IdentityKey::generate().public_key(),
            comment: comment.into(),
        }
    }

    #[tokio::test]
    async fn a_superlink_whose_apps_dir_others_may_change_does_not_start() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let paths =
            certs::generate::generate_certificates(&dir.path().join("certificates"), &[], false)
                .unwrap();
        let chain = certs::load::load_certificates(&paths.server_cert).unwrap();
        let key = certs::load::load_tls_private_key(&paths.server_key).unwrap();
        let mut config =
            BrokerConfig::new(chain, key, NodeAuth::Registered, OperatorAuth::LoopbackOnly);
        // The apps dir would be private, but anyone may rename it away from its parent.
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        config.apps_dir = shared.join("apps");
        let any_port = || SocketAddr::from(([127, 0, 0, 1], 0));
        let started = start(
            config,
            Store::in_memory().unwrap(),
            any_port(),
            any_port(),
            CancellationToken::new(),
        );
        let Err(error) = started else {
            panic!("a SuperLink started with an apps dir others may change");
        };
        assert!(matches!(error, BrokerError::AppsDir(_)), "{error}");
        assert!(
            error.to_string().contains("writable by other users"),
            "{error}"
        );
    }

    #[test]
    fn operator_names_must_be_distinct_and_not_reserved() {
        assert!(check_operator_keys(&[line("alice"), line("bob"), line("")]).is_ok());
        for names in [["alice", "alice"], ["alice", "automatic"], ["local", "bob"]] {
            let lines: Vec<_> = names.iter().map(|n| line(n)).collect();
            let error = check_operator_keys(&lines).unwrap_err().to_string();
            assert!(
                error.contains("reserved") || error.contains("two keys"),
                "{names:?}: {error}"
            );
        }
    }

    #[test]
    fn an_operator_key_registered_as_a_node_is_reported_and_refused_on_the_fleet_api() {
        let store = Store::in_memory().unwrap();
        let operator = line("alice");
        let node = store.register_node(&operator.key, "alice", 1).unwrap();
        let reported = operator_keys_registered_as_nodes(std::slice::from_ref(&operator), &store);
        assert_eq!(reported, [("alice".to_string(), node.node_id)]);
        let operators = OperatorAuth::Keys(vec![operator.clone()]);
        for auth in [NodeAuth::Registered, NodeAuth::Automatic] {
            assert!(!fleet_key_allowed(&store, auth, &operators, &operator.key));
            assert!(fleet_key_allowed(
                &store,
                auth,
                &OperatorAuth::LoopbackOnly,
                &operator.key
            ));
        }
    }
}
