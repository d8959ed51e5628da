//! A federation in this process for the transport and broker benches: a real broker (QUIC, TLS,
//! a redb file) and real node daemons, with a probe app pair that lets a bench drive rounds one at
//! a time and see when each node received its instruction.

use broker::config::{BrokerConfig, NodeAuth, OperatorAuth};
use broker::server::RunningBroker;
use broker::store::Store;
use e2e::RunningNode;
use flwr_sdk::app::{
    AppError, ClientApp, ClientContext, Grid, Instruction, ServerApp, ServerContext,
};
use node::settings::ServerTrust;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use wire::{Message, MessageBody, MessageType, NodeId, RecordDict};

/// The probe app's name in both registries.
pub const PROBE: &str = "bench-probe";

/// Why the federation could not be set up.
pub type SetupError = Box<dyn std::error::Error + Send + Sync>;

/// One round the bench asks the probe server app to run.
pub struct Round {
    /// Nodes to send to.
    pub nodes: Vec<NodeId>,
    /// What each node gets (shared: held once however many nodes).
    pub content: Arc<RecordDict>,
}

/// What a round measured.
pub struct RoundResult {
    /// From sending to the last reply.
    pub elapsed: Duration,
    /// Per node: from the moment the round was handed to the grid to the node's client app
    /// starting on the instruction.
    pub delivery: Vec<Duration>,
    /// Replies with content (the others were errors).
    pub replies: usize,
}

/// The server half: runs the rounds it is sent until the channel closes.
struct ProbeServer {
    rounds: Mutex<Option<mpsc::Receiver<Round>>>,
    results: mpsc::Sender<RoundResult>,
    receipts: Arc<Mutex<Vec<Instant>>>,
}

impl ServerApp for ProbeServer {
    fn run(&self, grid: &dyn Grid, _context: &ServerContext) -> Result<(), AppError> {
        let Some(rounds) = self
            .rounds
            .lock()
            .map_err(|_| AppError::new("poisoned"))?
            .take()
        else {
            return Err(AppError::new("the probe runs once"));
        };
        for round in rounds {
            let instructions = round
                .nodes
                .iter()
                .map(|&dst| Instruction {
                    dst,
                    message_type: MessageType::TRAIN,
                    group_id: "1".into(),
                    content: round.content.clone(),
                })
                .collect();
            if let Ok(mut receipts) = self.receipts.lock() {
                receipts.clear();
            }
            let mut replies = 0;
            let started = Instant::now();
            grid.send_and_fold(instructions, Duration::from_secs(600), &mut |reply| {
                if matches!(reply.body, MessageBody::Content(_)) {
                    replies += 1;
                }
            })?;
            let elapsed = started.elapsed();
            let delivery = self
                .receipts
                .lock()
                .map(|r| {
                    r.iter()
                        .map(|t| t.saturating_duration_since(started))
                        .collect()
                })
                .unwrap_or_default();
            if self
                .results
                .send(RoundResult {
                    elapsed,
                    delivery,
                    replies,
                })
                .is_err()
            {
                break;
            }
        }
        Ok(())
    }
}

/// The client half: notes when it started, and sends the content back (as a trained model would).
struct ProbeClient {
    receipts: Arc<Mutex<Vec<Instant>>>,
}

impl ClientApp for ProbeClient {
    fn handle(&self, message: &Message, _context: &ClientContext) -> Result<RecordDict, AppError> {
        if let Ok(mut receipts) = self.receipts.lock() {
            receipts.push(Instant::now());
        }
        match &message.body {
            MessageBody::Content(content) => Ok(content.clone()),
            MessageBody::Error(_) => Err(AppError::new("instruction without content")),
        }
    }
}

/// A broker, its nodes, and the probe run driving them.
pub struct Federation {
    /// Certificates and the database.
    _dir: tempfile::TempDir,
    /// The broker.
    pub broker: RunningBroker,
    /// The node daemons.
    nodes: Vec<RunningNode>,
    /// Online node ids.
    pub node_ids: Vec<NodeId>,
    /// Rounds to the probe.
    rounds: Option<mpsc::Sender<Round>>,
    /// Their results.
    results: mpsc::Receiver<RoundResult>,
}

impl Federation {
    /// Starts a broker on a fresh database and `nodes` node daemons, and waits until all are
    /// online and the probe run is running. Needs a multi-threaded runtime.
    pub async fn start(nodes: usize) -> Result<Federation, SetupError> {
        let dir = tempfile::tempdir()?;
        let paths = certs::generate::generate_certificates(&dir.path().join("certs"), &[], false)?;
        let chain = certs::load::load_certificates(&paths.server_cert)?;
        let key = certs::load::load_tls_private_key(&paths.server_key)?;
        let roots = certs::load::load_certificates(&paths.ca_cert)?;
        let receipts = Arc::new(Mutex::new(Vec::new()));
        let (round_tx, round_rx) = mpsc::channel();
        let (result_tx, result_rx) = mpsc::channel();
        let mut config =
            BrokerConfig::new(chain, key, NodeAuth::Automatic, OperatorAuth::LoopbackOnly);
        config.apps.add(
            PROBE,
            Arc::new(ProbeServer {
                rounds: Mutex::new(Some(round_rx)),
                results: result_tx,
                receipts: receipts.clone(),
            }),
        );
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let store = Store::open(&dir.path().join("state.redb"))?;
        let broker = broker::server::start(config, store, any, any, CancellationToken::new())?;

        let mut apps = model::apps::ClientApps::builtin();
        apps.add(PROBE, Arc::new(ProbeClient { receipts }));
        let mut running = Vec::new();
        for _ in 0..nodes {
            let settings =
                e2e::node_settings(broker.fleet_addr, ServerTrust::Roots(roots.clone()), None);
            running.push(RunningNode::start_with_apps(settings, apps.clone()));
        }
        let mut node_ids = Vec::new();
        for node in &mut running {
            node_ids.push(node.online_within(Duration::from_secs(120)).await);
        }
        broker::runs::runner::start(
            &broker.shared,
            "bench",
            PROBE.into(),
            "1.0.0".into(),
            wire::ConfigRecord::new(),
            None,
        )?;
        Ok(Federation {
            _dir: dir,
            broker,
            nodes: running,
            node_ids,
            rounds: Some(round_tx),
            results: result_rx,
        })
    }

    /// Runs one round through the probe; blocks until it is over.
    pub fn round(&self, round: Round) -> Result<RoundResult, SetupError> {
        self.rounds
            .as_ref()
            .ok_or("the probe run is over")?
            .send(round)
            .map_err(|_| "the probe run ended")?;
        Ok(self.results.recv()?)
    }

    /// Stops the nodes and the broker.
    pub async fn stop(mut self) {
        self.rounds = None;
        for node in self.nodes.drain(..) {
            node.shutdown.cancel();
            let _ = node.task.await;
        }
        self.broker.shutdown();
        self.broker.join().await;
    }
}

/// The value at quantile `q` (0..=1) of `samples`, sorted in place.
pub fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort();
    let index = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[index]
}
