//! The command line of `flower-supernode`, with Flower's flag names.

use crate::isolation::Isolation;
use certs::IdentityKey;
use clap::Parser;
use rustls_pki_types::CertificateDer;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use wire::ConfigRecord;

pub use ops::logging::LogFormat;

/// Where client apps run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IsolationMode {
    /// A `flwr-clientapp` process per instruction: a crashing app costs one error reply.
    Subprocess,
    /// On a thread of the node: faster to start, but an app that aborts takes the node down.
    InProcess,
    /// In `flwr-clientapp` processes you start and keep running
    /// (`flwr-clientapp --clientappio-api-address ADDR`), each taking the next waiting
    /// instruction. Any process that can reach the address can take instructions.
    Process,
}

/// Flower SuperNode: a long-running node that trains on its private data for the SuperLink.
#[derive(Debug, Parser)]
#[command(name = "flower-supernode", version, about)]
pub struct Args {
    /// SuperLink Fleet API address (host:port).
    #[arg(long, default_value = "127.0.0.1:9092", value_name = "HOST:PORT")]
    pub superlink: String,
    /// CA certificate(s) to verify the SuperLink with (PEM).
    #[arg(long, value_name = "FILE")]
    pub root_certificates: Option<PathBuf>,
    /// Development only: do not verify the SuperLink's certificate.
    #[arg(long)]
    pub insecure: bool,
    /// This node's ECDSA private key (OpenSSH or PEM). Without it, an ephemeral key is used, which only
    /// a SuperLink without --enable-supernode-auth accepts.
    #[arg(long, value_name = "FILE")]
    pub auth_supernode_private_key: Option<PathBuf>,
    /// Node configuration passed to apps, e.g. 'dataset-path="datasets/cifar10_part_1" k=3' (TOML values).
    #[arg(long, default_value = "", value_name = "CONFIG")]
    pub node_config: String,
    /// Address where the node serves its client app processes (port 0 picks a free one). Give each
    /// SuperNode on one machine its own.
    #[arg(long, default_value = "127.0.0.1:9094", value_name = "ADDR")]
    pub clientappio_api_address: SocketAddr,
    /// Let client app processes on other hosts connect to the ClientAppIo API (they still need a
    /// token). Off: only this host's processes get as far as showing one.
    #[arg(long)]
    pub clientappio_allow_remote: bool,
    /// Where client apps run.
    #[arg(long, value_enum, default_value_t = IsolationMode::Subprocess)]
    pub isolation: IsolationMode,
    /// The client app program for --isolation subprocess [default: flwr-clientapp beside this
    /// executable].
    #[arg(long, value_name = "FILE")]
    pub clientapp_program: Option<PathBuf>,
    /// Flower's `flwr-clientapp` (from `pip install 'flwr==1.42.*'`), which runs the ClientApps
    /// of Flower apps (FABs) [default: `flwr-clientapp` on PATH, other than this project's own].
    #[arg(long, value_name = "FILE")]
    pub flwr_clientapp: Option<PathBuf>,
    /// How many runs' Flower ClientApp processes may stay warm between their instructions (the
    /// FAB installed and the app imported once per run, not once per instruction); 0 starts a
    /// fresh `flwr-clientapp` for every instruction, as Flower's SuperNode does.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub flwr_clientapp_warm_runs: usize,
    /// Seconds a warm Flower ClientApp process may wait for its run's next instruction before
    /// it is ended.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    pub flwr_clientapp_idle_timeout: f64,
    /// Answer a Flower app's instructions with a native client app of the same model instead of
    /// its Python ClientApp: `PUBLISHER/NAME=APP` (the FAB's id, then a built-in app's name).
    /// Repeatable.
    #[arg(long = "native-clientapp", value_name = "FAB_ID=APP")]
    pub native_clientapps: Vec<String>,
    /// Where fetched app bundles are kept and unpacked [default: $FLWR_HOME/apps, else
    /// ~/.flwr/apps]. It must belong to the node's user and be writable by nobody else, and so
    /// must every directory above it (unless sticky, as /tmp is). Nodes of one user may share it.
    #[arg(long, value_name = "DIR")]
    pub apps_dir: Option<PathBuf>,
    /// Run only the apps this file lists: one per line, an app bundle's SHA-256 (as `flwr run`
    /// prints it) or a built-in app's name. Every other app gets an error reply and its program
    /// never starts. Without it, the node runs whatever its SuperLink sends.
    #[arg(long, value_name = "FILE")]
    pub trusted_apps: Option<PathBuf>,
    /// Give up after this many failed connection attempts in a row (default: never).
    #[arg(long, value_name = "N")]
    pub max_retries: Option<u32>,
    /// Give up after trying to (re)connect for this many seconds in a row (default: never).
    #[arg(long, value_name = "SECS")]
    pub max_wait_time: Option<f64>,
    /// Host this many virtual SuperNodes in this one process, as `flower-superlink --simulation`
    /// starts it for a simulation run: each its own session with the SuperLink and its own key
    /// (derived from --virtual-node-seed), with Flower's `partition-id` and `num-partitions` in
    /// its node config; their client apps share --max-workers workers.
    #[arg(long, value_name = "N", requires = "virtual_node_seed", value_parser = clap::value_parser!(u32).range(1..=MAX_VIRTUAL_NODES as i64))]
    pub virtual_nodes: Option<u32>,
    /// A private file whose bytes the virtual nodes' keys derive from: node i gets the same key
    /// (and so the same node id) in every simulation that uses this file.
    #[arg(long, value_name = "FILE", requires = "virtual_nodes")]
    pub virtual_node_seed: Option<PathBuf>,
    /// Most instructions whose client apps run at once; the rest wait, received and
    /// acknowledged [default: no bound; with --virtual-nodes, the number of cores].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_workers: Option<u32>,
    /// Kill a Flower ClientApp process whose resident memory passes this many MiB: its
    /// instruction gets an error reply saying so [default: no limit; with --virtual-nodes, 80%
    /// of this machine's memory shared among the --max-workers].
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(64..))]
    pub max_clientapp_memory: Option<u64>,
    /// Serve a health endpoint over plain HTTP on this address: `GET /health` answers `SERVING`
    /// (Flower serves gRPC health checking here; an HTTP probe is what orchestrators ask by
    /// default).
    #[arg(long, value_name = "ADDR")]
    pub health_server_address: Option<SocketAddr>,
    /// Training device and log format.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Log file and its rotation.
    #[command(flatten)]
    pub log: ops::logging::LogFileArgs,
    /// Flags of Flower's that have no effect here.
    #[command(flatten)]
    pub flower: ops::flower_flags::SuperNodeFlags,
}

/// Flags both node executables take (`flower-supernode` and the `flwr-clientapp` it starts).
#[derive(Debug, Clone, clap::Args)]
pub struct RuntimeArgs {
    /// Where to train: auto (a GPU through wgpu if one exists, else the CPU), wgpu, or cpu.
    #[arg(
        long,
        env = "FLWR_BACKEND",
        default_value = "auto",
        value_name = "BACKEND"
    )]
    pub backend: model::cnn::backend::BackendChoice,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Most virtual SuperNodes one process hosts: as many as a simulation has.
pub const MAX_VIRTUAL_NODES: u32 = wire::control::Simulation::MAX_NODES;

/// The virtual SuperNodes this process hosts (`--virtual-nodes`).
#[derive(Debug, Clone)]
pub struct VirtualNodes {
    /// How many.
    pub count: u32,
    /// What their keys derive from.
    pub seed: Vec<u8>,
}

impl VirtualNodes {
    /// Virtual node `index`'s key.
    pub fn identity(&self, index: u32) -> IdentityKey {
        IdentityKey::derived(&self.seed, u64::from(index))
    }

    /// Virtual node `index`'s node config: `base` with Flower's `partition-id` and
    /// `num-partitions`, as Flower's simulation gives each of its virtual nodes.
    pub fn node_config(&self, index: u32, base: &ConfigRecord) -> ConfigRecord {
        base.clone()
            .with("partition-id", wire::ConfigValue::Int(i64::from(index)))
            .with(
                "num-partitions",
                wire::ConfigValue::Int(i64::from(self.count)),
            )
    }
}

/// How the node verifies the broker.
#[derive(Debug, Clone)]
pub enum ServerTrust {
    /// Certificates chaining to these roots.
    Roots(Vec<CertificateDer<'static>>),
    /// Anything (`--insecure`).
    Insecure,
}

/// Everything resolved from the command line.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// Broker Fleet API, as `host:port`.
    pub superlink: String,
    /// How to verify the broker.
    pub trust: ServerTrust,
    /// This node's key.
    pub identity: IdentityKey,
    /// Whether the key is ephemeral (no `--auth-supernode-private-key`).
    pub ephemeral_identity: bool,
    /// Passed to apps.
    pub node_config: ConfigRecord,
    /// Where client app processes connect.
    pub clientappio_address: SocketAddr,
    /// Whether client app processes on other hosts may connect.
    pub clientappio_allow_remote: bool,
    /// Where client apps run.
    pub isolation: crate::isolation::Isolation,
    /// Retry limit (consecutive failures).
    pub max_retries: Option<u32>,
    /// Retry time limit (consecutive).
    pub max_wait_time: Option<Duration>,
    /// Where to train.
    pub backend: model::cnn::backend::BackendChoice,
    /// Where fetched app bundles are unpacked.
    pub apps_dir: PathBuf,
    /// The apps the node runs; `None`: whatever the SuperLink sends.
    pub trusted_apps: Option<crate::trust::TrustedApps>,
    /// `--flwr-clientapp`, checked to exist.
    pub flwr_clientapp: Option<PathBuf>,
    /// `--flwr-clientapp-warm-runs` and `--flwr-clientapp-idle-timeout`.
    pub flwr_clientapp_warm: crate::flower::warm::WarmLimits,
    /// `--native-clientapp`: the built-in client app that answers each Flower app, by FAB id.
    pub native_clientapps: std::collections::BTreeMap<String, String>,
    /// `--virtual-nodes`: this process hosts a simulation's virtual nodes.
    pub virtual_nodes: Option<VirtualNodes>,
    /// `--max-workers`: most client apps running at once; `None`: no bound.
    pub max_workers: Option<usize>,
    /// `--max-clientapp-memory`, in bytes.
    pub clientapp_memory_limit: Option<u64>,
}

impl Args {
    /// Checks flag combinations and loads the files.
    pub fn resolve(self) -> Result<NodeSettings, String> {
        let trust = match (&self.root_certificates, self.insecure) {
            (Some(_), true) => {
                return Err("--root-certificates and --insecure exclude each other".into());
            }
            (Some(path), false) => {
                ServerTrust::Roots(certs::load::load_certificates(path).map_err(|e| e.to_string())?)
            }
            (None, true) => ServerTrust::Insecure,
            (None, false) => {
                return Err("give --root-certificates FILE to verify the SuperLink (or --insecure for development)".into());
            }
        };
        let (identity, ephemeral_identity) = match &self.auth_supernode_private_key {
            Some(_) if self.virtual_nodes.is_some() => {
                return Err(
                    "--auth-supernode-private-key and --virtual-nodes exclude each other: \
                     virtual nodes' keys derive from --virtual-node-seed"
                        .into(),
                );
            }
            Some(_) if self.insecure => {
                return Err("--auth-supernode-private-key needs TLS: drop --insecure and give --root-certificates".into());
            }
            Some(path) => (
                certs::load::load_identity_key(path).map_err(|e| e.to_string())?,
                false,
            ),
            None => (IdentityKey::generate(), true),
        };
        let node_config = flwr_sdk::config::parse_overrides(&self.node_config)
            .map_err(|e| format!("--node-config: {e}"))?;
        let max_wait_time = match self.max_wait_time {
            Some(secs) => Some(Duration::try_from_secs_f64(secs).map_err(|_| {
                format!("--max-wait-time must be a non-negative number of seconds, got {secs}")
            })?),
            None => None,
        };
        let isolation = match self.isolation {
            IsolationMode::InProcess => Isolation::InProcess,
            IsolationMode::Process => Isolation::Process,
            IsolationMode::Subprocess => Isolation::Subprocess {
                program: clientapp_program(self.clientapp_program)?,
                args: vec!["--backend".into(), self.runtime.backend.as_str().into()],
            },
        };
        let apps_dir = match self.apps_dir {
            Some(dir) => dir,
            None => default_apps_dir().ok_or(
                "neither FLWR_HOME nor HOME is set: give --apps-dir DIR for fetched app bundles",
            )?,
        };
        let trusted_apps = self
            .trusted_apps
            .as_deref()
            .map(crate::trust::TrustedApps::load)
            .transpose()
            .map_err(|e| format!("--trusted-apps: {e}"))?;
        if let Some(program) = &self.flwr_clientapp {
            crate::flower::find_program(Some(program))?;
        }
        let virtual_nodes = match (self.virtual_nodes, &self.virtual_node_seed) {
            (Some(count), Some(path)) => Some(VirtualNodes {
                count,
                seed: read_seed(path)?,
            }),
            _ => None,
        };
        let max_workers = match (self.max_workers, &virtual_nodes) {
            (Some(workers), _) => Some(workers as usize),
            (None, Some(_)) => Some(std::thread::available_parallelism().map_or(1, |n| n.get())),
            (None, None) => None,
        };
        let clientapp_memory_limit = match (self.max_clientapp_memory, &virtual_nodes) {
            (Some(mib), _) => Some(mib << 20),
            // At least 1 GiB each: a Python ClientApp that imports PyTorch holds half of that.
            (None, Some(_)) => ops::process::total_memory_bytes().map(|total| {
                (total / 10 * 8 / max_workers.unwrap_or(1).max(1) as u64).max(1 << 30)
            }),
            (None, None) => None,
        };
        let flwr_clientapp_warm = crate::flower::warm::WarmLimits {
            runs: self.flwr_clientapp_warm_runs,
            // A simulation's workers each keep a process of the run: one process answers many
            // virtual nodes' instructions in turn.
            per_run: if virtual_nodes.is_some() {
                max_workers.unwrap_or(1)
            } else {
                1
            },
            idle: Duration::try_from_secs_f64(self.flwr_clientapp_idle_timeout)
                .ok()
                .filter(|idle| !idle.is_zero())
                .ok_or_else(|| {
                    format!(
                        "--flwr-clientapp-idle-timeout must be a positive number of seconds, got {}",
                        self.flwr_clientapp_idle_timeout
                    )
                })?,
        };
        let native_clientapps = self
            .native_clientapps
            .iter()
            .map(|pair| native_clientapp(pair))
            .collect::<Result<_, _>>()?;
        Ok(NodeSettings {
            superlink: self.superlink,
            trust,
            identity,
            ephemeral_identity,
            node_config,
            clientappio_address: self.clientappio_api_address,
            clientappio_allow_remote: self.clientappio_allow_remote,
            isolation,
            max_retries: self.max_retries,
            max_wait_time,
            backend: self.runtime.backend,
            apps_dir,
            trusted_apps,
            flwr_clientapp: self.flwr_clientapp,
            flwr_clientapp_warm,
            native_clientapps,
            virtual_nodes,
            max_workers,
            clientapp_memory_limit,
        })
    }
}

/// Longest seed file read.
const MAX_SEED_LEN: u64 = 4096;

/// The bytes of `--virtual-node-seed`: a private file of 32 to 4,096 bytes.
fn read_seed(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let what = || format!("--virtual-node-seed {}", path.display());
    if let Some(exposure) = certs::load::exposure(path) {
        return Err(format!("--virtual-node-seed: {exposure}"));
    }
    let mut seed = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(
            std::fs::File::open(path).map_err(|e| format!("{}: {e}", what()))?,
            MAX_SEED_LEN + 1,
        ),
        &mut seed,
    )
    .map_err(|e| format!("{}: {e}", what()))?;
    if !(32..=MAX_SEED_LEN as usize).contains(&seed.len()) {
        return Err(format!(
            "{}: a seed holds 32 to {MAX_SEED_LEN} bytes, this one {}",
            what(),
            seed.len()
        ));
    }
    Ok(seed)
}

/// `$FLWR_HOME/apps`, else `~/.flwr/apps`, as Flower keeps installed apps.
/// One `--native-clientapp FAB_ID=APP`.
fn native_clientapp(pair: &str) -> Result<(String, String), String> {
    let invalid = || {
        format!(
            "--native-clientapp {pair:?}: write the FAB's id and a built-in app's name, as in \
             flwrlabs/my-app=fedavg-cnn"
        )
    };
    let (fab_id, app) = pair.split_once('=').ok_or_else(invalid)?;
    let (publisher, name) = fab_id.split_once('/').ok_or_else(invalid)?;
    let valid = [publisher, name, app]
        .iter()
        .all(|part| app_bundle::is_app_name(part));
    if valid {
        Ok((fab_id.to_string(), app.to_string()))
    } else {
        Err(invalid())
    }
}

fn default_apps_dir() -> Option<PathBuf> {
    let home = match std::env::var_os("FLWR_HOME") {
        Some(home) if !home.is_empty() => PathBuf::from(home),
        _ => PathBuf::from(std::env::var_os("HOME")?).join(".flwr"),
    };
    Some(home.join("apps"))
}

/// The program of `--isolation subprocess`: the one given, or `flwr-clientapp` beside this
/// executable. It must exist now, not at the first instruction.
fn clientapp_program(given: Option<PathBuf>) -> Result<PathBuf, String> {
    let program = match given {
        Some(program) => program,
        None => std::env::current_exe()
            .map_err(|e| format!("cannot locate this executable: {e}"))?
            .with_file_name(format!("flwr-clientapp{}", std::env::consts::EXE_SUFFIX)),
    };
    if program.is_file() {
        Ok(program)
    } else {
        Err(format!(
            "the client app program {} does not exist: build it (cargo build --bins), give \
             --clientapp-program, or run apps inside the node with --isolation in-process",
            program.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(extra: &[&str]) -> Result<NodeSettings, String> {
        let mut argv = vec!["flower-supernode", "--insecure"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .resolve()
    }

    #[test]
    fn subprocess_isolation_needs_an_existing_client_app_program() {
        let error = resolve(&["--clientapp-program", "/nonexistent/flwr-clientapp"]).unwrap_err();
        assert!(error.contains("does not exist"), "{error}");
        assert!(error.contains("--isolation in-process"), "{error}");
        let settings = resolve(&["--isolation", "in-process"]).unwrap();
        assert_eq!(settings.isolation, Isolation::InProcess);
        let program = std::env::current_exe().unwrap();
        let settings = resolve(&[
            "--clientapp-program",
            program.to_str().unwrap(),
            "--backend",
            "cpu",
        ])
        .unwrap();
        assert_eq!(
            settings.isolation,
            Isolation::Subprocess {
                program,
                args: vec!["--backend".into(), "cpu".into()]
            }
        );
    }

    #[test]
    fn native_clientapps_name_a_fab_id_and_a_builtin_app() {
        let settings = resolve(&[
            "--isolation",
            "in-process",
            "--native-clientapp",
            "flwrlabs/seedbench=fedavg-cnn",
        ])
        .unwrap();
        assert_eq!(
            settings
                .native_clientapps
                .get("flwrlabs/seedbench")
                .map(String::as_str),
            Some("fedavg-cnn")
        );
        for bad in ["seedbench=fedavg-cnn", "flwrlabs/seedbench", "a/b=../x"] {
            let error =
                resolve(&["--isolation", "in-process", "--native-clientapp", bad]).unwrap_err();
            assert!(error.contains("--native-clientapp"), "{bad}: {error}");
        }
    }

    #[test]
    fn an_unknown_isolation_mode_is_refused() {
        let error = resolve(&["--isolation", "container"]).unwrap_err();
        assert!(error.contains("invalid value 'container'"), "{error}");
    }
}
