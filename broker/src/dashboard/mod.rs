//! The operators' dashboard (`--dashboard-address`, off by default): the federation at a glance
//! in a browser, read-only. Nodes with their online history, runs with their status, one run's
//! chart, log and artifacts; HTML rendered here, kept live by a small script over server-sent
//! events, and every page also as JSON in the shapes `flwr --format json` prints.
//!
//! [`access`] says who may look, [`server`] bounds connections and routes requests, [`pages`]
//! renders, [`events`] streams, [`rounds`] reads round metrics from a run's log and [`history`]
//! samples node statuses.

pub mod access;
pub mod events;
pub mod history;
pub mod pages;
pub mod rounds;
mod server;

pub use server::{MAX_CONNECTIONS, MAX_PER_SOURCE as MAX_CONNECTIONS_PER_SOURCE};

use crate::config::OperatorAuth;
use crate::state::Shared;
use crate::store::Store;
use access::{Access, Logins};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;
use wire::RunId;
use wire::control::{ControlError, ControlResponse, LogLine};

/// Where the dashboard listens and how it lets people in.
#[derive(Debug, Clone)]
pub struct DashboardConfig {
    /// The address to bind.
    pub address: SocketAddr,
    /// How long a login link works.
    pub link_lifetime: std::time::Duration,
    /// How long a session lasts.
    pub session_lifetime: std::time::Duration,
}

impl DashboardConfig {
    /// The dashboard on `address`, with the default lifetimes.
    pub fn at(address: SocketAddr) -> Self {
        DashboardConfig {
            address,
            link_lifetime: access::LINK_LIFETIME,
            session_lifetime: access::SESSION_LIFETIME,
        }
    }
}

/// Most runs whose round history is kept between page loads.
const CACHED_RUNS: usize = 64;

/// Most log bytes one page load or tick reads on into a run's round history; a long log is read
/// over several.
const ROUND_READ_BYTES: usize = 16 << 20;

/// Most views whose latest fragment is kept for the event streams to share.
const CACHED_FRAGMENTS: usize = 256;

/// A view's `<main>` as an event stream last made it.
#[derive(Clone)]
pub(crate) struct Fragment {
    /// When.
    pub made: std::time::Instant,
    /// The HTML.
    pub main: Arc<String>,
    /// Whether it shows a finished run.
    pub finished: bool,
}

/// The dashboard's state.
pub struct Dashboard {
    /// Where it listens.
    pub address: SocketAddr,
    /// Whether it serves HTTPS.
    pub tls: bool,
    /// Who may look.
    pub access: Access,
    /// Nodes' sampled statuses.
    pub history: history::OnlineHistory,
    /// Round metrics read so far from runs' logs.
    rounds: Mutex<HashMap<RunId, Arc<Mutex<rounds::RoundHistory>>>>,
    /// The latest fragment of each view an event stream showed.
    fragments: Mutex<HashMap<server::View, Fragment>>,
}

/// A dashboard bound to its address, not yet serving.
pub struct BoundDashboard {
    /// Its state, which the Control API issues login links from.
    pub dashboard: Arc<Dashboard>,
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Why the dashboard could not start.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    /// The address could not be bound.
    #[error("cannot listen on {address} (dashboard): {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The certificate could not be used for HTTPS.
    #[error("dashboard TLS: {0}")]
    Tls(#[from] certs::CertsError),
}

/// Binds the dashboard: HTTPS with the SuperLink's certificate unless the address is loopback;
/// login links when operators sign in with keys, loopback clients only otherwise.
pub fn bind(
    config: &DashboardConfig,
    operator_auth: &OperatorAuth,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<BoundDashboard, DashboardError> {
    let address = config.address;
    let bind_error = |source| DashboardError::Bind { address, source };
    let std_listener = std::net::TcpListener::bind(address).map_err(bind_error)?;
    std_listener.set_nonblocking(true).map_err(bind_error)?;
    let bound = std_listener.local_addr().map_err(bind_error)?;
    let listener = tokio::net::TcpListener::from_std(std_listener).map_err(bind_error)?;
    let tls = if bound.ip().is_loopback() {
        None
    } else {
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(
            certs::tls::https_server_config(chain, key)?,
        )))
    };
    let access = match operator_auth {
        OperatorAuth::Keys(_) => {
            Access::Operators(Logins::new(config.link_lifetime, config.session_lifetime))
        }
        OperatorAuth::LoopbackOnly => {
            if !bound.ip().is_loopback() {
                tracing::warn!(
                    %bound,
                    "the dashboard answers loopback clients only without --control-auth-public-keys"
                );
            }
            Access::Loopback
        }
    };
    let dashboard = Arc::new(Dashboard {
        address: bound,
        tls: tls.is_some(),
        access,
        history: history::OnlineHistory::default(),
        rounds: Mutex::default(),
        fragments: Mutex::default(),
    });
    Ok(BoundDashboard {
        dashboard,
        listener,
        tls,
    })
}

impl BoundDashboard {
    /// Serves until `shutdown`, sampling node statuses as it goes.
    pub fn spawn(
        self,
        shared: Arc<Shared>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(history_sampler(
            shared.clone(),
            self.dashboard.clone(),
            shutdown.clone(),
        ));
        tokio::spawn(server::serve(
            self.listener,
            self.tls,
            shared,
            self.dashboard,
            shutdown,
        ))
    }
}

async fn history_sampler(
    shared: Arc<Shared>,
    dashboard: Arc<Dashboard>,
    shutdown: CancellationToken,
) {
    let mut every = tokio::time::interval(history::SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let store = shared.store.clone();
        let nodes = tokio::task::spawn_blocking(move || store.list_nodes()).await;
        match nodes {
            Ok(Ok(nodes)) => dashboard.history.sample(&nodes),
            Ok(Err(error)) => tracing::warn!(%error, "dashboard: node statuses not sampled"),
            Err(_) => {}
        }
    }
}

impl Dashboard {
    /// The Control API's answer to `flwr dashboard` for `operator`.
    pub fn link(&self, operator: &str) -> ControlResponse {
        let (token, lifetime) = match &self.access {
            Access::Operators(logins) => (
                Some(logins.issue_link(operator)),
                logins.link_lifetime().as_secs(),
            ),
            Access::Loopback => (None, 0),
        };
        ControlResponse::DashboardLink {
            address: self.address,
            tls: self.tls,
            token,
            expires_in_seconds: lifetime,
        }
    }

    /// A run's round metrics, read on from where the last call stopped (at most
    /// [`ROUND_READ_BYTES`] of log per call).
    fn round_entries(
        &self,
        store: &Store,
        run_id: RunId,
    ) -> Result<Vec<serde_json::Value>, crate::store::StoreError> {
        let history = {
            let mut cache = self.rounds.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= CACHED_RUNS && !cache.contains_key(&run_id) {
                let other = cache.keys().next().copied();
                if let Some(other) = other {
                    cache.remove(&other);
                }
            }
            cache.entry(run_id).or_default().clone()
        };
        let mut history = history.lock().unwrap_or_else(|p| p.into_inner());
        let mut read = 0;
        while read < ROUND_READ_BYTES {
            let (lines, more): (Vec<LogLine>, bool) =
                store.logs_page(run_id, history.next_line, 1 << 20)?;
            read += lines
                .iter()
                .map(|line| line.text.len())
                .sum::<usize>()
                .max(1);
            history.feed(&lines);
            if !more || lines.is_empty() {
                break;
            }
        }
        Ok(history.entries())
    }

    /// `view`'s fragment, if an event stream made it within `age`.
    pub(crate) fn recent_fragment(
        &self,
        view: server::View,
        age: std::time::Duration,
    ) -> Option<Fragment> {
        let fragments = self.fragments.lock().unwrap_or_else(|p| p.into_inner());
        fragments
            .get(&view)
            .filter(|fragment| fragment.made.elapsed() < age)
            .cloned()
    }

    /// Keeps `view`'s latest fragment for the other streams of that view.
    pub(crate) fn keep_fragment(&self, view: server::View, fragment: Fragment) {
        let mut fragments = self.fragments.lock().unwrap_or_else(|p| p.into_inner());
        if fragments.len() >= CACHED_FRAGMENTS && !fragments.contains_key(&view) {
            fragments.retain(|_, kept| kept.made.elapsed() < events::TICK);
        }
        if fragments.len() < CACHED_FRAGMENTS || fragments.contains_key(&view) {
            fragments.insert(view, fragment);
        }
    }
}

/// The Control API's answer when no dashboard is served.
pub fn not_served() -> ControlResponse {
    ControlResponse::Error(ControlError::NoDashboard)
}
