//! Simulation: a SuperLink started with `--simulation` runs each run on a virtual federation it
//! starts for that run, as Flower's local simulation SuperLink does, without Ray. The virtual
//! SuperNodes are one `flower-supernode --virtual-nodes N` process: each node has its own key
//! (derived from a seed kept here, so node `i` has the same id in every simulation) and its own
//! authenticated session, so the rounds, the Grid and the run path are the deployment ones.
//!
//! Simulations run one at a time: each has the machine's workers to itself, and the nodes online
//! are exactly its own. The federation is up before the server app starts, and gone (every
//! session closed) before the next simulation's starts.

use crate::state::Shared;
use ops::app_process::{AppProcess, Ended, Output};
use rustls_pki_types::CertificateDer;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use wire::RunId;
use wire::control::Simulation;

/// The program that hosts virtual SuperNodes.
pub const SUPERNODE: &str = "flower-supernode";

/// How long the virtual nodes have to come online: this, plus [`ONLINE_PATIENCE_PER_NODE`] each.
const ONLINE_PATIENCE: Duration = Duration::from_secs(60);

/// Each virtual node's share of the time to come online (a handshake and a key, in turn).
const ONLINE_PATIENCE_PER_NODE: Duration = Duration::from_millis(50);

/// How long the virtual nodes have to say goodbye once asked to stop.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How long the virtual nodes try to reach a SuperLink that went away before they give up: they
/// must not outlive a SuperLink that crashed.
const ORPHAN_PATIENCE: Duration = Duration::from_secs(30);

/// Lines of the host's output kept to explain its end.
const KEPT_LINES: usize = 20;

/// How `--simulation` runs its virtual federations.
#[derive(Debug, Clone)]
pub struct SimulationConfig {
    /// `flower-supernode`, which hosts the virtual nodes.
    pub supernode: PathBuf,
    /// Where the virtual nodes' seed, this SuperLink's certificate for them and their apps are
    /// kept: a private directory.
    pub dir: PathBuf,
    /// The certificates the virtual nodes verify this SuperLink with.
    pub roots: Vec<CertificateDer<'static>>,
    /// Further flags for the host (`--flwr-clientapp`, `--backend`).
    pub node_args: Vec<OsString>,
}

/// The keys of the virtual SuperNodes up now: on a simulation SuperLink, the only keys the Fleet
/// API admits.
#[derive(Debug, Default)]
pub struct VirtualKeys {
    /// Their SubjectPublicKeyInfo DER.
    keys: std::sync::RwLock<std::collections::HashSet<Vec<u8>>>,
}

impl VirtualKeys {
    /// Whether `key` is one of the virtual SuperNodes' up now.
    pub fn admits(&self, key: &certs::PublicKey) -> bool {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        keys.contains(&key.to_spki_der())
    }

    fn set(&self, keys: std::collections::HashSet<Vec<u8>>) {
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
    }
}

/// The SuperLink's simulations: what they are started with, and the turn they take.
pub struct Simulations {
    config: SimulationConfig,
    /// This SuperLink's Fleet API, as the virtual nodes reach it.
    fleet: SocketAddr,
    /// The virtual nodes' key seed.
    seed: PathBuf,
    /// `config.roots`, as a file.
    roots: PathBuf,
    /// Held by the simulation whose federation is up.
    turn: tokio::sync::Mutex<()>,
    /// The keys the Fleet API admits.
    keys: Arc<VirtualKeys>,
}

impl Simulations {
    /// Prepares `config.dir`: a private directory holding the virtual nodes' seed (made once,
    /// kept for later simulations) and the certificates they verify this SuperLink with. `fleet`
    /// is the Fleet API's bound address.
    pub fn prepare(
        config: SimulationConfig,
        fleet: SocketAddr,
        keys: Arc<VirtualKeys>,
    ) -> std::io::Result<Self> {
        ops::private_dir::create_private_dir(&config.dir).map_err(std::io::Error::other)?;
        let seed = config.dir.join("virtual-nodes.seed");
        if !seed.exists() {
            let bytes: [u8; 32] = rand::random();
            certs::files::write_file(&seed, &bytes, certs::files::Secrecy::Private)
                .map_err(std::io::Error::other)?;
        }
        let roots = config.dir.join("superlink.pem");
        std::fs::write(&roots, certs::files::certificates_pem(&config.roots))?;
        let loopback: std::net::IpAddr = if fleet.is_ipv6() {
            std::net::Ipv6Addr::LOCALHOST.into()
        } else {
            std::net::Ipv4Addr::LOCALHOST.into()
        };
        let fleet = if fleet.ip().is_unspecified() {
            SocketAddr::new(loopback, fleet.port())
        } else {
            fleet
        };
        Ok(Simulations {
            config,
            fleet,
            seed,
            roots,
            turn: tokio::sync::Mutex::new(()),
            keys,
        })
    }

    /// The public keys of virtual nodes `0..nodes`, as the host derives them from the seed.
    async fn derive_keys(&self, nodes: u32) -> Result<std::collections::HashSet<Vec<u8>>, String> {
        let seed = std::fs::read(&self.seed)
            .map_err(|e| format!("cannot read {}: {e}", self.seed.display()))?;
        tokio::task::spawn_blocking(move || {
            (0..nodes)
                .map(|index| {
                    certs::IdentityKey::derived(&seed, u64::from(index))
                        .public_key()
                        .to_spki_der()
                })
                .collect()
        })
        .await
        .map_err(|e| format!("deriving the virtual nodes' keys failed: {e}"))
    }

    /// Starts run `run_id`'s virtual federation once the previous simulation's is gone, and
    /// waits until all its nodes are online. Progress goes to the run's log. An error says why
    /// the federation could not come up (or that `cancel` fired).
    pub async fn start(
        &self,
        shared: &Arc<Shared>,
        run_id: RunId,
        simulation: Simulation,
        cancel: &CancellationToken,
    ) -> Result<VirtualFederation<'_>, String> {
        simulation.check()?;
        let turn = match self.turn.try_lock() {
            Ok(turn) => turn,
            Err(_) => {
                crate::runs::runner::log(
                    shared,
                    run_id,
                    "Waiting for the simulation before this one to finish",
                );
                tokio::select! {
                    turn = self.turn.lock() => turn,
                    () = cancel.cancelled() => return Err("run stopped".into()),
                }
            }
        };
        let nodes = simulation.num_supernodes;
        self.keys.set(self.derive_keys(nodes).await?);
        crate::runs::runner::log(
            shared,
            run_id,
            &format!(
                "Starting {nodes} virtual SuperNodes, {} client apps at once",
                simulation.workers
            ),
        );
        let mut command = tokio::process::Command::new(&self.config.supernode);
        command
            .arg("--superlink")
            .arg(self.fleet.to_string())
            .arg("--root-certificates")
            .arg(&self.roots)
            .arg("--virtual-nodes")
            .arg(nodes.to_string())
            .arg("--virtual-node-seed")
            .arg(&self.seed)
            .arg("--max-workers")
            .arg(simulation.workers.to_string())
            .args(["--isolation", "in-process"])
            .args(["--clientappio-api-address", "127.0.0.1:0"])
            .arg("--apps-dir")
            .arg(self.config.dir.join("apps"))
            .arg("--max-wait-time")
            .arg(ORPHAN_PATIENCE.as_secs().to_string())
            .args(&self.config.node_args);
        let process = AppProcess::spawn(&mut command, HOST_OUTPUT).map_err(|e| {
            format!(
                "cannot start {} to host the virtual SuperNodes: {e}",
                self.config.supernode.display()
            )
        });
        let mut federation = VirtualFederation {
            process: match process {
                Ok(process) => process,
                Err(reason) => {
                    self.keys.set(Default::default());
                    return Err(reason);
                }
            },
            keys: &self.keys,
            _turn: turn,
        };
        let patience = ONLINE_PATIENCE + ONLINE_PATIENCE_PER_NODE * nodes;
        let online = all_online(shared, run_id, nodes);
        let interrupt = async {
            tokio::select! {
                () = cancel.cancelled() => "run stopped".to_string(),
                () = tokio::time::sleep(patience) => format!(
                    "the virtual SuperNodes did not all come online within {patience:?}"
                ),
            }
        };
        let outcome = federation
            .process
            .until(online, interrupt, Duration::ZERO)
            .await;
        let failure = match outcome {
            Ended::Reported(()) => None,
            Ended::Interrupted(reason) => Some(reason),
            Ended::Exited(status) => Some(
                federation
                    .process
                    .crash_report(
                        status,
                        "the virtual SuperNodes' process",
                        "before all were online",
                    )
                    .await,
            ),
        };
        if let Some(reason) = failure {
            federation.end(shared).await;
            return Err(reason);
        }
        crate::runs::runner::log(
            shared,
            run_id,
            &format!("{nodes} virtual SuperNodes online"),
        );
        Ok(federation)
    }
}

/// Resolves once `nodes` nodes are online, logging progress to run `run_id`'s log now and then.
async fn all_online(shared: &Shared, run_id: RunId, nodes: u32) {
    let mut ticks = tokio::time::interval(Duration::from_millis(100));
    let mut last_logged = tokio::time::Instant::now();
    let mut logged = 0;
    loop {
        ticks.tick().await;
        let online = shared.sessions.online().len();
        if online >= nodes as usize {
            return;
        }
        if online != logged && last_logged.elapsed() >= Duration::from_secs(2) {
            crate::runs::runner::log(
                shared,
                run_id,
                &format!("Virtual SuperNodes online: {online}/{nodes}"),
            );
            logged = online;
            last_logged = tokio::time::Instant::now();
        }
    }
}

/// A simulation's virtual SuperNodes, up. [`VirtualFederation::end`] stops them; dropped without
/// it, their process group is killed.
pub struct VirtualFederation<'a> {
    process: AppProcess,
    /// Emptied when the federation ends: its nodes cannot come back.
    keys: &'a VirtualKeys,
    _turn: tokio::sync::MutexGuard<'a, ()>,
}

impl VirtualFederation<'_> {
    /// Resolves if the virtual nodes' process exits before the federation is ended, saying how.
    pub async fn exited(&mut self) -> String {
        let status = self.process.exited().await;
        self.process
            .crash_report(
                status,
                "the virtual SuperNodes' process",
                "before the run ended",
            )
            .await
    }

    /// Stops the virtual nodes (they say goodbye), killing what is left after a grace, and waits
    /// until the SuperLink holds none of their sessions: the next simulation starts with none.
    pub async fn end(mut self, shared: &Shared) {
        self.keys.set(Default::default());
        self.process.terminate();
        if self.process.exit_within(STOP_GRACE).await.is_none() {
            tracing::warn!("the virtual SuperNodes did not stop within {STOP_GRACE:?}; killed");
        }
        let gone = async {
            while !shared.sessions.online().is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let patience = shared.config.heartbeat_timeout + Duration::from_secs(1);
        if tokio::time::timeout(patience, gone).await.is_err() {
            tracing::warn!("sessions of the virtual SuperNodes outlived their process");
        }
    }
}

/// The host's output goes to the SuperLink's log.
const HOST_OUTPUT: Output = Output {
    on_line: host_line,
    kept_lines: KEPT_LINES,
    stdout: true,
};

fn host_line(line: String) -> Option<String> {
    tracing::debug!(target: "virtual_supernodes", "{line}");
    Some(line)
}
