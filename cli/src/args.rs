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
    /// Run a whole local federation on embedded defaults: certificates, keys, data, a SuperLink with
    /// SuperNode authentication, SuperNodes, and the seed's run.
    Demo(DemoArgs),
    /// Bundle a Flower app (a directory with pyproject.toml) into a FAB in the current
    /// directory, as Flower's `flwr build` does: same files, same bytes, same hash.
    Build {
        /// The app directory [default: the current directory].
        #[arg(long)]
        app: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// App bundles: sign one as its publisher.
    #[command(subcommand)]
    App(AppCommand),
    /// Show where federations come from and what they resolve to.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Prepare dataset partitions for SuperNodes.
    #[command(subcommand)]
    Dataset(DatasetCommand),
    /// Download a finished run's final model, metrics and plot.
    Pull {
        /// The run.
        run_id: u64,
        /// App directory and federation.
        #[command(flatten)]
        target: Target,
        /// Output directory [default: runs/<run-id>].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Start a run of the app in APP_DIR on a federation.
    Run {
        /// App directory and federation.
        #[command(flatten)]
        target: Target,
        /// Override values of the app's config: 'num-server-rounds=5 learning-rate=0.01' (TOML
        /// values), repeatable, or one TOML file.
        #[arg(long, short = 'c', value_name = "CONFIG")]
        run_config: Vec<String>,
        /// Follow the run's log until it finishes; exit non-zero unless it completed.
        #[arg(long)]
        stream: bool,
    },
    /// List runs, or show one run in detail (`flwr list` is Flower's name for it).
    #[command(visible_alias = "list")]
    Ls {
        /// App directory and federation.
        #[command(flatten)]
        target: Target,
        /// Show this run only, with all its timestamps.
        #[arg(long, value_name = "ID", conflicts_with = "limit")]
        run_id: Option<u64>,
        /// Show only the N most recent runs.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
        /// List runs (the default; accepted for Flower's scripts).
        #[arg(long)]
        runs: bool,
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
    /// Open the SuperLink's dashboard: asks the SuperLink, signed in with the operator key, for
    /// a one-time login link (valid two minutes), then opens it in a browser or prints it.
    Dashboard {
        /// App directory and federation.
        #[command(flatten)]
        target: Target,
        /// Print the link only; do not start a browser.
        #[arg(long)]
        no_open: bool,
    },
}

/// `flwr app ...`
#[derive(Debug, Subcommand)]
pub enum AppCommand {
    /// Sign the bundle of the app in APP_DIR as its publisher: nodes whose --trusted-apps lists
    /// your public key then run it. The signature goes to APP_DIR/.flwr/signatures.json, and
    /// `flwr run` sends it with the bundle. Any change to the app's files needs a new signature.
    Sign {
        /// The app directory.
        #[arg(default_value = ".")]
        app: PathBuf,
        /// The publisher's private key (OpenSSH or PEM, P-256 or P-384; `flwr keys generate`
        /// makes them).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
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

/// Which data the demo trains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoDataset {
    /// Fashion-MNIST when installed, else CIFAR-10 when it can be downloaded, else synthetic.
    Auto,
    /// Fashion-MNIST (Debian's dataset-fashion-mnist).
    FashionMnist,
    /// CIFAR-10 (downloaded once).
    Cifar10,
    /// Seeded synthetic images.
    Synthetic,
}

/// `flwr demo` options.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Working directory for certificates, keys, data, logs and results.
    #[arg(long, default_value = "flwr-demo")]
    pub dir: PathBuf,
    /// Number of SuperNodes.
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    /// Number of FedAvg rounds.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Training data.
    #[arg(long, value_enum, default_value_t = DemoDataset::Auto)]
    pub dataset: DemoDataset,
    /// Use at most this many samples (all by default).
    #[arg(long, value_name = "N")]
    pub max_samples: Option<usize>,
    /// Learning rate (the seed's 0.1 diverges with this CNN; 0.01 learns).
    #[arg(long, default_value_t = 0.01)]
    pub learning_rate: f64,
    /// Where the SuperNodes train: auto, wgpu or cpu.
    #[arg(long, default_value = "auto")]
    pub backend: String,
}

/// Datasets a partition can be made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DatasetName {
    /// CIFAR-10 (downloaded, or --source).
    Cifar10,
    /// Fashion-MNIST from IDX files (Debian's dataset-fashion-mnist, or --source).
    FashionMnist,
    /// Seeded synthetic images of CIFAR-10's shape.
    Synthetic,
}

/// How samples are divided among partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Partitioner {
    /// Seeded shuffle, equal shards.
    Iid,
    /// Label skew drawn from Dirichlet(alpha).
    Dirichlet,
}

/// `flwr dataset ...`
#[derive(Debug, Subcommand)]
pub enum DatasetCommand {
    /// Partition a dataset into OUT/<name>_part_{1..N} (each split 80/20 into train and test).
    Prepare {
        /// Which dataset.
        #[arg(long, value_enum, default_value_t = DatasetName::Cifar10)]
        dataset: DatasetName,
        /// Number of partitions (one per SuperNode).
        #[arg(long, default_value_t = 2)]
        partitions: usize,
        /// How to divide samples among partitions.
        #[arg(long, value_enum, default_value_t = Partitioner::Iid)]
        partitioner: Partitioner,
        /// Concentration of the Dirichlet partitioner (smaller: more skew).
        #[arg(long, default_value_t = 0.5)]
        alpha: f64,
        /// Seed of every shuffle.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Where the source data is: CIFAR-10 tarball or directory, Fashion-MNIST IDX directory.
        #[arg(long)]
        source: Option<PathBuf>,
        /// Output directory.
        #[arg(long, default_value = "datasets")]
        out: PathBuf,
        /// Use at most this many samples (a quick subset; synthetic: how many to make, default 10000).
        #[arg(long, value_name = "N")]
        max_samples: Option<usize>,
        /// Overwrite existing partitions.
        #[arg(long)]
        force: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

/// `flwr config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// List the federations flwr.toml, pyproject.toml and $FLWR_HOME/config.toml define, each
    /// as it resolves, with the default marked.
    #[command(visible_alias = "ls")]
    List {
        /// App directory holding flwr.toml or a Flower pyproject.toml.
        #[arg(default_value = ".")]
        app: PathBuf,
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
    /// App directory holding flwr.toml or a Flower pyproject.toml.
    #[arg(default_value = ".")]
    pub app: PathBuf,
    /// Federation name, looked up in flwr.toml, pyproject.toml, then $FLWR_HOME/config.toml
    /// (default: the first default found there).
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
