//! The Prometheus endpoint (`--metrics-address`, off by default), in OpenMetrics text:
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `flwr_nodes` | gauge | `status`: registered, online, offline, unregistered |
//! | `flwr_runs` | gauge | `status`: pending, starting, running, completed, failed, stopped |
//! | `flwr_queued_instructions` | gauge | |
//! | `flwr_bytes_received_total`, `flwr_bytes_sent_total` | counter | (UDP bytes on Fleet connections) |
//! | `flwr_handshake_failures_total` | counter | `reason` |
//! | `flwr_replies_total` | counter | `fate`: stored, duplicate, rejected |
//! | `flwr_round_duration_seconds` | histogram | |
//!
//! Counters and the histogram are updated as things happen; the node and run gauges read counts the
//! store keeps as it commits (see [`crate::store::tally`]), and the queue gauge the rounds in
//! flight, so a scrape reads no registry. The byte
//! counters add up the live connections' statistics. Plain HTTP on its own address: it exposes
//! counts, never keys, ids or names.

use crate::rounds::Rounds;
use crate::sessions::Sessions;
use crate::store::Store;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wire::control::{NodeStatus, RunStatus};

/// Upper bounds (seconds) of the round-duration histogram buckets.
const ROUND_BUCKETS: [f64; 10] = [0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

/// The OpenMetrics content type the page is served with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A `status` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

/// A `reason` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// A `fate` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FateLabel {
    fate: &'static str,
}

/// The broker's metrics, registered once.
pub struct Metrics {
    registry: Registry,
    nodes: Family<StatusLabel, Gauge>,
    runs: Family<StatusLabel, Gauge>,
    queued: Gauge,
    bytes_received: Counter,
    bytes_sent: Counter,
    handshake_failures: Family<ReasonLabel, Counter>,
    replies: Family<FateLabel, Counter>,
    bundle_refusals: Counter,
    rounds: Histogram,
    /// UDP bytes received on connections that have closed.
    closed_bytes_in: AtomicU64,
    /// UDP bytes sent on connections that have closed.
    closed_bytes_out: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let nodes = Family::<StatusLabel, Gauge>::default();
        registry.register(
            "flwr_nodes",
            "SuperNodes in the registry by status",
            nodes.clone(),
        );
        let runs = Family::<StatusLabel, Gauge>::default();
        registry.register("flwr_runs", "Runs by status", runs.clone());
        let queued = Gauge::default();
        registry.register(
            "flwr_queued_instructions",
            "Instructions waiting for delivery",
            queued.clone(),
        );
        let bytes_received = Counter::default();
        registry.register(
            "flwr_bytes_received",
            "UDP bytes received on Fleet connections",
            bytes_received.clone(),
        );
        let bytes_sent = Counter::default();
        registry.register(
            "flwr_bytes_sent",
            "UDP bytes sent on Fleet connections",
            bytes_sent.clone(),
        );
        let handshake_failures = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "flwr_handshake_failures",
            "Refused authentications by reason",
            handshake_failures.clone(),
        );
        let replies = Family::<FateLabel, Counter>::default();
        registry.register(
            "flwr_replies",
            "Replies received, by fate: stored, duplicate (already answered, for instance by a \
             stale round's stand-in) or rejected",
            replies.clone(),
        );
        let bundle_refusals = Counter::default();
        registry.register(
            "flwr_bundle_refusals",
            "Bundle fetches refused to nodes (no instruction that uses the bundle, a fetch of it \
             going already, or not stored)",
            bundle_refusals.clone(),
        );
        let rounds = Histogram::new(ROUND_BUCKETS);
        registry.register(
            "flwr_round_duration_seconds",
            "Time from sending a round's instructions to its last reply",
            rounds.clone(),
        );
        Metrics {
            registry,
            nodes,
            runs,
            queued,
            bytes_received,
            bytes_sent,
            handshake_failures,
            replies,
            bundle_refusals,
            rounds,
            closed_bytes_in: AtomicU64::new(0),
            closed_bytes_out: AtomicU64::new(0),
        }
    }
}

/// A count as a gauge value, saturating rather than wrapping.
fn gauge_value(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

impl Metrics {
    /// Counts a failed authentication.
    pub fn handshake_failed(&self, reason: &'static str) {
        self.handshake_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts a received reply by its fate: `stored`, `duplicate` or `rejected`.
    pub fn reply_received(&self, fate: &'static str) {
        self.replies.get_or_create(&FateLabel { fate }).inc();
    }

    /// Counts a bundle fetch refused to a node.
    pub fn bundle_refused(&self) {
        self.bundle_refusals.inc();
    }

    /// How many replies met `fate` so far.
    pub fn replies(&self, fate: &'static str) -> u64 {
        self.replies.get_or_create(&FateLabel { fate }).get()
    }

    /// Adds a closed connection's traffic.
    pub fn connection_closed(&self, connection: &quinn::Connection) {
        let stats = connection.stats();
        self.closed_bytes_in
            .fetch_add(stats.udp_rx.bytes, Ordering::Relaxed);
        self.closed_bytes_out
            .fetch_add(stats.udp_tx.bytes, Ordering::Relaxed);
    }

    /// Records one round's duration.
    pub fn round_finished(&self, duration: Duration) {
        self.rounds.observe(duration.as_secs_f64());
    }

    /// The exposition text, the gauges brought up to date first.
    pub fn render(&self, store: &Store, sessions: &Sessions, rounds: &Rounds) -> String {
        let tallies = store.tallies();
        for status in [
            NodeStatus::Registered,
            NodeStatus::Online,
            NodeStatus::Offline,
            NodeStatus::Unregistered,
        ] {
            self.nodes
                .get_or_create(&StatusLabel {
                    status: status.as_str(),
                })
                .set(gauge_value(tallies.nodes.get(status)));
        }
        for status in [
            RunStatus::Pending,
            RunStatus::Starting,
            RunStatus::Running,
            RunStatus::Completed,
            RunStatus::Failed,
            RunStatus::Stopped,
        ] {
            self.runs
                .get_or_create(&StatusLabel {
                    status: status.as_str(),
                })
                .set(gauge_value(tallies.runs.get(status)));
        }
        self.queued.set(gauge_value(rounds.queued_total() as u64));
        // Live connections' traffic so far, plus what closed ones carried; a counter only grows.
        let (live_in, live_out) = sessions.traffic();
        let total_in = self.closed_bytes_in.load(Ordering::Relaxed) + live_in;
        let total_out = self.closed_bytes_out.load(Ordering::Relaxed) + live_out;
        self.bytes_received
            .inner()
            .fetch_max(total_in, Ordering::Relaxed);
        self.bytes_sent
            .inner()
            .fetch_max(total_out, Ordering::Relaxed);
        let mut page = String::new();
        if prometheus_client::encoding::text::encode(&mut page, &self.registry).is_err() {
            page.clear();
        }
        page
    }
}

/// Makes the page's text on demand.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Answers `GET /metrics` with what `render` makes, until shutdown (see [`ops::http`] for the
/// server's bounds).
pub async fn serve(listener: TcpListener, render: Render, shutdown: CancellationToken) {
    let handler: ops::http::Handler = Arc::new(move |path: &str| {
        let render = render.clone();
        let wanted = matches!(path, "/metrics" | "/");
        Box::pin(async move {
            if !wanted {
                return ops::http::Page::not_found(&["/metrics"]);
            }
            // Reads the store (a short read transaction): off the async workers.
            match tokio::task::spawn_blocking(move || render()).await {
                Ok(body) => ops::http::Page {
                    status: ops::http::StatusCode::OK,
                    content_type: CONTENT_TYPE,
                    body,
                },
                Err(_) => ops::http::Page {
                    status: ops::http::StatusCode::INTERNAL_SERVER_ERROR,
                    content_type: "text/plain; charset=utf-8",
                    body: "rendering failed\n".into(),
                },
            }
        })
    });
    ops::http::serve(listener, handler, shutdown).await;
}
