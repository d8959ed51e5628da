//! `flwr demo`: the whole seed walkthrough in one command. Everything runs as it would when typed
//! by hand: the real `flower-superlink` and `flower-supernode` binaries as child processes, the
//! real Control API, SuperNode authentication on, an operator key for the CLI.

use crate::CliError;
use crate::app_config::AppConfig;
use crate::args::{DatasetCommand, DatasetName, DemoArgs, DemoDataset, Partitioner, Target};
use crate::control_client::ControlClient;
use crate::output::Format;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};
use wire::control::NodeStatus;

/// How long to wait for the SuperLink to listen and the SuperNodes to come online.
const STARTUP: Duration = Duration::from_secs(30);

fn step(text: &str) {
    println!("==> {text}");
}

/// A sibling binary of the running `flwr` (cargo puts all of a workspace's binaries together).
fn binary(name: &str) -> Result<PathBuf, CliError> {
    let exe =
        std::env::current_exe().map_err(|e| CliError::Io(format!("cannot locate flwr: {e}")))?;
    let path = exe.with_file_name(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(CliError::Config(format!(
            "{} not found next to flwr; build every binary first: cargo build --release --bins (or run ./demo)",
            path.display()
        )))
    }
}

/// A loopback UDP port nobody uses right now.
fn free_port() -> Result<u16, CliError> {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|socket| socket.local_addr())
        .map(|address| address.port())
        .map_err(|e| CliError::Io(format!("no free UDP port: {e}")))
}

/// Child processes, stopped with SIGTERM (then SIGKILL after a grace period) in reverse order.
struct Children {
    /// Name and process.
    running: Vec<(String, Child)>,
}

impl Children {
    fn spawn(
        &mut self,
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> Result<(), CliError> {
        let file = std::fs::File::create(log)
            .map_err(|e| CliError::Io(format!("{}: {e}", log.display())))?;
        let err = file.try_clone().map_err(|e| CliError::Io(e.to_string()))?;
        let child = Command::new(program)
            .args(args)
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .env("NO_COLOR", "1")
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| CliError::Io(format!("cannot start {}: {e}", program.display())))?;
        self.running.push((name.to_string(), child));
        Ok(())
    }

    /// A child that already exited, with its status.
    fn exited(&mut self) -> Option<(String, std::process::ExitStatus)> {
        self.running.iter_mut().find_map(|(name, child)| {
            child
                .try_wait()
                .ok()
                .flatten()
                .map(|status| (name.clone(), status))
        })
    }

    async fn stop_all(&mut self) {
        while let Some((name, mut child)) = self.running.pop() {
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            if tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
            println!("    stopped {name}");
        }
    }
}

/// Which dataset to use, and why.
fn choose_dataset(choice: DemoDataset) -> (DatasetName, &'static str) {
    match choice {
        DemoDataset::FashionMnist => (DatasetName::FashionMnist, "as asked"),
        DemoDataset::Cifar10 => (DatasetName::Cifar10, "as asked"),
        DemoDataset::Synthetic => (DatasetName::Synthetic, "as asked"),
        DemoDataset::Auto => {
            if Path::new(model::data::sources::FASHION_MNIST_DIR)
                .join("train-images-idx3-ubyte.gz")
                .exists()
            {
                (DatasetName::FashionMnist, "its files are installed")
            } else {
                (DatasetName::Cifar10, "Fashion-MNIST is not installed")
            }
        }
    }
}

fn flwr_toml(control_port: u16, nodes: usize) -> String {
    format!(
        "[app]\nname = \"{app}\"\nversion = \"1.0.0\"\n\n[app.config]\nnum-server-rounds = 3\nfraction-train = 1.0\n\
         fraction-evaluate = 0.5\nlocal-epochs = 1\nlearning-rate = 0.1\nmomentum = 0.9\nbatch-size = 32\n\
         min-nodes = {nodes}\nround-timeout = 3600.0\nnode-wait-timeout = 120.0\nseed = 42\n\n\
         [federations]\ndefault = \"demo\"\n\n[federations.demo]\naddress = \"127.0.0.1:{control_port}\"\n\
         root-certificates = \"certificates/ca.crt\"\noperator-key = \"keys/operator\"\n",
        app = model::apps::fedavg_cnn::NAME
    )
}

/// Runs the demo; on Ctrl-C everything started is stopped before returning.
pub async fn run(args: DemoArgs) -> Result<(), CliError> {
    if args.nodes == 0 {
        return Err(CliError::Config("--nodes must be at least 1".into()));
    }
    let superlink = binary("flower-superlink")?;
    let supernode = binary("flower-supernode")?;
    let mut children = Children {
        running: Vec::new(),
    };
    let outcome = tokio::select! {
        outcome = federation(&args, &superlink, &supernode, &mut children) => outcome,
        _ = tokio::signal::ctrl_c() => Err(CliError::Request("interrupted".into())),
    };
    step("Shutting down");
    children.stop_all().await;
    outcome
}

async fn federation(
    args: &DemoArgs,
    superlink: &Path,
    supernode: &Path,
    children: &mut Children,
) -> Result<(), CliError> {
    let dir = &args.dir;
    std::fs::create_dir_all(dir.join("logs"))
        .map_err(|e| CliError::Io(format!("{}: {e}", dir.display())))?;
    let dir = dir
        .canonicalize()
        .map_err(|e| CliError::Io(format!("{}: {e}", dir.display())))?;
    println!("Working directory: {}", dir.display());

    step("Generating certificates and keys");
    certs::generate::generate_certificates(&dir.join("certificates"), &[], true)?;
    certs::generate::generate_federation_keys(
        &dir.join("keys"),
        "client_credentials",
        args.nodes,
        Some("demo-operator"),
        true,
    )?;

    let (mut dataset, reason) = choose_dataset(args.dataset);
    step(&format!("Preparing data: {dataset:?} ({reason})"));
    let prepare = |dataset: DatasetName| {
        super::dataset::run(DatasetCommand::Prepare {
            dataset,
            partitions: args.nodes,
            partitioner: Partitioner::Iid,
            alpha: 0.5,
            seed: 42,
            source: None,
            out: dir.join("datasets"),
            max_samples: args.max_samples,
            force: true,
            format: Format::Default,
        })
    };
    if let Err(error) = prepare(dataset) {
        if args.dataset != DemoDataset::Auto || dataset == DatasetName::Synthetic {
            return Err(error);
        }
        println!("    {error}");
        dataset = DatasetName::Synthetic;
        step("Preparing data: synthetic instead");
        prepare(dataset)?;
    }
    let data_name = match dataset {
        DatasetName::Cifar10 => "cifar10",
        DatasetName::FashionMnist => "fashion-mnist",
        DatasetName::Synthetic => "synthetic",
    };

    let (fleet_port, control_port) = (free_port()?, free_port()?);
    std::fs::write(dir.join("flwr.toml"), flwr_toml(control_port, args.nodes))
        .map_err(|e| CliError::Io(format!("flwr.toml: {e}")))?;
    step(&format!(
        "Starting the SuperLink (Fleet API 127.0.0.1:{fleet_port}, Control API 127.0.0.1:{control_port})"
    ));
    let path = |p: &str| dir.join(p).display().to_string();
    children.spawn(
        "SuperLink",
        superlink,
        &[
            "--ssl-ca-certfile".into(),
            path("certificates/ca.crt"),
            "--ssl-certfile".into(),
            path("certificates/server.pem"),
            "--ssl-keyfile".into(),
            path("certificates/server.key"),
            "--enable-supernode-auth".into(),
            "--control-auth-public-keys".into(),
            path("keys/operator.pub"),
            "--fleet-api-address".into(),
            format!("127.0.0.1:{fleet_port}"),
            "--control-api-address".into(),
            format!("127.0.0.1:{control_port}"),
            // A free port: the demo's SuperLink must not compete with another one's 9091.
            "--serverappio-api-address".into(),
            "127.0.0.1:0".into(),
            "--apps-dir".into(),
            path("superlink-apps"),
            "--database".into(),
            path("state.redb"),
        ],
        &dir.join("logs/superlink.log"),
    )?;
    let config = AppConfig::load(&dir)?;
    let (_, federation) = config.federation(None)?;
    let mut client = connect_with_patience(&federation, children).await?;

    step(&format!("Registering {} SuperNodes", args.nodes));
    for i in 1..=args.nodes {
        let public_key =
            std::fs::read_to_string(dir.join(format!("keys/client_credentials_{i}.pub")))
                .map_err(|e| CliError::Io(e.to_string()))?;
        let node_id = client.register_node(public_key).await?;
        println!("    SuperNode {node_id} registered successfully.");
    }

    step(&format!("Starting {} SuperNodes", args.nodes));
    for i in 1..=args.nodes {
        children.spawn(
            &format!("SuperNode {i}"),
            supernode,
            &[
                "--superlink".into(),
                format!("127.0.0.1:{fleet_port}"),
                "--root-certificates".into(),
                path("certificates/ca.crt"),
                "--auth-supernode-private-key".into(),
                path(&format!("keys/client_credentials_{i}")),
                "--node-config".into(),
                format!(
                    "dataset-path=\"{}\"",
                    path(&format!("datasets/{data_name}_part_{i}"))
                ),
                "--backend".into(),
                args.backend.clone(),
                // Each node serves its client app processes on a port of its own.
                "--clientappio-api-address".into(),
                "127.0.0.1:0".into(),
            ],
            &dir.join(format!("logs/supernode_{i}.log")),
        )?;
    }
    wait_online(&mut client, args.nodes, children).await?;
    let target = Target {
        app: dir.clone(),
        federation: None,
        format: Format::Default,
    };
    let nodes = client.list_nodes(false).await?;
    let protocols = client.online_protocols().await?.unwrap_or_default();
    let protocol = |node: &wire::control::NodeInfo| protocols.get(&node.node_id).copied();
    print!(
        "{}",
        super::supernode::node_table(&nodes, &protocol, wire::message::now_ms())
    );
    client.close().await;

    step("Running the app (flwr run . demo --stream)");
    if args.learning_rate == 0.1 {
        println!("    learning-rate 0.1, the seed's (it diverges with this CNN, in PyTorch too)");
    } else {
        println!(
            "    learning-rate {} (--learning-rate; the seed's 0.1 diverges with this CNN, in PyTorch too)",
            args.learning_rate
        );
    }
    let overrides = format!(
        "num-server-rounds={} learning-rate={}",
        args.rounds, args.learning_rate
    );
    let outcome = super::runs::start(&target, std::slice::from_ref(&overrides), true).await;
    let runs = ControlClient::once(&target, async |client| client.list_runs(None).await).await?;
    if let Some(run) = runs.last() {
        let out = dir.join("runs").join(run.run_id.to_string());
        step("Fetching the results (flwr pull)");
        if super::runs::pull(&target, run.run_id.0, Some(out.clone()))
            .await
            .is_ok()
        {
            summarise(&out);
        }
    }
    println!("Logs: {}", dir.join("logs").display());
    outcome
}

/// Connects to the SuperLink as soon as it listens.
async fn connect_with_patience(
    federation: &crate::app_config::Federation,
    children: &mut Children,
) -> Result<ControlClient, CliError> {
    let deadline = tokio::time::Instant::now() + STARTUP;
    loop {
        match ControlClient::connect(federation).await {
            Ok(client) => return Ok(client),
            Err(error) if tokio::time::Instant::now() >= deadline => return Err(error),
            Err(_) => {}
        }
        if let Some((name, status)) = children.exited() {
            return Err(CliError::Request(format!(
                "{name} exited ({status}); see its log"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `count` SuperNodes are online.
async fn wait_online(
    client: &mut ControlClient,
    count: usize,
    children: &mut Children,
) -> Result<(), CliError> {
    let deadline = tokio::time::Instant::now() + STARTUP;
    loop {
        let nodes = client.list_nodes(false).await?;
        if nodes
            .iter()
            .filter(|n| n.status == NodeStatus::Online)
            .count()
            >= count
        {
            return Ok(());
        }
        if let Some((name, status)) = children.exited() {
            return Err(CliError::Request(format!(
                "{name} exited ({status}); see its log"
            )));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CliError::Request(
                "the SuperNodes did not come online; see logs/".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Prints per-round accuracy and where the model is.
fn summarise(out: &Path) {
    let Ok(text) = std::fs::read_to_string(out.join("metrics.json")) else {
        return;
    };
    let Ok(metrics) = serde_json::from_str::<serde_json::Value>(&text) else {
        return;
    };
    let rows: Vec<Vec<String>> = metrics["rounds"]
        .as_array()
        .map(|rounds| {
            rounds
                .iter()
                .map(|r| {
                    let cell = |name: &str| {
                        r[name]
                            .as_f64()
                            .map(|v| format!("{v:.4}"))
                            .unwrap_or_else(|| "-".into())
                    };
                    vec![
                        r["round"].to_string(),
                        cell("train_loss"),
                        cell("eval_loss"),
                        cell("eval_acc"),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    print!(
        "{}",
        crate::output::table(&["Round", "train_loss", "eval_loss", "eval_acc"], &rows)
    );
    println!("Final model: {}", out.join("model.safetensors").display());
    println!(
        "Metrics:     {} (plot: metrics.svg, metrics.png)",
        out.join("metrics.json").display()
    );
}
