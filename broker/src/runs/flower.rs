//! Flower's own ServerApps: a run whose bundle is a FAB runs its Python ServerApp in Flower's
//! `flwr-serverapp` (from the `flwr` package: `--flwr-serverapp`, else found on `PATH`), started
//! with a one-time token against Flower 1.42's runtime API, which the SuperLink serves on a
//! loopback port ([`flower_runtime::serverapp`]). The app's instructions go to the nodes through
//! the run's [`BrokerGrid`] like any other app's, its log output becomes the run's log, and the
//! run completes or fails as the app reports. Stopping the run kills the app's process group.
//!
//! The app runs in a fresh directory of its own; what it leaves there (a final model, plots)
//! becomes the run's artifacts, which `flwr pull` fetches, and the directory is removed.

use super::grid::BrokerGrid;
use super::output::{SERVER_APP_OUTPUT, quoted};
use crate::state::Shared;
use flower_runtime::serverapp::{Federation, Liveness, Outgoing, ServerAppTask, ServerOutcome};
use flower_runtime::task::{FabRef, TaskInput, Tasks};
use model::app::{AppError, Grid, Instruction, ServerApp, ServerContext};
use model::bundle::Bundle;
use ops::app_process::{AppProcess, EXIT_GRACE, Ended, OUTPUT_GRACE};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use wire::message::{ErrorCode, MessageError, MessageType, now_ms};
use wire::{Message, MessageBody, MessageId, NodeId};

/// The program's name, as the `flwr` package installs it.
pub const PROGRAM: &str = "flwr-serverapp";

/// Most bytes of objects a ServerApp may have pushed and not yet sent.
const MAX_PUSHED_BYTES: u64 = 4 << 30;

/// Longest an instruction waits for its reply (Flower's default time to live is 12 hours).
const MAX_TTL: Duration = Duration::from_secs(12 * 60 * 60);

/// Most batches of log lines waiting to be written.
const LOG_QUEUE: usize = 256;

/// How long the app's last log lines may take to be written when it ends.
const LOG_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the app's liveness is checked (against `BrokerConfig::flower_app_patience`).
const WATCHDOG_PERIOD: Duration = Duration::from_secs(1);

/// Most files of the app's directory kept as artifacts.
const MAX_ARTIFACTS: usize = 64;

/// Most bytes of artifacts kept from one run.
const MAX_ARTIFACT_BYTES: u64 = 1 << 30;

/// Flower's runtime API on the SuperLink: where ServerApp processes connect, and their tasks.
pub struct FlowerRuntime {
    /// Tasks by token.
    pub tasks: Arc<Tasks<ServerAppTask>>,
    /// The API's address (loopback).
    pub address: SocketAddr,
}

impl FlowerRuntime {
    /// Serves the API on a free loopback port until `shutdown` (inside the broker's runtime).
    pub fn start(shutdown: CancellationToken) -> std::io::Result<FlowerRuntime> {
        let listener =
            std::net::TcpListener::bind(SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)))?;
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let address = listener.local_addr()?;
        let tasks: Arc<Tasks<ServerAppTask>> = Arc::new(Tasks::default());
        tokio::spawn(flower_runtime::server::serve(
            listener,
            tasks.clone(),
            shutdown,
        ));
        Ok(FlowerRuntime { tasks, address })
    }
}

/// `given`, or `flwr-serverapp` on `PATH`.
pub fn find_program(given: Option<&Path>) -> Result<PathBuf, String> {
    flower_runtime::launch::find_program(
        PROGRAM,
        "--flwr-serverapp",
        given,
        None,
        "install Flower's runtime where the SuperLink runs (pip install 'flwr==1.42.*', then \
         start flower-superlink with that environment's bin on PATH), or give --flwr-serverapp PATH",
    )
}

/// A run's Flower ServerApp.
pub struct FlowerServerApp {
    /// The broker.
    pub shared: Arc<Shared>,
    /// The run's FAB, checked.
    pub bundle: Arc<Bundle>,
    /// Cancelled when the run is stopped or the broker shuts down.
    pub cancel: CancellationToken,
    /// The broker's runtime.
    pub handle: tokio::runtime::Handle,
}

impl ServerApp for FlowerServerApp {
    fn run(&self, _grid: &dyn Grid, context: &ServerContext) -> Result<(), AppError> {
        self.handle.block_on(self.supervise(context))
    }
}

impl FlowerServerApp {
    fn input(&self, context: &ServerContext) -> Result<TaskInput, AppError> {
        let fab = self.bundle.fab.as_ref().ok_or_else(|| {
            AppError::new("the run's bundle names a Flower ServerApp but is no FAB")
        })?;
        let hash = self.bundle.hash.to_string();
        let fab = FabRef {
            fab_id: &fab.fab_id,
            version: &fab.version,
            hash: &hash,
            archive: &fab.archive,
        };
        Ok(TaskInput::server(
            context.run_id.0,
            fab,
            &context.run_config,
        ))
    }

    async fn supervise(&self, context: &ServerContext) -> Result<(), AppError> {
        let program =
            find_program(self.shared.config.flwr_serverapp.as_deref()).map_err(AppError::new)?;
        // The app's instructions are sent with a grid of their own, whose sends end when the app
        // does (or the run is stopped), so none outlives it waiting for a reply.
        let sends = self.cancel.child_token();
        let _end_sends = sends.clone().drop_guard();
        let grid = Arc::new(BrokerGrid::new(
            self.shared.clone(),
            context.run_id,
            sends,
            self.handle.clone(),
        ));
        let federation = Arc::new(BrokerFederation::new(
            self.shared.clone(),
            grid,
            context.run_id,
        ));
        let task = ServerAppTask::new(self.input(context)?, federation.clone(), MAX_PUSHED_BYTES);
        let runtime = &self.shared.flower;
        let admitted = runtime.tasks.admit_scoped(task.clone());
        // A fresh FLWR_HOME for each execution, removed when it ends: Flower reuses an install
        // it finds there without looking at it again.
        let execution = flower_runtime::launch::Execution::create(
            &self.shared.config.apps_dir.join("flwr-home"),
            admitted.token(),
        )
        .map_err(|e| AppError::new(format!("cannot make the Flower app's directory: {e}")))?;
        // Flower's SuperLink sends the app's output nowhere: what it says reaches the run's log
        // through push-logs. Stderr is kept to explain a crash before that starts.
        let workdir = self.workdir(context.run_id)?;
        let mut command =
            flower_runtime::launch::app_command(&program, runtime.address, &execution);
        command.current_dir(workdir.path());
        let mut process = AppProcess::spawn(&mut command, SERVER_APP_OUTPUT)
            .map_err(|e| AppError::new(format!("cannot start {}: {e}", program.display())))?;
        let patience = self.shared.config.flower_app_patience;
        let interruption = async {
            tokio::select! {
                () = self.cancel.cancelled() => None,
                liveness = unheard(&task, patience) => Some(liveness),
            }
        };
        let ended: Result<ServerOutcome, String> = match process
            .until(task.finished(), interruption, OUTPUT_GRACE)
            .await
        {
            Ended::Reported(outcome) => {
                // It reported how it ended: it may take a moment to exit.
                process.exit_within(EXIT_GRACE).await;
                Ok(outcome)
            }
            Ended::Exited(status) => {
                task.abandon();
                let last_words = process.last_words().await;
                Err(format!(
                    "flwr-serverapp {} without reporting how the app ended{}",
                    ops::process::describe_exit(status),
                    quoted(&last_words)
                ))
            }
            Ended::Interrupted(None) => {
                // Stopped (or the SuperLink is shutting down): nothing of it is kept.
                task.abandon();
                return Err(AppError::new("the run was stopped"));
            }
            Ended::Interrupted(Some(liveness)) => {
                task.abandon();
                process.kill();
                let last_words = quoted(&process.last_words().await);
                Err(match liveness {
                    Liveness::NeverStarted => format!(
                        "flwr-serverapp did not take its input within {patience:?}; it was killed{last_words}"
                    ),
                    _ => format!(
                        "flwr-serverapp went silent (no heartbeat for {patience:?}); it was killed{last_words}"
                    ),
                })
            }
        };
        // Whatever ended it, every process of the app ends now, before its files are read:
        // none is left to change them.
        process.kill();
        // Its last output is in the run's log before the run is declared over.
        federation.flush(LOG_FLUSH_TIMEOUT);
        keep_artifacts(&self.shared, context.run_id, workdir);
        match ended.map_err(AppError::new)? {
            ServerOutcome {
                sub_status: Some(status),
                ..
            } if status == "completed" => Ok(()),
            ServerOutcome {
                sub_status,
                details,
            } => Err(AppError::new(format!(
                "the Flower ServerApp {}: {}",
                sub_status.as_deref().unwrap_or("ended"),
                wire::text::sanitize(&details, 4096)
            ))),
        }
    }
}

impl FlowerServerApp {
    /// A fresh, private directory for the app to run in.
    fn workdir(&self, run_id: wire::RunId) -> Result<WorkDir, AppError> {
        let runs = self.shared.config.apps_dir.join("flower-runs");
        let path = runs.join(run_id.to_string());
        let made = ops::private_dir::create_private_dir(&runs)
            .map_err(std::io::Error::from)
            .and_then(|()| {
                // A run resumed after a restart starts afresh, as its app does.
                match std::fs::remove_dir_all(&path) {
                    Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                        return Err(error);
                    }
                    _ => {}
                }
                std::fs::create_dir(&path)
            });
        made.map(|()| WorkDir(path)).map_err(|e| {
            AppError::new(format!(
                "cannot make the app's directory in {}: {e}",
                runs.display()
            ))
        })
    }
}

/// The directory a ServerApp runs in, removed when dropped.
struct WorkDir(PathBuf);

impl WorkDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An artifact's name for the file at `relative` (`/` becomes `-`, other characters an artifact
/// name cannot hold become `_`); `None` for hidden files and Python's caches.
fn artifact_name(relative: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for part in relative.components() {
        let part = part.as_os_str().to_string_lossy();
        if part.starts_with('.') || part == "__pycache__" {
            return None;
        }
        let part: String = part
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        parts.push(part);
    }
    let name = parts.join("-");
    super::program::valid_artifact_name(&name).then_some(name)
}

/// Most directory entries looked at when collecting a ServerApp's files.
const MAX_ENTRIES_WALKED: usize = 10_000;

/// Reads the regular file at `path` if it is one (a link, a pipe or a device is not opened
/// through), and if it holds at most `limit` bytes.
fn read_regular_file(path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let flags = nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(path)
        .map_err(|e| e.to_string())?;
    let metadata = file.metadata().map_err(|e| e.to_string())?;
    if !metadata.is_file() {
        return Err("not a regular file".into());
    }
    if metadata.len() > limit {
        return Err(format!("over {limit} bytes"));
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > limit {
        return Err(format!("over {limit} bytes"));
    }
    Ok(bytes)
}

/// Stores the regular files the app left in `workdir` as the run's artifacts (within
/// [`MAX_ARTIFACTS`] and [`MAX_ARTIFACT_BYTES`], looking at no more than [`MAX_ENTRIES_WALKED`]
/// entries; what is left out is said in the run's log), then removes the directory. Every
/// process of the app has ended by then.
fn keep_artifacts(shared: &Shared, run_id: wire::RunId, workdir: WorkDir) {
    let mut files = Vec::new();
    let mut pending = vec![workdir.path().to_path_buf()];
    let mut walked = 0usize;
    'walk: while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            walked += 1;
            if walked > MAX_ENTRIES_WALKED {
                break 'walk;
            }
            // The entry's own type: a link is never followed.
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    let mut names = std::collections::HashSet::new();
    let (mut bytes, mut left_out, mut more_left_out) = (0u64, Vec::new(), 0usize);
    let mut leave_out = |name: String, left_out: &mut Vec<String>| {
        if left_out.len() < 10 {
            left_out.push(name);
        } else {
            more_left_out += 1;
        }
    };
    for path in files {
        let Some(name) = path
            .strip_prefix(workdir.path())
            .ok()
            .and_then(artifact_name)
        else {
            continue;
        };
        let room = MAX_ARTIFACT_BYTES
            .saturating_sub(bytes)
            .min(super::program::MAX_STORED_BYTES);
        if names.len() == MAX_ARTIFACTS || names.contains(&name) {
            leave_out(name, &mut left_out);
            continue;
        }
        let saved = read_regular_file(&path, room).and_then(|contents| {
            let size = contents.len() as u64;
            shared
                .store
                .save_artifact(run_id, &name, &contents)
                .map(|()| size)
                .map_err(|e| e.to_string())
        });
        match saved {
            Ok(size) => {
                bytes += size;
                names.insert(name);
            }
            Err(error) => {
                tracing::warn!(%error, artifact = %name, "a ServerApp's file is not kept");
                leave_out(name, &mut left_out);
            }
        }
    }
    if !names.is_empty() {
        shared.runs.log(
            &shared.store,
            run_id,
            &format!(
                "Kept {} file(s) the ServerApp wrote as the run's artifacts (flwr pull)",
                names.len()
            ),
        );
    }
    if !left_out.is_empty() || walked > MAX_ENTRIES_WALKED {
        let more = if more_left_out > 0 {
            format!(" and {more_left_out} more")
        } else {
            String::new()
        };
        let unwalked = if walked > MAX_ENTRIES_WALKED {
            format!("; only the first {MAX_ENTRIES_WALKED} entries of its directory were looked at")
        } else {
            String::new()
        };
        shared.runs.log(
            &shared.store,
            run_id,
            &format!(
                "Not kept (over {MAX_ARTIFACTS} files or {MAX_ARTIFACT_BYTES} bytes, a name \
                 taken, or unreadable): {}{more}{unwalked}",
                left_out.join(", ")
            ),
        );
    }
}

/// Resolves once the app has not been heard from within `patience`.
async fn unheard(task: &ServerAppTask, patience: Duration) -> Liveness {
    loop {
        tokio::time::sleep(WATCHDOG_PERIOD).await;
        match task.liveness(patience) {
            Liveness::Alive => {}
            unheard => return unheard,
        }
    }
}

/// What the log writer is handed.
enum LogWork {
    /// Lines to append.
    Lines(Vec<String>),
    /// Everything handed before is written: say so.
    Flush(std::sync::mpsc::Sender<()>),
}

/// The run's federation, as the Flower ServerApp's task uses it.
struct BrokerFederation {
    grid: Arc<BrokerGrid>,
    /// Batches of log lines, written in order by a thread of their own: a log write commits to
    /// the database, which no request of the app's should wait on. The queue is bounded; what
    /// does not fit is counted and said.
    logs: std::sync::mpsc::SyncSender<LogWork>,
    /// Lines dropped because the queue was full.
    dropped: Arc<std::sync::atomic::AtomicUsize>,
}

impl BrokerFederation {
    fn new(shared: Arc<Shared>, grid: Arc<BrokerGrid>, run_id: wire::RunId) -> Self {
        let (logs, work) = std::sync::mpsc::sync_channel::<LogWork>(LOG_QUEUE);
        let dropped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = dropped.clone();
        // Ends when the federation, and with it every sender, is dropped.
        std::thread::spawn(move || {
            for item in work {
                match item {
                    LogWork::Lines(mut lines) => {
                        let lost = counted.swap(0, std::sync::atomic::Ordering::Relaxed);
                        if lost > 0 {
                            lines.insert(
                                0,
                                format!(
                                    "({lost} lines of the ServerApp's output were dropped: it \
                                     wrote faster than the log could keep)"
                                ),
                            );
                        }
                        shared.runs.log_lines(&shared.store, run_id, &lines);
                    }
                    LogWork::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        BrokerFederation {
            grid,
            logs,
            dropped,
        }
    }

    /// Waits (at most `timeout`) until every line handed so far is written.
    fn flush(&self, timeout: Duration) {
        let (done, written) = std::sync::mpsc::channel();
        if self.logs.send(LogWork::Flush(done)).is_ok() {
            let _ = written.recv_timeout(timeout);
        }
    }

    fn queue(&self, lines: Vec<String>) {
        let count = lines.len();
        if self.logs.try_send(LogWork::Lines(lines)).is_err() {
            self.dropped
                .fetch_add(count, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Flower's message type as this project's; `None` for one its nodes do not take.
fn message_type(name: &str) -> Option<MessageType> {
    match name {
        "train" => Some(MessageType::Train),
        "evaluate" => Some(MessageType::Evaluate),
        "query" => Some(MessageType::Query),
        _ => None,
    }
}

impl Federation for BrokerFederation {
    fn node_ids(&self) -> Result<Vec<u64>, String> {
        self.grid
            .node_ids()
            .map(|ids| ids.into_iter().map(|id| id.0).collect())
            .map_err(|e| e.to_string())
    }

    fn send(&self, task: Arc<ServerAppTask>, instructions: Vec<Outgoing>) {
        let mut ids = Vec::with_capacity(instructions.len());
        let mut sendable = Vec::with_capacity(instructions.len());
        let mut ttl = Duration::ZERO;
        for outgoing in instructions {
            let dst = NodeId(outgoing.dst_node_id);
            let Some(message_type) = message_type(&outgoing.message_type) else {
                let reason = format!(
                    "message type {:?} is not one flower-rs nodes take (train, evaluate, query)",
                    outgoing.message_type
                );
                task.deliver(
                    &outgoing.flower_id,
                    &refusal(dst, &outgoing.group_id, reason),
                );
                continue;
            };
            let instruction_ttl = Duration::try_from_secs_f64(outgoing.ttl)
                .unwrap_or(MAX_TTL)
                .min(MAX_TTL);
            ttl = ttl.max(instruction_ttl);
            ids.push(outgoing.flower_id);
            sendable.push(Instruction {
                dst,
                message_type,
                group_id: outgoing.group_id,
                content: outgoing.content,
            });
        }
        if sendable.is_empty() {
            return;
        }
        let grid = self.grid.clone();
        let logs = self.logs.clone();
        tokio::spawn(async move {
            let result = grid
                .send_indexed(sendable, ttl, |index, reply| {
                    if let MessageBody::Error(error) = &reply.body {
                        // The app may say nothing of it: the run's log does.
                        let line = format!(
                            "node {} answered with an error: {}",
                            reply.metadata.src_node_id, error.reason
                        );
                        let _ = logs.try_send(LogWork::Lines(vec![line]));
                    }
                    if let Some(id) = ids.get(index).cloned() {
                        // Made into Flower's objects (hashing a model's bytes) off the runtime.
                        let task = task.clone();
                        tokio::task::spawn_blocking(move || task.deliver(&id, &reply));
                    }
                })
                .await;
            if let Err(error) = result {
                tracing::debug!(%error, "a Flower ServerApp's send ended early");
            }
        });
    }

    fn log(&self, lines: Vec<String>) {
        self.queue(lines);
    }
}

/// An error reply from `node`, in place of one it was never sent.
fn refusal(node: NodeId, group_id: &str, reason: String) -> Message {
    Message {
        metadata: wire::message::Metadata {
            run_id: wire::RunId(0),
            message_id: MessageId::random(),
            src_node_id: node,
            dst_node_id: NodeId::SERVER,
            reply_to: None,
            group_id: group_id.to_string(),
            ttl_ms: 0,
            message_type: MessageType::Query,
            created_at_ms: now_ms(),
        },
        body: MessageBody::Error(MessageError {
            code: ErrorCode::InvalidReply,
            reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_limit_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("model.npy");
        std::fs::write(&file, b"weights").unwrap();
        assert_eq!(read_regular_file(&file, 100).unwrap(), b"weights");
        assert!(read_regular_file(&file, 3).is_err(), "over the limit");
        let link = dir.path().join("secret");
        std::os::unix::fs::symlink("/etc/hostname", &link).unwrap();
        assert!(
            read_regular_file(&link, 1 << 20).is_err(),
            "a link is not followed"
        );
        let fifo = dir.path().join("pipe");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        // A pipe with no writer would block a plain open forever.
        assert!(
            read_regular_file(&fifo, 1 << 20).is_err(),
            "a pipe is not read"
        );
    }

    #[test]
    fn artifact_names_flatten_paths_and_skip_hidden_files_and_caches() {
        assert_eq!(
            artifact_name(Path::new("outputs/final model.pt")).as_deref(),
            Some("outputs-final_model.pt")
        );
        assert_eq!(artifact_name(Path::new(".cache/x")), None);
        assert_eq!(artifact_name(Path::new("pkg/__pycache__/m.pyc")), None);
    }
}
