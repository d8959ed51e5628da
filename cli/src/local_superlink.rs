//! The local simulation SuperLink: what `flwr` talks to for a simulation federation, started by
//! `flwr` itself the first time one needs it and left running for the next command, as Flower's
//! `flwr` does for `:local:`. It is `flower-superlink --simulation` (found beside `flwr`, else on
//! `PATH`), listening on loopback only, with a certificate authority and an operator key of its
//! own made here on first use: `flwr` verifies it like any SuperLink, and only the holder of the
//! key (this user) may start runs on it. Its files live in `$FLWR_HOME/local-superlink-rs/`:
//!
//! | file | what it is |
//! | --- | --- |
//! | `certificates/` | its CA and server certificate |
//! | `operator`, `operator.pub` | the operator key `flwr` signs in with |
//! | `state.redb` | its database (not with `:local-in-memory:`) |
//! | `superlink.log` | its log |
//! | `superlink.toml` | the running one: its process id, where it listens, whether in memory |
//! | `apps/` | its apps directory, the virtual SuperNodes' included |
//! | `lock` | held while one `flwr` checks or starts it |

use crate::CliError;
use crate::app_config::Federation;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The SuperLink's program.
const PROGRAM: &str = "flower-superlink";

/// How long a starting SuperLink has to answer, as Flower's `flwr` waits for its own.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a health probe may take: a simulation keeps every core busy.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The running local SuperLink, as `superlink.toml` records it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Endpoints {
    /// Its process.
    pid: u32,
    /// Its Control API.
    control: SocketAddr,
    /// Its health endpoint (plain HTTP), which says it is up.
    health: SocketAddr,
    /// Whether it keeps its state in memory only (`:local-in-memory:`).
    in_memory: bool,
}

impl Endpoints {
    /// Whether its process is still a `flower-superlink` (a process id is reused once it ends).
    fn alive(&self) -> bool {
        std::fs::read(format!("/proc/{}/cmdline", self.pid))
            .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(PROGRAM))
    }
}

/// The directory of the local SuperLink's files.
pub fn dir() -> Result<PathBuf, CliError> {
    crate::app_config::user_config::flwr_home()
        .map(|home| home.join("local-superlink-rs"))
        .ok_or_else(|| {
            CliError::Config(
                "neither FLWR_HOME nor HOME is set: flwr keeps its local simulation SuperLink \
                 there"
                    .into(),
            )
        })
}

/// The local simulation SuperLink as a federation to connect to: the running one, or one
/// started now (keeping its state in memory when `in_memory`). Says where its log is when it
/// cannot start.
pub async fn ensure(in_memory: bool, source: &Path) -> Result<Federation, CliError> {
    let dir = dir()?;
    private_dir(&dir)?;
    let federation = |endpoints: Endpoints| Federation {
        address: endpoints.control.to_string(),
        root_certificates: Some(dir.join("certificates").join("ca.crt")),
        operator_key: Some(dir.join("operator")),
        insecure: false,
        source: source.to_path_buf(),
        simulation: None,
    };
    // One flwr at a time checks and starts it: two would start two.
    let lock = std::fs::File::create(dir.join("lock"))
        .map_err(|e| CliError::Io(format!("{}: {e}", dir.join("lock").display())))?;
    let lock = tokio::task::spawn_blocking(move || lock.lock().map(|()| lock))
        .await
        .map_err(|e| CliError::Io(e.to_string()))?
        .map_err(|e| CliError::Io(format!("cannot lock {}: {e}", dir.display())))?;
    let endpoints = match recorded(&dir) {
        Some(running) if running.alive() => {
            if running.in_memory != in_memory {
                let (asked, runs) = if in_memory {
                    (":local-in-memory:", "keeps its state on disk")
                } else {
                    (":local:", "keeps its state in memory only")
                };
                return Err(CliError::Config(format!(
                    "this federation asks for {asked}, and the local simulation SuperLink running \
                     (process {}) {runs}: end it (kill {}) to start the other kind",
                    running.pid, running.pid
                )));
            }
            answering(running).await.ok_or_else(|| {
                CliError::Connect(format!(
                    "the local simulation SuperLink (process {}) does not answer; see {}",
                    running.pid,
                    dir.join("superlink.log").display()
                ))
            })?
        }
        _ => start(&dir, in_memory).await?,
    };
    drop(lock);
    Ok(federation(endpoints))
}

/// Makes `dir` (and its parents), readable by this user only: it holds the SuperLink's keys.
fn private_dir(dir: &Path) -> Result<(), CliError> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    let failed = |e: std::io::Error| CliError::Io(format!("{}: {e}", dir.display()));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(failed)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(failed)
}

/// The local SuperLink `superlink.toml` records, if it does.
fn recorded(dir: &Path) -> Option<Endpoints> {
    toml::from_str(&std::fs::read_to_string(dir.join("superlink.toml")).ok()?).ok()
}

/// `running`, once its health endpoint answers (it may be starting, or busy), within
/// [`STARTUP_TIMEOUT`].
async fn answering(running: Endpoints) -> Option<Endpoints> {
    let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
    while tokio::time::Instant::now() < deadline && running.alive() {
        if healthy(running.health).await {
            return Some(running);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// Whether `GET /health` at `address` answers 200 within [`PROBE_TIMEOUT`].
async fn healthy(address: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        Some(head.starts_with(b"HTTP/1.1 200"))
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, probe).await,
        Ok(Some(true))
    )
}

/// Starts `flower-superlink --simulation` with its files in `dir`, detached (it outlives this
/// `flwr`), and waits until it answers.
async fn start(dir: &Path, in_memory: bool) -> Result<Endpoints, CliError> {
    let program = program()?;
    let certificates = dir.join("certificates");
    let made = ["ca.crt", "server.pem", "server.key"]
        .iter()
        .all(|file| certificates.join(file).is_file());
    if !made {
        certs::generate::generate_certificates(&certificates, &[], true)?;
    }
    let operator = dir.join("operator");
    if !operator.is_file() || !certs::generate::public_path(&operator).is_file() {
        certs::generate::write_key_pair(&operator, "simulation", true)?;
    }
    let mut endpoints = Endpoints {
        pid: 0,
        control: SocketAddr::from(([127, 0, 0, 1], free_port(true)?)),
        health: SocketAddr::from(([127, 0, 0, 1], free_port(false)?)),
        in_memory,
    };
    let log_path = dir.join("superlink.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| CliError::Io(format!("{}: {e}", log_path.display())))?;
    let log_err = log
        .try_clone()
        .map_err(|e| CliError::Io(format!("{}: {e}", log_path.display())))?;
    let database = if in_memory {
        "--database=:flwr-in-memory:".to_string()
    } else {
        format!("--database={}", dir.join("state.redb").display())
    };
    eprintln!(
        "Starting the local simulation SuperLink on {} (log: {})",
        endpoints.control,
        log_path.display()
    );
    let mut command = std::process::Command::new(&program);
    command
        .arg("--simulation")
        .arg("--ssl-ca-certfile")
        .arg(certificates.join("ca.crt"))
        .arg("--ssl-certfile")
        .arg(certificates.join("server.pem"))
        .arg("--ssl-keyfile")
        .arg(certificates.join("server.key"))
        .args(["--fleet-api-address", "127.0.0.1:0"])
        .arg("--control-api-address")
        .arg(endpoints.control.to_string())
        .arg("--control-auth-public-keys")
        .arg(certs::generate::public_path(&operator))
        .args(["--serverappio-api-address", "127.0.0.1:0"])
        // Flower's HTTP port on a free one: Flower's own SuperLink may hold 8000.
        .args(["--host", "127.0.0.1", "--port", "0"])
        .arg("--health-server-address")
        .arg(endpoints.health.to_string())
        .arg("--apps-dir")
        .arg(dir.join("apps"))
        .arg(database)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log_err);
    // A process group of its own: the terminal's Ctrl-C for this flwr does not reach it.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command
        .spawn()
        .map_err(|e| CliError::Io(format!("cannot start {}: {e}", program.display())))?;
    endpoints.pid = child.id();
    let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
    loop {
        if healthy(endpoints.health).await {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(CliError::Connect(format!(
                "the local simulation SuperLink exited ({status}); see {}",
                log_path.display()
            )));
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill();
            return Err(CliError::Connect(format!(
                "the local simulation SuperLink did not answer within {STARTUP_TIMEOUT:?}; see {}",
                log_path.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recorded = toml::to_string(&endpoints).map_err(|e| CliError::Io(e.to_string()))?;
    std::fs::write(dir.join("superlink.toml"), recorded)
        .map_err(|e| CliError::Io(format!("{}: {e}", dir.display())))?;
    Ok(endpoints)
}

/// `flower-superlink` beside this `flwr`, else on `PATH`.
fn program() -> Result<PathBuf, CliError> {
    let beside = std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name(PROGRAM))
        .filter(|path| path.is_file());
    let on_path = || {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|dir| dir.join(PROGRAM))
            .find(|path| path.is_file())
    };
    beside.or_else(on_path).ok_or_else(|| {
        CliError::Config(format!(
            "a simulation federation runs on a local {PROGRAM}, and there is none beside flwr nor \
             on PATH: install flower-rs's binaries (cargo build --release --bins)"
        ))
    })
}

/// A loopback port free right now, for UDP (`udp`) or TCP.
fn free_port(udp: bool) -> Result<u16, CliError> {
    let address = if udp {
        std::net::UdpSocket::bind("127.0.0.1:0").and_then(|socket| socket.local_addr())
    } else {
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|socket| socket.local_addr())
    };
    address
        .map(|address| address.port())
        .map_err(|e| CliError::Io(format!("no free loopback port: {e}")))
}
