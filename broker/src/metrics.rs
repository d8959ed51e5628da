//! A Prometheus endpoint (`--metrics-address`, off by default): nodes by status, runs by status,
//! queued instructions, bytes in and out, handshake failures by reason, replies by fate, round
//! durations.
//! Plain HTTP/1.1 on its own address: it exposes counts, never keys, ids or names.

use crate::server::Shared;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wire::control::{NodeStatus, RunStatus};

/// Upper bounds (seconds) of the round-duration histogram buckets.
const ROUND_BUCKETS: [f64; 10] = [0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

/// Counters the broker updates as it works.
#[derive(Default)]
pub struct Metrics {
    /// Failed authentications by reason.
    handshake_failures: Mutex<BTreeMap<&'static str, u64>>,
    /// Replies received, by what became of them (stored, duplicate, rejected).
    replies: Mutex<BTreeMap<&'static str, u64>>,
    /// UDP bytes received on connections that have closed.
    closed_bytes_in: AtomicU64,
    /// UDP bytes sent on connections that have closed.
    closed_bytes_out: AtomicU64,
    /// Round (instruction fan-out to last reply) durations: bucket counts, count, sum.
    rounds: Mutex<(Vec<u64>, u64, f64)>,
}

impl Metrics {
    /// Counts a failed authentication.
    pub fn handshake_failed(&self, reason: &'static str) {
        bump(&self.handshake_failures, reason);
    }

    /// Counts a received reply by its fate: `stored`, `duplicate` or `rejected`.
    pub fn reply_received(&self, fate: &'static str) {
        bump(&self.replies, fate);
    }

    /// How many replies met `fate` so far.
    pub fn replies(&self, fate: &str) -> u64 {
        let replies = self.replies.lock().unwrap_or_else(|p| p.into_inner());
        replies.get(fate).copied().unwrap_or(0)
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
        let seconds = duration.as_secs_f64();
        let mut rounds = self.rounds.lock().unwrap_or_else(|p| p.into_inner());
        if rounds.0.is_empty() {
            rounds.0 = vec![0; ROUND_BUCKETS.len()];
        }
        for (bucket, bound) in rounds.0.iter_mut().zip(ROUND_BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        rounds.1 += 1;
        rounds.2 += seconds;
    }
}

fn bump(counters: &Mutex<BTreeMap<&'static str, u64>>, key: &'static str) {
    *counters
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(key)
        .or_insert(0) += 1;
}

/// A counter family with one label, one line per key.
fn write_counters(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    counters: &Mutex<BTreeMap<&'static str, u64>>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (key, count) in counters.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        let _ = writeln!(out, "{name}{{{label}=\"{key}\"}} {count}");
    }
}

/// The exposition text.
pub fn render(shared: &Shared) -> String {
    let mut out = String::new();
    let nodes = shared.store.list_nodes().unwrap_or_default();
    let _ = writeln!(
        out,
        "# HELP flwr_nodes SuperNodes in the registry by status.\n# TYPE flwr_nodes gauge"
    );
    for status in [
        NodeStatus::Registered,
        NodeStatus::Online,
        NodeStatus::Offline,
        NodeStatus::Unregistered,
    ] {
        let count = nodes.iter().filter(|n| n.status == status).count();
        let _ = writeln!(out, "flwr_nodes{{status=\"{}\"}} {count}", status.as_str());
    }
    let runs = shared.store.list_runs().unwrap_or_default();
    let _ = writeln!(
        out,
        "# HELP flwr_runs Runs by status.\n# TYPE flwr_runs gauge"
    );
    for status in [
        RunStatus::Pending,
        RunStatus::Starting,
        RunStatus::Running,
        RunStatus::Completed,
        RunStatus::Failed,
        RunStatus::Stopped,
    ] {
        let count = runs.iter().filter(|r| r.status == status).count();
        let _ = writeln!(out, "flwr_runs{{status=\"{}\"}} {count}", status.as_str());
    }
    let queued: usize = nodes
        .iter()
        .map(|n| {
            shared
                .store
                .queued_for(n.node_id)
                .map(|q| q.len())
                .unwrap_or(0)
        })
        .sum();
    let _ = writeln!(
        out,
        "# HELP flwr_queued_instructions Instructions waiting for delivery.\n# TYPE flwr_queued_instructions gauge\nflwr_queued_instructions {queued}"
    );
    let (live_in, live_out) = shared.sessions.traffic();
    let metrics = &shared.metrics;
    let _ = writeln!(
        out,
        "# HELP flwr_bytes_received_total UDP bytes received on Fleet connections.\n# TYPE flwr_bytes_received_total counter\nflwr_bytes_received_total {}",
        metrics.closed_bytes_in.load(Ordering::Relaxed) + live_in
    );
    let _ = writeln!(
        out,
        "# HELP flwr_bytes_sent_total UDP bytes sent on Fleet connections.\n# TYPE flwr_bytes_sent_total counter\nflwr_bytes_sent_total {}",
        metrics.closed_bytes_out.load(Ordering::Relaxed) + live_out
    );
    write_counters(
        &mut out,
        "flwr_handshake_failures_total",
        "Refused authentications by reason.",
        "reason",
        &metrics.handshake_failures,
    );
    write_counters(
        &mut out,
        "flwr_replies_total",
        "Replies received, by fate: stored, duplicate (already answered, for instance by a stale round's stand-in) or rejected.",
        "fate",
        &metrics.replies,
    );
    let rounds = metrics
        .rounds
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let _ = writeln!(
        out,
        "# HELP flwr_round_duration_seconds Time from sending a round's instructions to its last reply.\n# TYPE flwr_round_duration_seconds histogram"
    );
    for (i, bound) in ROUND_BUCKETS.iter().enumerate() {
        let _ = writeln!(
            out,
            "flwr_round_duration_seconds_bucket{{le=\"{bound}\"}} {}",
            rounds.0.get(i).copied().unwrap_or(0)
        );
    }
    let _ = writeln!(
        out,
        "flwr_round_duration_seconds_bucket{{le=\"+Inf\"}} {}",
        rounds.1
    );
    let _ = writeln!(out, "flwr_round_duration_seconds_sum {}", rounds.2);
    let _ = writeln!(out, "flwr_round_duration_seconds_count {}", rounds.1);
    out
}

/// Most scrapes served at once; more connections are closed unanswered.
const MAX_SCRAPES: usize = 16;

/// How long a rendered page is served again instead of reading the store anew.
const RENDER_CACHE: Duration = Duration::from_secs(1);

/// The last rendered page, so a burst of scrapes reads the store once.
#[derive(Default)]
struct RenderCache {
    page: std::sync::Mutex<Option<(std::time::Instant, std::sync::Arc<String>)>>,
}

impl RenderCache {
    fn get(&self, shared: &Shared) -> std::sync::Arc<String> {
        let mut page = self.page.lock().unwrap_or_else(|p| p.into_inner());
        match &*page {
            Some((at, text)) if at.elapsed() < RENDER_CACHE => text.clone(),
            _ => {
                let text = std::sync::Arc::new(render(shared));
                *page = Some((std::time::Instant::now(), text.clone()));
                text
            }
        }
    }
}

/// Answers `GET /metrics` until shutdown: at most [`MAX_SCRAPES`] at once, the page rendered at
/// most once per [`RENDER_CACHE`] and off the async workers (it reads the store).
pub async fn serve(
    listener: TcpListener,
    shared: std::sync::Arc<Shared>,
    shutdown: CancellationToken,
) {
    let scrapes = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    let cache = std::sync::Arc::new(RenderCache::default());
    loop {
        let (mut stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, say: back off instead of spinning.
                    tracing::warn!(%error, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = scrapes.clone().try_acquire_owned() else {
            continue;
        };
        let (shared, cache) = (shared.clone(), cache.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let mut request = Vec::new();
            let mut buffer = [0u8; 1024];
            // A bounded read of a bounded request: this port is unauthenticated.
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let line =
                String::from_utf8_lossy(request.split(|&b| b == b'\n').next().unwrap_or_default())
                    .into_owned();
            let (status, body) = if line.starts_with("GET /metrics ") || line.starts_with("GET / ")
            {
                let page = tokio::task::spawn_blocking(move || cache.get(&shared)).await;
                match page {
                    Ok(page) => ("200 OK", page.to_string()),
                    Err(_) => (
                        "500 Internal Server Error",
                        "rendering failed\n".to_string(),
                    ),
                }
            } else {
                ("404 Not Found", "not found; try /metrics\n".to_string())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}
