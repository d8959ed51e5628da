//! The command line of `flower-superlink`, with Flower's flag names, resolved into a
//! [`BrokerConfig`] before anything starts.

use crate::config::{BrokerConfig, NodeAuth, OperatorAuth};
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `--database` value selecting an ephemeral in-memory database.
pub const IN_MEMORY: &str = ":flwr-in-memory:";

pub use ops::logging::LogFormat;

/// Flower SuperLink: the broker between operators (Control API) and SuperNodes (Fleet API).
#[derive(Debug, Parser)]
#[command(name = "flower-superlink", version, about)]
pub struct Args {
    /// CA certificate the server certificate chains to (PEM).
    #[arg(long, value_name = "FILE")]
    pub ssl_ca_certfile: Option<PathBuf>,
    /// Server certificate (PEM).
    #[arg(long, value_name = "FILE")]
    pub ssl_certfile: Option<PathBuf>,
    /// Server private key (PEM: PKCS#8, RSA or EC).
    #[arg(long, value_name = "FILE")]
    pub ssl_keyfile: Option<PathBuf>,
    /// Development only: a throw-away self-signed certificate; clients must skip verification.
    #[arg(long)]
    pub insecure: bool,
    /// Admit only SuperNodes whose public keys were registered with `flwr supernode register`.
    #[arg(long)]
    pub enable_supernode_auth: bool,
    /// Fleet API address (SuperNodes connect here) [default: 0.0.0.0:9092; 127.0.0.1:9092 with
    /// --simulation, whose SuperNodes are its own].
    #[arg(long, value_name = "ADDR")]
    pub fleet_api_address: Option<SocketAddr>,
    /// Control API address (the flwr CLI connects here).
    /// [default: 0.0.0.0:9093 with --control-auth-public-keys, 127.0.0.1:9093 without]
    #[arg(long, value_name = "ADDR")]
    pub control_api_address: Option<SocketAddr>,
    /// Database file (redb); `:flwr-in-memory:` keeps state in memory only.
    /// [default: ~/.flwr/superlink/state.redb]
    #[arg(long, value_name = "PATH")]
    pub database: Option<String>,
    /// Operators' OpenSSH public keys, one per line; each line's comment names the operator.
    /// Without it, only loopback clients may use the Control API.
    #[arg(long, value_name = "FILE")]
    pub control_auth_public_keys: Option<PathBuf>,
    /// Seconds between node heartbeats.
    #[arg(long, default_value_t = 2.0, value_name = "SECS")]
    pub heartbeat_interval: f64,
    /// Seconds without a heartbeat after which a node is marked offline.
    #[arg(long, default_value_t = 6.0, value_name = "SECS")]
    pub heartbeat_timeout: f64,
    /// Largest reply a node may send, in MiB of arrays. A reply is also bounded by its
    /// instruction: at most twice the arrays it was sent, plus 16 MiB.
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    pub max_reply_mib: u64,
    /// Where server app programs connect (the ServerAppIo API); only this host's processes may.
    #[arg(long, default_value = "127.0.0.1:9091", value_name = "ADDR")]
    pub serverappio_api_address: SocketAddr,
    /// Where server app programs and Flower's ServerApps run, a fresh workspace per run [default:
    /// ~/.flwr/superlink/apps]. It must belong to the SuperLink's user and be writable by nobody
    /// else, and so must every directory above it (unless sticky, as /tmp is).
    #[arg(long, value_name = "DIR")]
    pub apps_dir: Option<PathBuf>,
    /// Flower's `flwr-serverapp` (from `pip install 'flwr==1.42.*'`), which runs the ServerApps
    /// of Flower apps (FABs) [default: `flwr-serverapp` on PATH].
    #[arg(long, value_name = "FILE")]
    pub flwr_serverapp: Option<PathBuf>,
    /// Serve Prometheus metrics over plain HTTP on this address (off by default).
    #[arg(long, value_name = "ADDR")]
    pub metrics_address: Option<SocketAddr>,
    /// Flower's HTTP API host (Flower 1.42's flag): where Flower's own `flower-supernode`
    /// joins this SuperLink (the Fleet API), and Flower's own `flwr` from loopback (the Control
    /// API, not served with --control-auth-public-keys). HTTPS unless --insecure
    /// [default: 127.0.0.1].
    #[arg(long, value_name = "HOST")]
    pub host: Option<std::net::IpAddr>,
    /// Flower's HTTP API port [default: 8000; when it is taken and neither flag was given, the
    /// API is off with a warning].
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Serve the operators' dashboard here, e.g. 127.0.0.1:9095 (off by default). Plain HTTP on
    /// a loopback address, HTTPS with the SuperLink's certificate on any other; without
    /// --control-auth-public-keys it answers loopback clients only, with them a browser signs in
    /// with a link from `flwr dashboard`.
    #[arg(long, value_name = "ADDR")]
    pub dashboard_address: Option<SocketAddr>,
    /// Serve a health endpoint over plain HTTP on this address: `GET /health` answers `SERVING`
    /// (Flower serves gRPC health checking here; an HTTP probe is what load balancers and
    /// orchestrators ask by default).
    #[arg(long, value_name = "ADDR")]
    pub health_server_address: Option<SocketAddr>,
    /// Run simulations, as Flower's local simulation SuperLink does: each run on virtual
    /// SuperNodes this SuperLink starts for it (`flwr run` on a simulation federation starts
    /// such a SuperLink by itself). Runs take turns; deployment runs are refused.
    #[arg(long)]
    pub simulation: bool,
    /// With --simulation: `flower-supernode`, which hosts the virtual SuperNodes [default: the
    /// one beside this executable].
    #[arg(long, value_name = "FILE", requires = "simulation")]
    pub simulation_supernode: Option<PathBuf>,
    /// With --simulation: Flower's `flwr-clientapp` for the virtual SuperNodes' Flower apps
    /// [default: `flwr-clientapp` on PATH].
    #[arg(long, value_name = "FILE", requires = "simulation")]
    pub flwr_clientapp: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log file and its rotation.
    #[command(flatten)]
    pub log: ops::logging::LogFileArgs,
    /// Flags of Flower's that have no effect here.
    #[command(flatten)]
    pub flower: ops::flower_flags::SuperLinkFlags,
}

/// Where the broker keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseLocation {
    /// A redb file.
    File(PathBuf),
    /// Memory only.
    InMemory,
}

/// Everything resolved from the command line.
#[derive(Debug)]
pub struct Settings {
    /// The endpoints' configuration.
    pub config: BrokerConfig,
    /// Fleet API address.
    pub fleet_address: SocketAddr,
    /// Control API address.
    pub control_address: SocketAddr,
    /// The database.
    pub database: DatabaseLocation,
    /// Whether `--insecure` is on.
    pub insecure: bool,
}

fn seconds(flag: &str, value: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("--{flag} must be a positive number of seconds, got {value}"))
}

/// The default database file: `~/.flwr/superlink/state.redb`.
pub fn default_database() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".flwr").join("superlink").join("state.redb")
}

impl Args {
    /// Checks flag combinations and loads every file the broker needs.
    pub fn resolve(self) -> Result<Settings, String> {
        if self.simulation && self.enable_supernode_auth {
            return Err(
                "--simulation admits its own virtual SuperNodes only, whose keys it derives: \
                 it cannot be combined with --enable-supernode-auth"
                    .into(),
            );
        }
        if self.insecure && self.enable_supernode_auth {
            return Err(
                "--enable-supernode-auth needs TLS: it cannot be combined with --insecure".into(),
            );
        }
        let tls_flags = [
            ("--ssl-ca-certfile", &self.ssl_ca_certfile),
            ("--ssl-certfile", &self.ssl_certfile),
            ("--ssl-keyfile", &self.ssl_keyfile),
        ];
        let missing: Vec<&str> = tls_flags
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(n, _)| *n)
            .collect();
        let mut roots = Vec::new();
        let (chain, key) = if self.insecure {
            if missing.len() < tls_flags.len() {
                return Err("--insecure cannot be combined with --ssl-* certificate flags".into());
            }
            certs::generate::ephemeral_server_certificate()
                .map(|(cert, key)| (vec![cert], key))
                .map_err(|e| e.to_string())?
        } else if !missing.is_empty() {
            return Err(format!(
                "missing {}: TLS needs --ssl-ca-certfile, --ssl-certfile and --ssl-keyfile (or --insecure for development)",
                missing.join(", ")
            ));
        } else {
            let (Some(ca), Some(cert), Some(key)) =
                (&self.ssl_ca_certfile, &self.ssl_certfile, &self.ssl_keyfile)
            else {
                return Err("TLS flags incomplete".into());
            };
            roots = certs::load::load_certificates(ca).map_err(|e| e.to_string())?;
            let chain = certs::load::load_certificates(cert).map_err(|e| e.to_string())?;
            let key = certs::load::load_tls_private_key(key).map_err(|e| e.to_string())?;
            (chain, key)
        };
        // Without operator keys only loopback may use the Control API: listen there only.
        let control_address = self.control_api_address.unwrap_or_else(|| {
            let host = if self.control_auth_public_keys.is_some() {
                std::net::Ipv4Addr::UNSPECIFIED
            } else {
                std::net::Ipv4Addr::LOCALHOST
            };
            SocketAddr::from((host, 9093))
        });
        let operator_auth = match &self.control_auth_public_keys {
            Some(path) => OperatorAuth::Keys(
                certs::load::load_public_key_list(path).map_err(|e| e.to_string())?,
            ),
            None => OperatorAuth::LoopbackOnly,
        };
        let node_auth = if self.enable_supernode_auth {
            NodeAuth::Registered
        } else {
            NodeAuth::Automatic
        };
        let mut config = BrokerConfig::new(chain, key, node_auth, operator_auth);
        config.heartbeat_interval = seconds("heartbeat-interval", self.heartbeat_interval)?;
        config.heartbeat_timeout = seconds("heartbeat-timeout", self.heartbeat_timeout)?;
        if config.heartbeat_timeout <= config.heartbeat_interval {
            return Err("--heartbeat-timeout must be longer than --heartbeat-interval".into());
        }
        config.metrics_address = self.metrics_address;
        config.flower_http = Some(crate::flower_http::FlowerHttp {
            address: SocketAddr::from((
                self.host.unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
                self.port.unwrap_or(8000),
            )),
            required: self.host.is_some() || self.port.is_some(),
            tls: !self.insecure,
        });
        config.dashboard = self
            .dashboard_address
            .map(crate::dashboard::DashboardConfig::at);
        config.serverappio_address = self.serverappio_api_address;
        if let Some(program) = &self.flwr_serverapp {
            crate::runs::flower::find_program(Some(program))?;
        }
        config.flwr_serverapp = self.flwr_serverapp;
        config.apps_dir = self.apps_dir.unwrap_or_else(|| {
            default_database()
                .parent()
                .map_or_else(|| PathBuf::from("apps"), |dir| dir.join("apps"))
        });
        if self.simulation {
            let supernode = match self.simulation_supernode {
                Some(program) => program,
                None => std::env::current_exe()
                    .map_err(|e| format!("cannot locate this executable: {e}"))?
                    .with_file_name(crate::simulation::SUPERNODE),
            };
            if !supernode.is_file() {
                return Err(format!(
                    "--simulation hosts virtual SuperNodes with {}, which does not exist: give \
                     --simulation-supernode FILE",
                    supernode.display()
                ));
            }
            let mut node_args = Vec::new();
            if let Some(program) = self.flwr_clientapp {
                node_args.push("--flwr-clientapp".into());
                node_args.push(program.into_os_string());
            }
            config.simulation = Some(crate::simulation::SimulationConfig {
                supernode,
                dir: config.apps_dir.join("simulation"),
                // The self-signed certificate of --insecure is its own root.
                roots: if roots.is_empty() {
                    config.chain.clone()
                } else {
                    roots
                },
                node_args,
            });
            // Every virtual node connects from this host: let them handshake together.
            config.max_pending_per_source = config.max_pending_per_source.max(64);
        }
        if self.max_reply_mib == 0 {
            return Err("--max-reply-mib must be at least 1".into());
        }
        config.limits.max_payload = self.max_reply_mib.saturating_mul(1 << 20);
        let database = match self.database.as_deref() {
            Some(IN_MEMORY) => DatabaseLocation::InMemory,
            Some(path) => DatabaseLocation::File(PathBuf::from(path)),
            None => DatabaseLocation::File(default_database()),
        };
        Ok(Settings {
            config,
            fleet_address: self.fleet_api_address.unwrap_or_else(|| {
                let host = if self.simulation {
                    std::net::Ipv4Addr::LOCALHOST
                } else {
                    std::net::Ipv4Addr::UNSPECIFIED
                };
                SocketAddr::from((host, 9092))
            }),
            control_address,
            database,
            insecure: self.insecure,
        })
    }
}
