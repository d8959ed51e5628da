//! The broker's state, at the bottom of its module graph: every handler reads it, and it imports
//! no handler.

use crate::config::BrokerConfig;
use crate::metrics::Metrics;
use crate::rounds::Rounds;
use crate::runs::ActiveRuns;
use crate::sessions::Sessions;
use crate::store::Store;
use std::sync::Arc;

/// State shared by every connection task and every run.
pub struct Shared {
    /// What a restart reads: the registry, runs, logs, artifacts, checkpoints.
    pub store: Arc<Store>,
    /// Live node connections.
    pub sessions: Sessions,
    /// Settings.
    pub config: BrokerConfig,
    /// Runs whose server app is executing.
    pub runs: ActiveRuns,
    /// Rounds in flight: instructions, queues, contents, reply routes (in memory).
    pub rounds: Arc<Rounds>,
    /// Server apps by name.
    pub apps: model::apps::ServerApps,
    /// Counters for the metrics endpoint.
    pub metrics: Metrics,
    /// Where server app programs connect.
    pub serverappio: Arc<crate::serverappio::ServerAppIo>,
    /// Bundles being sent to nodes: their slots and shared copies.
    pub bundle_sender: crate::bundle_sender::BundleSender,
    /// Where Flower's `flwr-serverapp` processes connect.
    pub flower: crate::flower_api::FlowerRuntime,
    /// The operators' dashboard, when served.
    pub dashboard: Option<Arc<crate::dashboard::Dashboard>>,
    /// Virtual federations, on a SuperLink started with `--simulation`.
    pub simulations: Option<crate::simulation::Simulations>,
}
