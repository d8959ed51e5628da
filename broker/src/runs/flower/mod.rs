//! Flower's own ServerApps: a run whose bundle is a FAB runs its Python ServerApp in Flower's
//! `flwr-serverapp` (from the `flwr` package: `--flwr-serverapp`, else found on `PATH`), started
//! with a one-time token against Flower 1.42's runtime API, which the SuperLink serves on a
//! loopback port ([`flower_runtime::serverapp`]). The app's instructions go to the nodes through
//! the run's [`BrokerGrid`] like any other app's, its log output becomes the run's log, and the
//! run completes or fails as the app reports. Stopping the run kills the app's process group.
//!
//! The app runs in a fresh directory of its own; what it leaves there (a final model, plots)
//! becomes the run's artifacts, which `flwr pull` fetches, and the directory is removed.

mod federation;

use super::grid::BrokerGrid;
use super::output::{SERVER_APP_OUTPUT, quoted};
use super::workdir::{OffRuntime, WorkDir, keep_artifacts};
use crate::state::Shared;
use app_bundle::Bundle;
use federation::BrokerFederation;
use flower_runtime::serverapp::{Liveness, ServerAppTask, ServerOutcome};
use flower_runtime::tasks::{FabRef, TaskInput};
use flwr_sdk::app::{AppError, ServerContext};
use ops::app_process::{AppProcess, EXIT_GRACE, Ended, OUTPUT_GRACE};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The program's name, as the `flwr` package installs it.
pub const PROGRAM: &str = "flwr-serverapp";

/// Most bytes of objects a ServerApp may have pushed and not yet sent.
const MAX_PUSHED_BYTES: u64 = 4 << 30;

/// How long the app's last log lines may take to be written when it ends.
const LOG_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the app's liveness is checked (against `BrokerConfig::flower_app_patience`).
const WATCHDOG_PERIOD: Duration = Duration::from_secs(1);

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
        TaskInput::server(context.run_id.0, fab, &context.run_config)
            .map_err(|e| AppError::new(format!("the run cannot be given to a Flower app: {e}")))
    }

    /// Runs the app in Flower's `flwr-serverapp` against `grid` until it reports how it ended,
    /// exits, goes silent, or the run is stopped; every process of it is gone, and the files it
    /// left are the run's artifacts, when this returns.
    pub async fn run(self, grid: Arc<BrokerGrid>, context: ServerContext) -> Result<(), AppError> {
        let program =
            find_program(self.shared.config.flwr_serverapp.as_deref()).map_err(AppError::new)?;
        // The app's sends end when the app does (or the run is stopped), so none outlives it
        // waiting for a reply.
        let (grid, _end_sends) = grid.scoped();
        let federation = Arc::new(BrokerFederation::new(
            self.shared.clone(),
            Arc::new(grid),
            context.run_id,
        ));
        let task = ServerAppTask::new(self.input(&context)?, federation.clone(), MAX_PUSHED_BYTES);
        let runtime = &self.shared.flower;
        let admitted = runtime.tasks.admit_scoped(task.clone());
        // A fresh FLWR_HOME for each execution, removed when it ends: Flower reuses an install
        // it finds there without looking at it again. And a fresh directory to run in. Both are
        // made, and removed, off the runtime.
        let home = self.shared.config.apps_dir.join("flwr-home");
        let runs = self.shared.config.apps_dir.join("flower-runs");
        let token = admitted.token().to_string();
        let run_id = context.run_id;
        let made = tokio::task::spawn_blocking(move || {
            let execution = flower_runtime::launch::Execution::create(&home, &token)
                .map_err(|e| format!("cannot make the Flower app's directory: {e}"))?;
            let workdir = WorkDir::create(&runs, run_id).map_err(|e| {
                format!("cannot make the app's directory in {}: {e}", runs.display())
            })?;
            Ok::<_, String>((OffRuntime::new(execution), OffRuntime::new(workdir)))
        })
        .await
        .map_err(|e| AppError::new(e.to_string()))?;
        let (execution, workdir) = made.map_err(AppError::new)?;
        // Flower's SuperLink sends the app's output nowhere: what it says reaches the run's log
        // through push-logs. Stderr is kept to explain a crash before that starts.
        let mut command =
            flower_runtime::launch::app_command(&program, runtime.address, execution.get());
        command.current_dir(workdir.get().path());
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
                // What it left running goes now, so its output ends.
                process.kill();
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
        // Its last output is in the run's log before the run is declared over, and its files
        // are the run's artifacts. Both wait on the disk: off the runtime.
        let shared = self.shared.clone();
        let (workdir, execution) = (workdir.take(), execution.take());
        let _ = tokio::task::spawn_blocking(move || {
            federation.flush(LOG_FLUSH_TIMEOUT);
            keep_artifacts(&shared, run_id, workdir);
            drop(execution);
        })
        .await;
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
