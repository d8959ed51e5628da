//! The `flwr` command tree.

use crate::output::Format;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// flwr: operate a Flower federation (certificates, keys, SuperNodes, runs).
#[derive(Debug, Parser)]
#[command(name = "flwr", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// TLS certificates for the SuperLink.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// ECDSA key pairs for SuperNodes and operators.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Register, unregister and list SuperNodes.
    #[command(subcommand)]
    Supernode(SupernodeCommand),
    /// Start a run of the app in APP_DIR on a federation.
    Run {
        /// App directory and federation.
        #[command(flatten)]
        target: Target,
        /// Override run config values of [app.config], e.g. 'num-server-rounds=5 learning-rate=0.01'.
        #[arg(long, value_name = "CONFIG")]
        run_config: Option<String>,
        /// Follow the run's log until it finishes; exit non-zero unless it completed.
        #[arg(long)]
        stream: bool,
    },
    /// List runs, or show one run in detail.
    Ls {
        /// App directory and federation.
        #[command(flatten)]
        target: Target,
        /// Show this run only, with all its timestamps.
        #[arg(long, value_name = "ID")]
        run_id: Option<u64>,
    },
    /// Show a run's log, or follow it live.
    Log {
        /// The run.
        run_id: u64,
        /// App directory and federation.
        #[command(flatten)]
        target: Target,
        /// Follow the log until the run finishes (the default).
        #[arg(long, conflicts_with = "show")]
        stream: bool,
        /// Print the log so far and exit.
        #[arg(long)]
        show: bool,
    },
    /// Stop a run.
    Stop {
        /// The run.
        run_id: u64,
        /// App directory and federation.
        #[command(flatten)]
        target: Target,
    },
}

/// `flwr certs ...`
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Generate ca.crt, ca.key, server.pem and server.key.
    Generate {
        /// Output directory.
        #[arg(long, default_value = "certificates")]
        out: PathBuf,
        /// Extra DNS name or IP address for the server certificate (repeatable); localhost,
        /// 127.0.0.1 and ::1 are always included.
        #[arg(long = "san", value_name = "NAME_OR_IP")]
        sans: Vec<String>,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

/// `flwr keys ...`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Generate N SuperNode key pairs and an operator key pair (OpenSSH format).
    Generate {
        /// Number of SuperNode key pairs.
        #[arg(default_value_t = 2)]
        count: usize,
        /// Output directory.
        #[arg(long, default_value = "keys")]
        out: PathBuf,
        /// File name prefix of SuperNode keys.
        #[arg(long, default_value = "client_credentials")]
        prefix: String,
        /// Name recorded in the operator public key's comment (the Owner of nodes it registers).
        #[arg(long, value_name = "NAME")]
        operator_name: Option<String>,
        /// Do not generate the operator key pair.
        #[arg(long)]
        no_operator: bool,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

/// The app directory and federation, as every Control API command takes them.
#[derive(Debug, Args)]
pub struct Target {
    /// App directory holding flwr.toml.
    #[arg(default_value = ".")]
    pub app: PathBuf,
    /// Federation name in flwr.toml (default: [federations] default).
    pub federation: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// `flwr supernode ...`
#[derive(Debug, Subcommand)]
pub enum SupernodeCommand {
    /// Register a SuperNode's public key; prints its new node id.
    Register {
        /// The SuperNode's public key file (OpenSSH .pub or PEM).
        public_key: PathBuf,
        /// App directory and federation.
        #[command(flatten)]
        target: Target,
    },
    /// Unregister a SuperNode: its connection closes and its key can never be used again.
    Unregister {
        /// The node id.
        node_id: u64,
        /// App directory and federation.
        #[command(flatten)]
        target: Target,
    },
    /// List SuperNodes.
    #[command(alias = "ls")]
    List {
        /// App directory and federation.
        #[command(flatten)]
        target: Target,
        /// Also show unregistered nodes.
        #[arg(short, long)]
        verbose: bool,
    },
}
