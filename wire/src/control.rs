//! The Control API, spoken between the `flwr` CLI and the broker.
//!
//! The CLI opens one stream, runs the authentication handshake (or, on a broker without operator
//! keys, receives a welcome when it connects from loopback), then sends requests and reads one
//! response each. Variants are only ever appended.

use crate::handshake::{Api, Challenge, ClientStep, Domain, Proof, Refusal, ServerStep};
use crate::{BundleHash, ConfigRecord, NodeId, RunId};
use serde::{Deserialize, Serialize};

/// CLI to broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OperatorFrame {
    /// First frame of a connection.
    Hello {
        /// [`crate::handshake::PROTOCOL_VERSION`] of the CLI.
        version: u32,
    },
    /// Answer to the broker's challenge.
    Proof(Proof),
    /// A request, once welcomed.
    Request(ControlRequest),
}

/// Broker to CLI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControlFrame {
    /// The challenge to sign.
    Challenge(Challenge),
    /// Authenticated as `operator`.
    Welcome {
        /// The operator's name (the comment of their public key line, or `local`).
        operator: String,
    },
    /// Authentication failed; the connection closes after this frame.
    Refused(Refusal),
    /// Answer to the last request.
    Response(ControlResponse),
}

/// The Control API's handshake frames; the welcome carries the operator's name.
#[derive(Debug)]
pub enum Control {}

impl Api for Control {
    const DOMAIN: Domain = Domain::Control;
    type ClientFrame = OperatorFrame;
    type ServerFrame = ControlFrame;
    type Welcome = String;

    fn hello(version: u32) -> OperatorFrame {
        OperatorFrame::Hello { version }
    }

    fn proof(proof: Proof) -> OperatorFrame {
        OperatorFrame::Proof(proof)
    }

    fn challenge(challenge: Challenge) -> ControlFrame {
        ControlFrame::Challenge(challenge)
    }

    fn welcome(operator: String) -> ControlFrame {
        ControlFrame::Welcome { operator }
    }

    fn refused(refusal: Refusal) -> ControlFrame {
        ControlFrame::Refused(refusal)
    }

    fn client_step(frame: OperatorFrame) -> ClientStep {
        match frame {
            OperatorFrame::Hello { version } => ClientStep::Hello { version },
            OperatorFrame::Proof(proof) => ClientStep::Proof(proof),
            OperatorFrame::Request(_) => ClientStep::Other,
        }
    }

    fn server_step(frame: ControlFrame) -> ServerStep<String> {
        match frame {
            ControlFrame::Challenge(challenge) => ServerStep::Challenge(challenge),
            ControlFrame::Welcome { operator } => ServerStep::Welcome(operator),
            ControlFrame::Refused(refusal) => ServerStep::Refused(refusal),
            other => ServerStep::Other(format!("{other:?}")),
        }
    }
}

/// What an operator asks of the broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControlRequest {
    /// Register a node's public key (an OpenSSH public key line, or PEM).
    RegisterNode {
        /// The key file's text.
        public_key: String,
    },
    /// Unregister a node; its connection closes and its key can never be used again.
    UnregisterNode {
        /// The node to remove.
        node_id: NodeId,
    },
    /// List nodes.
    ListNodes {
        /// Include unregistered nodes.
        include_unregistered: bool,
    },
    /// Start a run of an app.
    StartRun {
        /// App name (`[app] name` of flwr.toml).
        app_name: String,
        /// App version.
        app_version: String,
        /// The run config: `[app.config]` with overrides fused in.
        config: ConfigRecord,
    },
    /// List runs, or one run.
    ListRuns {
        /// Only this run.
        run_id: Option<RunId>,
    },
    /// Stop a run.
    StopRun {
        /// The run.
        run_id: RunId,
    },
    /// A run's log from line `after` on; with `follow`, new lines keep coming as
    /// [`ControlResponse::Log`] frames until the run finishes.
    Log {
        /// The run.
        run_id: RunId,
        /// Index of the first line wanted.
        after: u64,
        /// Keep streaming until the run finishes.
        follow: bool,
    },
    /// The artifacts a run stored (final model, metrics, plot).
    PullArtifacts {
        /// The run.
        run_id: RunId,
    },
    /// Offers an app bundle and its signatures: the broker answers
    /// [`ControlResponse::BundleWanted`], having stored the signatures when it has the bundle. When it is
    /// wanted, exactly `size` raw bytes of the bundle follow on the stream, and the broker
    /// answers [`ControlResponse::BundleStored`] once it has checked and stored them.
    OfferBundle {
        /// The bundle's SHA-256.
        hash: BundleHash,
        /// Its length in bytes.
        size: u64,
        /// Publishers' signatures of it (`flwr app sign`), kept with it (at most
        /// [`crate::bundle::MAX_SIGNATURES`]); each must verify.
        signatures: Vec<crate::bundle::BundleSignature>,
    },
    /// Start a run of a stored bundle; its name, version and components come from the bundle's
    /// own `flwr.toml`.
    StartBundledRun {
        /// The bundle.
        bundle: BundleHash,
        /// The run config: `[app.config]` with overrides fused in.
        config: ConfigRecord,
    },
    /// Where the SuperLink's dashboard is, and, when operators sign in with keys, a one-time
    /// login link for this operator's browser.
    DashboardLink,
    /// The protocol each online node is connected over.
    OnlineProtocols,
    /// Start a run on virtual SuperNodes the SuperLink hosts for it (a SuperLink started with
    /// `--simulation` only).
    StartSimulation {
        /// The app and its run config.
        run: SimulatedRun,
        /// The virtual federation.
        simulation: Simulation,
    },
}

/// What a simulation runs: an app the SuperLink has, or a stored bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SimulatedRun {
    /// A built-in app, as [`ControlRequest::StartRun`] names it.
    App {
        /// App name.
        app_name: String,
        /// App version.
        app_version: String,
        /// The run config.
        config: ConfigRecord,
    },
    /// A stored bundle, as [`ControlRequest::StartBundledRun`] names it.
    Bundle {
        /// The bundle.
        bundle: BundleHash,
        /// The run config.
        config: ConfigRecord,
    },
}

/// A simulation's virtual federation: Flower's `options.*` of a simulation federation, as they
/// mean something here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Simulation {
    /// Virtual SuperNodes (`options.num-supernodes`), 1 to [`Simulation::MAX_NODES`].
    pub num_supernodes: u32,
    /// Client apps running at once, 1 to [`Simulation::MAX_WORKERS`] (from
    /// `options.backend.client-resources.num-cpus` and `init-args.num-cpus`).
    pub workers: u32,
}

impl Simulation {
    /// Most virtual SuperNodes in one simulation: each is a session with its own key on both
    /// sides, under 200 KiB together, so 50,000 fit in under 10 GiB.
    pub const MAX_NODES: u32 = 50_000;

    /// Most workers.
    pub const MAX_WORKERS: u32 = 1024;

    /// Why these options cannot be simulated, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=Self::MAX_NODES).contains(&self.num_supernodes) {
            return Err(format!(
                "num-supernodes is {}: a simulation has 1 to {} virtual SuperNodes",
                self.num_supernodes,
                Self::MAX_NODES
            ));
        }
        if !(1..=Self::MAX_WORKERS).contains(&self.workers) {
            return Err(format!(
                "{} workers: a simulation runs 1 to {} client apps at once",
                self.workers,
                Self::MAX_WORKERS
            ));
        }
        Ok(())
    }
}

/// How a node is connected. Variants are only ever appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeProtocol {
    /// This project's Fleet API over QUIC (flower-rs's `flower-supernode`).
    Quic,
    /// Flower's Fleet API over HTTP (Flower's own `flower-supernode`, polling).
    FlowerHttp,
}

impl NodeProtocol {
    /// Its name in JSON: `quic` or `flower-http`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeProtocol::Quic => "quic",
            NodeProtocol::FlowerHttp => "flower-http",
        }
    }

    /// Its name for people: `QUIC` or `Flower HTTP`.
    pub fn label(self) -> &'static str {
        match self {
            NodeProtocol::Quic => "QUIC",
            NodeProtocol::FlowerHttp => "Flower HTTP",
        }
    }
}

/// Lifecycle of a run. Variants are only ever appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RunStatus {
    /// Accepted, not started.
    Pending,
    /// The server app is being set up.
    Starting,
    /// The server app is running.
    Running,
    /// Finished successfully.
    Completed,
    /// Finished with an error (see the run's details).
    Failed,
    /// Stopped by an operator.
    Stopped,
}

impl RunStatus {
    /// Flower's status string: `pending`, `running`, `finished:completed` ...
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Starting => "starting",
            RunStatus::Running => "running",
            RunStatus::Completed => "finished:completed",
            RunStatus::Failed => "finished:failed",
            RunStatus::Stopped => "finished:stopped",
        }
    }

    /// Whether the run is over.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Stopped
        )
    }
}

/// A run as the broker knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// The run id.
    pub run_id: RunId,
    /// App name.
    pub app_name: String,
    /// App version.
    pub app_version: String,
    /// The run config.
    pub config: ConfigRecord,
    /// Current status.
    pub status: RunStatus,
    /// Why it failed, or who stopped it.
    pub details: String,
    /// The operator who started it.
    pub owner: String,
    /// When it was accepted (ms since the Unix epoch, broker clock).
    pub pending_at_ms: u64,
    /// When the server app began setting up.
    pub starting_at_ms: Option<u64>,
    /// When the server app began running.
    pub running_at_ms: Option<u64>,
    /// When it finished.
    pub finished_at_ms: Option<u64>,
    /// The app's bundle; `None` for a built-in app started by name.
    pub bundle: Option<BundleHash>,
}

impl RunInfo {
    /// When the current status began.
    pub fn status_changed_at_ms(&self) -> u64 {
        self.finished_at_ms
            .or(self.running_at_ms)
            .or(self.starting_at_ms)
            .unwrap_or(self.pending_at_ms)
    }
}

/// One line of a run's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Position in the run's log, from 0.
    pub index: u64,
    /// When it was written (ms since the Unix epoch, broker clock).
    pub at_ms: u64,
    /// The text.
    pub text: String,
}

/// Registry status of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeStatus {
    /// Registered, never connected or not connected since the registry was created.
    Registered,
    /// Connected and authenticated.
    Online,
    /// Was online, connection gone.
    Offline,
    /// Removed by an operator; terminal.
    Unregistered,
}

impl NodeStatus {
    /// The lower-case name shown in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Registered => "registered",
            NodeStatus::Online => "online",
            NodeStatus::Offline => "offline",
            NodeStatus::Unregistered => "unregistered",
        }
    }
}

/// A node as the registry knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node id.
    pub node_id: NodeId,
    /// The operator who registered it (`automatic` for self-registered nodes).
    pub owner: String,
    /// Current status.
    pub status: NodeStatus,
    /// SHA-256 fingerprint of the public key, as `ssh-keygen -l` prints it.
    pub key_fingerprint: String,
    /// When it was registered (ms since the Unix epoch, broker clock).
    pub registered_at_ms: u64,
    /// When it last came online.
    pub online_at_ms: Option<u64>,
    /// When it last went offline.
    pub offline_at_ms: Option<u64>,
    /// When it was unregistered.
    pub unregistered_at_ms: Option<u64>,
    /// When the current status began.
    pub status_changed_at_ms: u64,
}

/// Why the broker refused a control request (Flower's messages where Flower has one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlError {
    /// The key is already registered, or was once (unregistered keys are never reused).
    KeyInUse,
    /// The key text is not a valid ECDSA public key.
    InvalidKey(String),
    /// No such node.
    UnknownNode(NodeId),
    /// The node exists but is owned by another operator.
    NotOwner(NodeId),
    /// The node was already unregistered.
    AlreadyUnregistered(NodeId),
    /// The broker failed internally (storage); nothing was changed.
    Internal(String),
    /// No such run.
    UnknownRun(RunId),
    /// The run already finished.
    RunFinished(RunId),
    /// The broker has no server app of this name.
    UnknownApp(String),
    /// The bundle cannot run, and why.
    InvalidBundle(String),
    /// The broker has no bundle with this hash.
    UnknownBundle(BundleHash),
    /// The run config cannot be a run's (a list where Flower's run config holds single values,
    /// a name beyond the bounds), and why.
    InvalidRunConfig(String),
    /// The SuperLink serves no dashboard (it starts with `--dashboard-address`).
    NoDashboard,
    /// A simulation asked of a SuperLink that runs deployments, or a deployment's run of a
    /// simulation SuperLink; or simulation options it cannot run, and why.
    Simulation(String),
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlError::KeyInUse => write!(f, "Public key already in use"),
            ControlError::InvalidKey(why) => write!(f, "Public key is not valid: {why}"),
            ControlError::UnknownNode(id) => write!(f, "Node ID {id} not found"),
            ControlError::NotOwner(id) => write!(f, "Node ID {id} belongs to another operator"),
            ControlError::AlreadyUnregistered(id) => {
                write!(f, "Node ID {id} is already unregistered")
            }
            ControlError::Internal(why) => write!(f, "SuperLink internal error: {why}"),
            ControlError::UnknownRun(id) => write!(f, "Run ID {id} not found"),
            ControlError::RunFinished(id) => write!(f, "Run ID {id} has already finished"),
            ControlError::UnknownApp(name) => write!(f, "The SuperLink has no app named {name:?}"),
            ControlError::InvalidBundle(why) => write!(f, "The app bundle cannot run: {why}"),
            ControlError::UnknownBundle(hash) => {
                write!(f, "The SuperLink has no app bundle {hash}")
            }
            ControlError::InvalidRunConfig(why) => write!(f, "The run config is not valid: {why}"),
            ControlError::NoDashboard => write!(
                f,
                "The SuperLink serves no dashboard: start it with --dashboard-address"
            ),
            ControlError::Simulation(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for ControlError {}

/// The broker's answer to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControlResponse {
    /// A node was registered.
    NodeRegistered {
        /// Its new id.
        node_id: NodeId,
    },
    /// A node was unregistered.
    NodeUnregistered {
        /// Its id.
        node_id: NodeId,
    },
    /// The node table.
    Nodes(Vec<NodeInfo>),
    /// The request failed.
    Error(ControlError),
    /// A run was accepted.
    RunStarted {
        /// Its id.
        run_id: RunId,
    },
    /// The run table.
    Runs(Vec<RunInfo>),
    /// A run was stopped.
    RunStopped {
        /// Its id.
        run_id: RunId,
    },
    /// Log lines; `finished` is set on the last frame of a followed log, once the run is over.
    Log {
        /// The lines, in order.
        lines: Vec<LogLine>,
        /// The run's final status, once it finished.
        finished: Option<RunStatus>,
    },
    /// A run's artifacts.
    Artifacts(Vec<Artifact>),
    /// Whether the broker wants the bundle offered ([`ControlRequest::OfferBundle`]): it does
    /// not when it stores one with that hash already.
    BundleWanted {
        /// Send the bytes.
        wanted: bool,
    },
    /// The offered bundle was checked and stored.
    BundleStored {
        /// Its hash.
        hash: BundleHash,
    },
    /// Where the dashboard listens, and how to get in.
    DashboardLink {
        /// The address it is bound to (an unspecified IP means: the host the Control API was
        /// reached at).
        address: std::net::SocketAddr,
        /// Whether it serves HTTPS (with the SuperLink's certificate).
        tls: bool,
        /// A one-time login token, when the dashboard asks for one (operator keys); the link is
        /// `/login?token=...`.
        token: Option<String>,
        /// Seconds the token stays valid.
        expires_in_seconds: u64,
    },
    /// The protocol of each online node, by id.
    OnlineProtocols(Vec<(NodeId, NodeProtocol)>),
}

/// A named file a run stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// File name (`model.safetensors`, `metrics.json`, `metrics.svg`, `metrics.png`).
    pub name: String,
    /// Contents.
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}
