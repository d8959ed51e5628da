//! Runs: starting, stopping and following them. The server half of each run's app executes in
//! [`runner`] (found by [`apps`]) and reaches the nodes through [`grid::BrokerGrid`]: a built-in
//! app on a blocking thread, a bundle's [`program`] or a FAB's ServerApp in Flower's program
//! ([`flower`]) as supervised processes, whose output ([`output`]) and directory ([`workdir`])
//! are handled alike.

pub mod apps;
pub mod flower;
pub mod grid;
pub(crate) mod output;
pub mod program;
pub mod runner;
pub(crate) mod workdir;

use crate::store::Store;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wire::RunId;
use wire::control::{LogLine, RunStatus};
use wire::message::now_ms;

/// Longest log line kept, in characters; the rest is cut with a note.
pub const MAX_LOG_LINE: usize = 16 * 1024;

/// What followers of a run's log receive.
#[derive(Debug, Clone)]
pub enum RunEvent {
    /// A line was appended (and stored).
    Line(LogLine),
    /// The run is over.
    Finished(RunStatus),
}

/// A run whose server app is executing.
#[derive(Clone)]
struct ActiveRun {
    /// Cancelled when an operator stops the run.
    cancel: CancellationToken,
    /// Pushes log lines to followers as they are written.
    events: broadcast::Sender<RunEvent>,
}

/// The runs executing in this broker.
#[derive(Default)]
pub struct ActiveRuns {
    /// By run id; a std mutex because no lock is held across an await.
    runs: Mutex<HashMap<RunId, ActiveRun>>,
    /// Every run's task, so that a broker shutting down waits for its runs to stop.
    tasks: TaskTracker,
}

/// Events buffered per follower before it is considered lagging (it then re-reads the store).
const EVENT_BUFFER: usize = 1024;

impl ActiveRuns {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RunId, ActiveRun>> {
        // Inserts and removes only: a poisoned map is still consistent.
        self.runs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a starting run; returns its cancellation token.
    pub fn insert(&self, run_id: RunId) -> CancellationToken {
        let cancel = CancellationToken::new();
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        self.lock().insert(
            run_id,
            ActiveRun {
                cancel: cancel.clone(),
                events,
            },
        );
        cancel
    }

    /// The cancellation token of an executing run.
    pub fn token(&self, run_id: RunId) -> Option<CancellationToken> {
        self.lock().get(&run_id).map(|run| run.cancel.clone())
    }

    /// Forgets a finished run.
    pub fn remove(&self, run_id: RunId) {
        self.lock().remove(&run_id);
    }

    /// Follows a run's events; `None` when the run is not executing.
    pub fn subscribe(&self, run_id: RunId) -> Option<broadcast::Receiver<RunEvent>> {
        self.lock().get(&run_id).map(|run| run.events.subscribe())
    }

    /// Appends a line to a run's log in `store` and pushes it to followers. Lines often quote
    /// nodes, so control characters are stored escaped: no reader's terminal obeys them, and a line
    /// stays one line. A storage failure is logged here: a lost log line must not fail the run.
    pub fn log(&self, store: &Store, run_id: RunId, text: &str) {
        let text = wire::text::sanitize(text, MAX_LOG_LINE);
        match store.append_log(run_id, &text, now_ms()) {
            Ok(line) => self.publish(run_id, RunEvent::Line(line)),
            Err(error) => tracing::error!(run_id = run_id.0, %error, "could not store a log line"),
        }
    }

    /// Appends `texts` to a run's log in one write, and tells its followers.
    pub fn log_lines(&self, store: &Store, run_id: RunId, texts: &[String]) {
        let texts: Vec<String> = texts
            .iter()
            .map(|text| wire::text::sanitize(text, MAX_LOG_LINE))
            .collect();
        match store.append_logs(run_id, &texts, now_ms()) {
            Ok(lines) => {
                for line in lines {
                    self.publish(run_id, RunEvent::Line(line));
                }
            }
            Err(error) => tracing::error!(run_id = run_id.0, %error, "could not store log lines"),
        }
    }

    /// Tells followers of `run_id`, if any.
    pub fn publish(&self, run_id: RunId, event: RunEvent) {
        if let Some(run) = self.lock().get(&run_id) {
            // No follower is not an error.
            let _ = run.events.send(event);
        }
    }

    /// Cancels a run's server app; returns whether it was executing.
    pub fn cancel(&self, run_id: RunId) -> bool {
        match self.lock().get(&run_id) {
            Some(run) => {
                run.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Runs a run's task, tracked until it ends.
    pub fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// Waits up to `patience` for every run's task to end (after [`Self::cancel_all`]); `false`
    /// if one is still going (a server app that ignores its stop, stuck in its own computation).
    pub async fn stopped_within(&self, patience: std::time::Duration) -> bool {
        self.tasks.close();
        tokio::time::timeout(patience, self.tasks.wait())
            .await
            .is_ok()
    }

    /// Cancels every run (broker shutdown).
    pub fn cancel_all(&self) {
        for run in self.lock().values() {
            run.cancel.cancel();
        }
    }
}
