//! An app process a daemon starts and supervises: a bundle's program or Flower's
//! `flwr-serverapp` on the SuperLink, `flwr-clientapp` or a bundle's program on a SuperNode. All
//! four run the same way, written once here:
//!
//! - the process starts in a process group of its own, with nothing on stdin, and the group is
//!   killed when the [`AppProcess`] is dropped, so nothing it started outlives it;
//! - its output is read line by line to its end and logged as the daemon's own, and its last
//!   lines are kept to explain a failure;
//! - the daemon waits for the first of: the outcome it reported over its API, its exit, or an
//!   interruption (a stopped run, a deadline, silence), and a process that exits gets
//!   [`OUTPUT_GRACE`] for an outcome still on its way;
//! - a process that reported its outcome gets [`EXIT_GRACE`] to exit before it is killed.
//!
//! What differs between the four stays with them: the API the process talks to, and what the
//! daemon does with the outcome.

use crate::process::{ProcessGroup, describe_exit, for_each_line};
use std::collections::VecDeque;
use std::future::Future;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

/// How long a process that reported its outcome, or closed its connection, has to exit before
/// its group is killed.
pub const EXIT_GRACE: Duration = Duration::from_secs(10);

/// How long the outcome of a process that exited may still take to arrive (it was reported
/// just before the exit, and is still on its way through the daemon's API).
pub const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// How long the last lines of a process that ended may take to be read.
const LAST_WORDS_PATIENCE: Duration = Duration::from_secs(1);

/// Longest output line kept; the rest of a longer one is read and dropped.
const LINE_BYTES: usize = 4096;

/// What becomes of an app process's output.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// Called with each line: logs it as the daemon's own and returns the text worth quoting in
    /// a failure, if any (a backtrace's frames are not).
    pub on_line: fn(String) -> Option<String>,
    /// How many lines of stderr worth quoting are kept.
    pub kept_lines: usize,
    /// Whether stdout is read and logged too (never quoted: a program's buffered stdout arrives
    /// at its exit, after the stderr line that explains a crash); otherwise it goes nowhere.
    pub stdout: bool,
}

/// How waiting on an app process ended.
#[derive(Debug)]
pub enum Ended<T, I> {
    /// It reported its outcome.
    Reported(T),
    /// It exited without reporting one, even after [`OUTPUT_GRACE`].
    Exited(std::io::Result<ExitStatus>),
    /// The daemon stopped waiting, for this reason.
    Interrupted(I),
}

/// A running app process.
#[derive(Debug)]
pub struct AppProcess {
    child: Child,
    /// Kills the whole group when dropped.
    group: ProcessGroup,
    /// The last lines worth quoting, oldest first.
    kept: Arc<Mutex<VecDeque<String>>>,
    /// The tasks reading its output.
    readers: Vec<JoinHandle<()>>,
}

impl AppProcess {
    /// Starts `command` in a process group of its own, with nothing on stdin, its output going
    /// to `output`.
    pub fn spawn(command: &mut Command, output: Output) -> std::io::Result<Self> {
        Self::spawn_with(command, output, Stdio::null())
    }

    /// Like [`spawn`](Self::spawn), with a pipe to its stdin: for a process the daemon feeds
    /// work as it comes (a warm client app, one task token a line).
    pub fn spawn_fed(
        command: &mut Command,
        output: Output,
    ) -> std::io::Result<(Self, tokio::process::ChildStdin)> {
        let mut process = Self::spawn_with(command, output, Stdio::piped())?;
        let stdin = process
            .child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("the process's stdin was not piped"))?;
        Ok((process, stdin))
    }

    fn spawn_with(command: &mut Command, output: Output, stdin: Stdio) -> std::io::Result<Self> {
        let stdout = if output.stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        };
        let mut child = command
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()?;
        let group = ProcessGroup::of(child.id());
        let kept = Arc::new(Mutex::new(VecDeque::new()));
        let mut readers = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            readers.push(tokio::spawn(read_lines(stdout, output, None)));
        }
        if let Some(stderr) = child.stderr.take() {
            readers.push(tokio::spawn(read_lines(stderr, output, Some(kept.clone()))));
        }
        Ok(AppProcess {
            child,
            group,
            kept,
            readers,
        })
    }

    /// Its process id, while it runs.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// Whether it has exited (without waiting).
    pub fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the first of `interrupt`, `outcome` and the process's exit (after which the
    /// outcome gets `grace` to arrive); an interruption wins when several are ready.
    pub async fn until<T, I>(
        &mut self,
        outcome: impl Future<Output = T>,
        interrupt: impl Future<Output = I>,
        grace: Duration,
    ) -> Ended<T, I> {
        tokio::pin!(outcome);
        tokio::select! {
            // An interruption wins over whatever else is ready: a stopped run hears nothing more.
            biased;
            reason = interrupt => Ended::Interrupted(reason),
            reported = &mut outcome => Ended::Reported(reported),
            status = self.child.wait() => match tokio::time::timeout(grace, outcome).await {
                Ok(reported) => Ended::Reported(reported),
                Err(_) => Ended::Exited(status),
            },
        }
    }

    /// Waits for the process to exit, however long it takes.
    pub async fn exited(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// Waits up to `grace` for the process to exit, then kills its group. Returns how it
    /// exited; `None` if it had to be killed.
    pub async fn exit_within(&mut self, grace: Duration) -> Option<std::io::Result<ExitStatus>> {
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => Some(status),
            Err(_) => {
                self.kill();
                None
            }
        }
    }

    /// Asks the process's group to stop (SIGTERM); [`AppProcess::exit_within`] then bounds how
    /// long it may take.
    pub fn terminate(&self) {
        self.group.terminate();
    }

    /// Kills the process's whole group now (a stopped run, a process of no more use, or one
    /// whose files are about to be read: none is left to change them).
    pub fn kill(&mut self) {
        let _ = self.child.start_kill();
        self.group.kill();
    }

    /// The last lines of stderr it wrote worth quoting, oldest first, once its output ended (or
    /// after a second: a process it left behind may hold the pipe open).
    pub async fn last_words(&mut self) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + LAST_WORDS_PATIENCE;
        for reader in self.readers.drain(..) {
            let _ = tokio::time::timeout_at(deadline, reader).await;
        }
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.iter().cloned().collect()
    }

    /// Why it ended without reporting an outcome: `the client app process was killed by signal
    /// 6 (SIGABRT) before replying: <its last line>`. `what` names the process, `before` what it
    /// did not do. Whatever it left running is killed first, so its output ends.
    pub async fn crash_report(
        &mut self,
        status: std::io::Result<ExitStatus>,
        what: &str,
        before: &str,
    ) -> String {
        self.kill();
        let last = self
            .last_words()
            .await
            .pop()
            .map(|line| format!(": {line}"))
            .unwrap_or_default();
        format!("{what} {} {before}{last}", describe_exit(status))
    }
}

/// Reads `output` to its end through `rules`, keeping the last lines worth quoting in `kept`
/// (when given).
async fn read_lines<R: tokio::io::AsyncRead + Unpin>(
    output: R,
    rules: Output,
    kept: Option<Arc<Mutex<VecDeque<String>>>>,
) {
    for_each_line(output, LINE_BYTES, |line| {
        if let Some(line) = (rules.on_line)(line)
            && let Some(kept) = &kept
            && rules.kept_lines > 0
        {
            let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
            if kept.len() == rules.kept_lines {
                kept.pop_front();
            }
            kept.push_back(line);
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::pending;

    fn quiet(line: String) -> Option<String> {
        (!line.starts_with(' ')).then_some(line)
    }

    const OUTPUT: Output = Output {
        on_line: quiet,
        kept_lines: 2,
        stdout: true,
    };

    fn shell(script: &str) -> AppProcess {
        AppProcess::spawn(Command::new("sh").args(["-c", script]), OUTPUT).unwrap()
    }

    /// Whether process `pid` is gone (or a zombie nobody reaps) within a second.
    fn gone(pid: i32) -> bool {
        (0..50).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map_or(true, |stat| stat.contains(") Z "))
        })
    }

    #[tokio::test]
    async fn a_process_that_exits_without_an_outcome_is_reported_with_its_last_stderr_lines() {
        let mut process = shell(
            "echo one >&2; echo two >&2; echo three >&2; echo '  frame' >&2; echo out; exit 3",
        );
        let ended = process
            .until(pending::<()>(), pending::<()>(), Duration::from_millis(50))
            .await;
        let Ended::Exited(status) = ended else {
            panic!("{ended:?}");
        };
        let report = process
            .crash_report(status, "the app", "before replying")
            .await;
        // Stdout is never quoted, nor lines not worth it; two lines are kept.
        assert_eq!(
            report,
            "the app exited with status 3 before replying: three"
        );
        assert_eq!(process.last_words().await, ["two", "three"]);
    }

    #[tokio::test]
    async fn an_outcome_arriving_within_the_grace_after_the_exit_still_counts_and_a_later_one_does_not()
     {
        for (grace, counts) in [
            (Duration::from_secs(10), true),
            (Duration::from_millis(50), false),
        ] {
            let mut process = shell("exit 0");
            // The process has long exited when the wait starts, and the outcome comes after.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let late = async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "reported"
            };
            let ended = process.until(late, pending::<()>(), grace).await;
            assert_eq!(
                matches!(ended, Ended::Reported("reported")),
                counts,
                "grace {grace:?}: {ended:?}"
            );
        }
    }

    #[tokio::test]
    async fn an_interrupted_process_dropped_takes_everything_it_started_with_it() {
        // The shell starts a sleeper of its own in the background, says its pid, then waits.
        let mut process = shell("sleep 60 & echo $! >&2; wait");
        let pid = i32::try_from(process.id().unwrap()).unwrap();
        let ended = process
            .until(
                pending::<()>(),
                tokio::time::sleep(Duration::from_millis(300)),
                OUTPUT_GRACE,
            )
            .await;
        assert!(matches!(ended, Ended::Interrupted(())), "{ended:?}");
        let sleeper: i32 = process.last_words().await[0].parse().unwrap();
        drop(process);
        assert!(gone(pid));
        assert!(gone(sleeper), "the group went with it");
    }

    #[tokio::test]
    async fn a_process_that_does_not_exit_after_its_outcome_is_killed_after_the_grace() {
        let mut process = shell("sleep 60");
        assert!(
            process
                .exit_within(Duration::from_millis(100))
                .await
                .is_none()
        );
        assert!(process.exit_within(Duration::from_secs(5)).await.is_some());
    }
}
