//! Flower's own ClientApps. For each instruction of a run whose bundle is a FAB, the node starts
//! Flower's `flwr-clientapp` (from the `flwr` package, found on `PATH` or given with
//! `--flwr-clientapp`) with a one-time token, and serves it Flower 1.42's runtime API on a
//! loopback port ([`flower_runtime::clientapp`]): the app installs the FAB, takes the instruction,
//! runs the Python ClientApp and pushes its reply, which the node sends back over the fleet like
//! any other. The context's state the app leaves behind is handed to the run's next task, as
//! Flower's SuperNode does.
//!
//! Nothing the app does can take the node down: a missing program, a crash, a process that never
//! connects or hangs past the instruction's time to live each cost that instruction an error
//! reply, and the process group is killed whatever happens.
//!
//! By default a run's process stays warm between its instructions ([`warm`]): the FAB is
//! installed and the app imported once per run on each node, not once per instruction.

pub mod warm;

use crate::isolation::{CLIENT_APP_OUTPUT, stopped};
use app_bundle::Fab;
use flower_runtime::clientapp::{ClientAppTask, ContextStates, TaskOutcome};
use flower_runtime::launch::Execution;
use flower_runtime::messages::{body_from_objects, metadata_to_proto};
use flower_runtime::objects::{Body, deflate};
use flower_runtime::tasks::{FabRef, TaskInput, Tasks};
use ops::app_process::{AppProcess, EXIT_GRACE, Ended, OUTPUT_GRACE, Output};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use warm::{Warm, WarmLimits, WarmPool};
use wire::message::{ErrorCode, MessageError};
use wire::{BundleHash, ConfigRecord, Message, MessageBody, NodeId};

/// The program's name, as the `flwr` package installs it.
pub const PROGRAM: &str = "flwr-clientapp";

/// What to do when Flower's program is missing.
const INSTALL_HINT: &str = "install Flower's runtime where the node runs \
     (pip install 'flwr==1.42.*', then start flower-supernode with that environment's bin on PATH), \
     or give --flwr-clientapp PATH";

/// Largest reply a ClientApp may send (its records, in all).
const MAX_REPLY_BYTES: u64 = 1 << 30;

/// The node's Flower ClientApps: the runtime API their processes use, and what they keep.
pub struct FlowerClientApps {
    /// `--flwr-clientapp`, if given.
    program: Option<PathBuf>,
    /// Where the API listens (loopback).
    address: SocketAddr,
    /// Tasks by token.
    tasks: Arc<Tasks>,
    /// Where each process gets a fresh `FLWR_HOME` of its own, removed when it ends.
    home: PathBuf,
    /// Each run's context state.
    states: ContextStates,
    /// Runs' processes waiting for their next instruction.
    warm: Arc<WarmPool>,
    /// Set when a warm process could not start (its Python's Flower is not what the runner
    /// needs): every instruction then gets a `flwr-clientapp` of its own.
    warm_failed: std::sync::atomic::AtomicBool,
    /// A process whose resident memory passes this many bytes is killed, and its instruction
    /// answered with an error (`--max-clientapp-memory`).
    memory_limit: Option<u64>,
}

/// What one instruction's task is given besides the instruction.
pub struct FlowerJob<'a> {
    /// This node.
    pub node_id: NodeId,
    /// `--node-config`.
    pub node_config: &'a ConfigRecord,
    /// The run's config: the app's defaults with the run's overrides.
    pub run_config: &'a ConfigRecord,
    /// The run's FAB.
    pub fab: &'a Fab,
    /// Its SHA-256.
    pub hash: BundleHash,
}

impl FlowerClientApps {
    /// Serves the runtime API on `address` until `shutdown`; processes install FABs under
    /// `home`, are `program` when given, else Flower's `flwr-clientapp` on `PATH`, stay warm
    /// between a run's instructions within `warm`, and are killed beyond `memory_limit` bytes.
    pub async fn start(
        address: SocketAddr,
        program: Option<PathBuf>,
        home: PathBuf,
        warm: WarmLimits,
        memory_limit: Option<u64>,
        shutdown: CancellationToken,
    ) -> std::io::Result<Arc<Self>> {
        let listener = tokio::net::TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        let tasks = Arc::new(Tasks::default());
        tokio::spawn(flower_runtime::server::serve(
            listener,
            tasks.clone(),
            shutdown.clone(),
        ));
        let warm = Arc::new(WarmPool::new(warm));
        if warm.enabled() {
            tokio::spawn(reap_idle(warm.clone(), shutdown));
        }
        Ok(Arc::new(FlowerClientApps {
            program,
            address,
            tasks,
            home,
            states: ContextStates::default(),
            warm,
            warm_failed: std::sync::atomic::AtomicBool::new(false),
            memory_limit,
        }))
    }

    /// The run stopped: its waiting process, if any, is killed.
    pub fn end_run(&self, run_id: u64) {
        self.warm.end_run(run_id);
        self.states.forget_run(run_id);
    }

    /// The process id of `run_id`'s warm process waiting for its next instruction, if any.
    pub fn warm_process_id(&self, run_id: u64) -> Option<u32> {
        self.warm.process_id(run_id)
    }

    /// Where the runtime API listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Runs the FAB's ClientApp on `instruction` in a `flwr-clientapp` process; its reply's
    /// body, or an error saying why there is none.
    pub async fn answer(
        &self,
        job: &FlowerJob<'_>,
        instruction: &Message,
        cancelled: Arc<AtomicBool>,
    ) -> MessageBody {
        let started = std::time::Instant::now();
        match self.supervise(job, instruction, cancelled).await {
            Ok(body) => {
                tracing::info!(elapsed = ?started.elapsed(), app = %job.fab.fab_id, "Flower ClientApp finished");
                body
            }
            Err(reason) => {
                tracing::warn!(%reason, app = %job.fab.fab_id, "Flower ClientApp failed");
                MessageBody::Error(MessageError {
                    code: ErrorCode::ClientAppRaisedException,
                    reason,
                })
            }
        }
    }

    async fn supervise(
        &self,
        job: &FlowerJob<'_>,
        instruction: &Message,
        cancelled: Arc<AtomicBool>,
    ) -> Result<MessageBody, String> {
        let program = find_program(self.program.as_deref())?;
        let MessageBody::Content(content) = &instruction.body else {
            return Err("the instruction carries an error, not records".into());
        };
        let metadata = metadata_to_proto(instruction);
        let deflated = deflate(&metadata, &Body::Content(content.clone()))
            .map_err(|e| format!("the instruction cannot be given to a Flower app: {e}"))?;
        let run_id = instruction.metadata.run_id;
        let hash = job.hash.to_string();
        let fab = FabRef {
            fab_id: &job.fab.fab_id,
            version: &job.fab.version,
            hash: &hash,
            archive: &job.fab.archive,
        };
        let input = TaskInput::client(
            run_id.0,
            job.node_id.0,
            fab,
            job.node_config,
            job.run_config,
            &self.states,
        )
        .map_err(|e| format!("the instruction cannot be given to a Flower app: {e}"))?;
        let task = ClientAppTask::new(input, metadata, deflated, MAX_REPLY_BYTES);
        let admitted = self.tasks.admit_scoped(task.clone());
        let warm = warm::python_of(&program).filter(|_| self.warm_usable());
        let warmed = match warm {
            Some(python) => {
                let fab = (run_id.0, hash.as_str());
                self.run_warm(
                    &python,
                    fab,
                    admitted.token(),
                    &task,
                    instruction,
                    &cancelled,
                )
                .await?
            }
            None => None,
        };
        let outcome = match warmed {
            Some(outcome) => outcome,
            None => {
                self.run_process(&program, admitted.token(), &task, instruction, &cancelled)
                    .await?
            }
        };
        self.states.keep(run_id.0, job.node_id.0, &outcome);
        let Some(reply) = outcome.reply else {
            let status = outcome.sub_status.as_deref().unwrap_or("no output");
            let details = wire::text::sanitize(&outcome.details, 4096);
            return Err(format!(
                "flwr-clientapp ended without a reply ({status}){}",
                if details.is_empty() {
                    String::new()
                } else {
                    format!(": {details}")
                }
            ));
        };
        // The task took only a reply to this instruction, and inflating checks its objects say so.
        let reply = reply
            .inflate(MAX_REPLY_BYTES)
            .map_err(|e| format!("the Flower ClientApp's reply is unusable: {e}"))?;
        Ok(body_from_objects(reply.body))
    }

    /// Whether warm processes are kept, and starting one has not failed.
    fn warm_usable(&self) -> bool {
        self.warm.enabled() && !self.warm_failed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Hands the task of `token` to the run's warm process (started when it has none, or when
    /// the one it had is gone or stuck) and waits for the task's outcome. A process whose task
    /// completed goes back to wait for the run's next instruction; one whose task failed, or
    /// that crashed, or that the run's stop or the instruction's time to live interrupted, is
    /// killed with its group. `None` when a fresh process exited before taking the task (a
    /// Python whose Flower is not 1.42's, say): warm processes are then given up with a
    /// warning, and the task is the caller's to run in a process of its own.
    async fn run_warm(
        &self,
        python: &Path,
        fab: (u64, &str),
        token: &str,
        task: &ClientAppTask,
        instruction: &Message,
        cancelled: &AtomicBool,
    ) -> Result<Option<TaskOutcome>, String> {
        let run_id = fab.0;
        let start = || Warm::start(python, self.address, &self.home, fab, flower_output());
        let ttl = Duration::from_millis(instruction.metadata.ttl_ms);
        let deadline = tokio::time::Instant::now() + ttl;
        let mut waiting = self.warm.take(run_id);
        loop {
            let reused = waiting.is_some();
            let mut warm = match waiting.take() {
                Some(warm) => warm,
                None => start()?,
            };
            let fed = warm.feed(token).await;
            if fed.is_err() || (reused && !taken_within(&mut warm, task).await) {
                if reused {
                    // Gone, or stuck since its last task: a fresh process gets the task.
                    continue;
                }
                return Err("the ClientApp process does not take its tasks".into());
            }
            let interruption = self.interruption_at(deadline, ttl, cancelled, warm.process.id());
            match warm
                .process
                .until(task.finished(), interruption, OUTPUT_GRACE)
                .await
            {
                Ended::Reported(outcome) => {
                    let completed = outcome.reply.is_some()
                        && outcome.sub_status.as_deref() == Some("completed");
                    if completed && !cancelled.load(std::sync::atomic::Ordering::Relaxed) {
                        self.warm.put(run_id, warm);
                    }
                    return Ok(Some(outcome));
                }
                Ended::Exited(_) if !task.started() && !reused => {
                    tracing::warn!(
                        python = %python.display(),
                        "a warm Flower ClientApp process exited before taking its task; \
                         this node starts flwr-clientapp for every instruction from now on"
                    );
                    self.warm_failed
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    return Ok(None);
                }
                Ended::Exited(status) => {
                    task.abandon();
                    return Err(warm
                        .process
                        .crash_report(status, "the client app process", "before replying")
                        .await);
                }
                Ended::Interrupted(reason) => {
                    task.abandon();
                    return Err(reason);
                }
            }
        }
    }

    /// Starts `program` for the task of `token` and waits for the task's outcome; kills the
    /// process group when the run is stopped or the instruction's time to live runs out.
    async fn run_process(
        &self,
        program: &Path,
        token: &str,
        task: &ClientAppTask,
        instruction: &Message,
        cancelled: &AtomicBool,
    ) -> Result<TaskOutcome, String> {
        // A fresh FLWR_HOME for each execution, removed when it ends: what one execution does
        // to its install, no later one runs.
        let execution = Execution::create(&self.home, token)
            .map_err(|e| format!("cannot make the Flower app's directory: {e}"))?;
        let mut process = AppProcess::spawn(
            &mut flower_runtime::launch::app_command(program, self.address, &execution),
            flower_output(),
        )
        .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        let ttl = Duration::from_millis(instruction.metadata.ttl_ms);
        let deadline = tokio::time::Instant::now() + ttl;
        let interruption = self.interruption_at(deadline, ttl, cancelled, process.id());
        let outcome = match process
            .until(task.finished(), interruption, OUTPUT_GRACE)
            .await
        {
            Ended::Reported(outcome) => outcome,
            Ended::Exited(status) => {
                task.abandon();
                return Err(process
                    .crash_report(status, "the client app process", "before replying")
                    .await);
            }
            Ended::Interrupted(reason) => {
                task.abandon();
                return Err(reason);
            }
        };
        process.exit_within(EXIT_GRACE).await;
        Ok(outcome)
    }
}

/// Flower's program prints the app's own output on stdout: both streams are the node's log.
fn flower_output() -> Output {
    Output {
        stdout: true,
        ..CLIENT_APP_OUTPUT
    }
}

impl FlowerClientApps {
    /// Resolves when the node stops waiting for a task, saying why: the instruction's time to
    /// live `ttl` ran out at `deadline`, the run was stopped, or the process `pid` passed the
    /// memory limit.
    async fn interruption_at(
        &self,
        deadline: tokio::time::Instant,
        ttl: Duration,
        cancelled: &AtomicBool,
        pid: Option<u32>,
    ) -> String {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => format!(
                "the Flower ClientApp did not finish within the instruction's time to live \
                 ({ttl:?}); its process was killed"
            ),
            () = stopped(cancelled) => "run stopped".to_string(),
            reason = memory_exceeded(pid, self.memory_limit) => reason,
        }
    }
}

/// How often a ClientApp's memory is looked at.
const MEMORY_CHECK: Duration = Duration::from_millis(250);

/// Resolves when the process `pid`'s resident memory passes `limit` bytes, saying so; never
/// without both.
async fn memory_exceeded(pid: Option<u32>, limit: Option<u64>) -> String {
    let (Some(pid), Some(limit)) = (pid, limit) else {
        return std::future::pending().await;
    };
    let mut ticks = tokio::time::interval(MEMORY_CHECK);
    loop {
        ticks.tick().await;
        if let Some(resident) = ops::process::resident_bytes(pid)
            && resident > limit
        {
            return format!(
                "the Flower ClientApp's process used {} MiB, beyond this node's limit of {} MiB \
                 per client app (--max-clientapp-memory); it was killed",
                resident >> 20,
                limit >> 20
            );
        }
    }
}

/// How long a process that served an earlier task has to take the next one before it counts as
/// stuck.
const TAKE_PATIENCE: Duration = Duration::from_secs(10);

/// Whether `warm` takes `task` within [`TAKE_PATIENCE`] (and has not exited meanwhile).
async fn taken_within(warm: &mut Warm, task: &ClientAppTask) -> bool {
    // Looked at every millisecond: a warm process takes its task within a few, and in a
    // simulation every instruction waits for this.
    let taken = async {
        while !task.started() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    matches!(
        warm.process
            .until(taken, tokio::time::sleep(TAKE_PATIENCE), Duration::ZERO)
            .await,
        Ended::Reported(())
    )
}

/// Kills the processes that idled past the limit, now and then, until `shutdown`.
async fn reap_idle(pool: Arc<WarmPool>, shutdown: CancellationToken) {
    let period = (pool.limits().idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut ticks = tokio::time::interval(period);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {
                let reaped = pool.reap();
                if reaped > 0 {
                    tracing::debug!(reaped, "warm ClientApp processes idle past the limit ended");
                }
            }
        }
    }
}

/// `given`, or Flower's `flwr-clientapp` on `PATH`. This project's own `flwr-clientapp` (beside
/// this executable) runs this project's apps, not Flower's, so it is passed over.
pub fn find_program(given: Option<&Path>) -> Result<PathBuf, String> {
    let ours = std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name(PROGRAM));
    flower_runtime::launch::find_program(
        PROGRAM,
        "--flwr-clientapp",
        given,
        ours.as_deref(),
        INSTALL_HINT,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_says_what_to_install() {
        let error = find_program(Some(Path::new("/nonexistent/flwr-clientapp"))).unwrap_err();
        assert!(error.contains("pip install 'flwr==1.42.*'"), "{error}");
    }
}
