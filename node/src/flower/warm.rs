//! Warm ClientApps: one Python process per run on this node, kept alive across the run's
//! instructions, instead of a fresh `flwr-clientapp` for each. A process start costs Python's own
//! start, the FAB's install and the app's imports (seconds for PyTorch); SecAgg+ sends four
//! instructions a round. The process runs `warm_clientapp.py`, Flower's `flwr-clientapp` task
//! loop, and is fed each instruction's task token on its stdin.
//!
//! Isolation is per run, not per instruction as with a process per instruction: a run's process
//! serves that run's tasks alone (it refuses any other), with a `FLWR_HOME` of its own, and is
//! killed when the run stops, when it has idled past the limit, or when more runs' processes
//! idle than the limit allows (the longest idle goes first). A process whose task failed, crashed
//! or hung is not used again: the next instruction gets a fresh process.

use flower_runtime::launch::Execution;
use ops::app_process::AppProcess;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt as _;
use tokio::process::ChildStdin;

/// The runner, written into each warm process's execution directory.
const RUNNER: &str = include_str!("warm_clientapp.py");

/// How many runs' processes may stay warm between instructions, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarmLimits {
    /// Most runs with a process waiting for their next instruction; 0: a fresh `flwr-clientapp`
    /// for every instruction, as Flower's SuperNode starts them.
    pub runs: usize,
    /// How long a process may wait for its run's next instruction.
    pub idle: Duration,
    /// Most processes one run keeps waiting: 1 on a SuperNode, which answers a run's
    /// instructions one after another; a simulation's worker count, where one process answers
    /// many virtual nodes' instructions in turn.
    pub per_run: usize,
}

impl Default for WarmLimits {
    fn default() -> Self {
        WarmLimits {
            runs: 4,
            idle: Duration::from_secs(60),
            per_run: 1,
        }
    }
}

/// A run's warm process.
pub struct Warm {
    /// Killed, with its process group, when dropped.
    pub process: AppProcess,
    stdin: ChildStdin,
    idle_since: Instant,
    /// Its `FLWR_HOME` and the runner's file, removed when dropped: after the process (fields
    /// drop in order).
    _execution: Execution,
}

impl Warm {
    /// Starts the runner for the tasks of run `run_id` with the FAB `fab_hash`, with `python`
    /// against the runtime API at `address`, in a fresh execution directory under `home`.
    pub fn start(
        python: &Path,
        address: std::net::SocketAddr,
        home: &Path,
        (run_id, fab_hash): (u64, &str),
        output: ops::app_process::Output,
    ) -> Result<Warm, String> {
        let execution = Execution::create_untokened(home)
            .map_err(|e| format!("cannot make the Flower app's directory: {e}"))?;
        let script = execution
            .write_private("warm_clientapp.py", RUNNER.as_bytes())
            .map_err(|e| format!("cannot write the warm ClientApp runner: {e}"))?;
        let mut command = flower_runtime::launch::warm_command(
            python, &script, address, &execution, run_id, fab_hash,
        );
        let (process, stdin) = AppProcess::spawn_fed(&mut command, output)
            .map_err(|e| format!("cannot start {}: {e}", python.display()))?;
        Ok(Warm {
            process,
            stdin,
            idle_since: Instant::now(),
            _execution: execution,
        })
    }

    /// Hands the process the task of `token`; an error means the process is gone, or has not
    /// read its tokens for [`FEED_PATIENCE`] (a full pipe).
    pub async fn feed(&mut self, token: &str) -> std::io::Result<()> {
        let write = async {
            self.stdin
                .write_all(format!("{token}\n").as_bytes())
                .await?;
            self.stdin.flush().await
        };
        tokio::time::timeout(FEED_PATIENCE, write)
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    }
}

/// How long a process may take to read the token it is handed.
const FEED_PATIENCE: Duration = Duration::from_secs(5);

/// Ends `warms` (kills their process groups, removes their directories) off the async runtime's
/// threads where there is one.
fn end(warms: Vec<Warm>) {
    if warms.is_empty() {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(move || drop(warms))),
        Err(_) => drop(warms),
    }
}

/// The runs' processes waiting for their next instruction. A process is taken out while it
/// serves one, so an instruction that arrives meanwhile takes another waiting one or starts a
/// process of its own.
#[derive(Default)]
pub struct WarmPool {
    limits: WarmLimits,
    idle: Mutex<Idle>,
}

#[derive(Default)]
struct Idle {
    /// Each run's waiting processes, the most recently idle last.
    waiting: HashMap<u64, Vec<Warm>>,
    /// Runs that ended: a process that finishes a task of one is not kept.
    ended: crate::ended_runs::EndedRuns,
}

impl Idle {
    /// When `run`'s most recently idle process went idle.
    fn last_idle(&self, run: u64) -> Option<Instant> {
        self.waiting.get(&run)?.last().map(|warm| warm.idle_since)
    }
}

impl WarmPool {
    /// A pool within `limits`.
    pub fn new(limits: WarmLimits) -> Self {
        WarmPool {
            limits,
            idle: Mutex::default(),
        }
    }

    /// Whether processes are kept warm at all.
    pub fn enabled(&self) -> bool {
        self.limits.runs > 0
    }

    /// The limits it keeps.
    pub fn limits(&self) -> WarmLimits {
        self.limits
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// One of `run`'s waiting processes that is still alive, if any.
    pub fn take(&self, run: u64) -> Option<Warm> {
        let mut exited = Vec::new();
        let taken = {
            let mut idle = self.idle();
            let waiting = idle.waiting.get_mut(&run)?;
            let mut taken = None;
            while let Some(mut warm) = waiting.pop() {
                if warm.process.has_exited() {
                    exited.push(warm);
                } else {
                    taken = Some(warm);
                    break;
                }
            }
            if waiting.is_empty() {
                idle.waiting.remove(&run);
            }
            taken
        };
        end(exited);
        taken
    }

    /// Keeps `warm` for `run`'s next instruction, within the limits: a run keeps
    /// [`WarmLimits::per_run`] processes (beyond them, this one goes), and beyond the limit of
    /// runs the run idle longest loses its processes.
    pub fn put(&self, run: u64, mut warm: Warm) {
        warm.idle_since = Instant::now();
        let evicted = {
            let mut idle = self.idle();
            let kept = idle.waiting.get(&run).map_or(0, Vec::len);
            if idle.ended.contains(run) || kept >= self.limits.per_run.max(1) {
                vec![warm]
            } else {
                idle.waiting.entry(run).or_default().push(warm);
                let mut evicted = Vec::new();
                while idle.waiting.len() > self.limits.runs {
                    let Some(oldest) = idle
                        .waiting
                        .keys()
                        .copied()
                        .min_by_key(|run| idle.last_idle(*run))
                    else {
                        break;
                    };
                    evicted.extend(idle.waiting.remove(&oldest).unwrap_or_default());
                }
                evicted
            }
        };
        // Ended outside the lock.
        end(evicted);
    }

    /// Kills `run`'s waiting processes, and any that finishes a task of it later (the run
    /// stopped).
    pub fn end_run(&self, run: u64) {
        let ended = {
            let mut idle = self.idle();
            idle.ended.insert(run);
            idle.waiting.remove(&run)
        };
        end(ended.unwrap_or_default());
    }

    /// Kills the processes idle past the limit; how many.
    pub fn reap(&self) -> usize {
        let reaped: Vec<Warm> = {
            let mut idle = self.idle();
            let mut reaped = Vec::new();
            for waiting in idle.waiting.values_mut() {
                let (expired, kept): (Vec<Warm>, Vec<Warm>) = std::mem::take(waiting)
                    .into_iter()
                    .partition(|warm| warm.idle_since.elapsed() >= self.limits.idle);
                *waiting = kept;
                reaped.extend(expired);
            }
            idle.waiting.retain(|_, waiting| !waiting.is_empty());
            reaped
        };
        let count = reaped.len();
        end(reaped);
        count
    }

    /// The runs with a process waiting, in order.
    pub fn waiting_runs(&self) -> Vec<u64> {
        let mut runs: Vec<u64> = self.idle().waiting.keys().copied().collect();
        runs.sort_unstable();
        runs
    }

    /// The process id of one of `run`'s waiting processes, if any.
    pub fn process_id(&self, run: u64) -> Option<u32> {
        self.idle()
            .waiting
            .get(&run)
            .and_then(|waiting| waiting.last())
            .and_then(|warm| warm.process.id())
    }
}

/// The Python of `program` when it is Flower's own `flwr-clientapp` as pip installs it: a
/// script whose `#!` line names a Python by its absolute path and which runs Flower's
/// `flwr_clientapp` entry point. The runner then runs with that Python, which has Flower. Any
/// other program (a wrapper that sandboxes the app, changes user or sets up devices; a binary)
/// is started as it is for every instruction, so that warm processes never go around it.
pub fn python_of(program: &Path) -> Option<PathBuf> {
    use std::io::Read as _;
    let mut head = [0u8; 1024];
    let read = std::fs::File::open(program)
        .and_then(|mut file| file.read(&mut head))
        .unwrap_or(0);
    let text = std::str::from_utf8(&head[..read]).ok()?;
    let (first_line, rest) = text.split_once('\n')?;
    let interpreter = PathBuf::from(first_line.strip_prefix("#!")?.split_whitespace().next()?);
    let runs_flower = rest
        .lines()
        .any(|line| line.trim() == "from flwr.supernode.cli import flwr_clientapp");
    let is_python = interpreter
        .file_name()
        .is_some_and(|name| name.to_string_lossy().starts_with("python"));
    (runs_flower && is_python && interpreter.is_absolute() && interpreter.is_file())
        .then_some(interpreter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn script(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// `program` started as run `run`'s warm process, in an execution directory under `home`.
    fn started(program: &Path, home: &Path, run: u64) -> Warm {
        Warm::start(
            program,
            "127.0.0.1:1".parse().unwrap(),
            home,
            (run, "hash"),
            crate::isolation::CLIENT_APP_OUTPUT,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_stopped_runs_process_is_not_kept_and_beyond_the_limit_the_longest_idle_goes() {
        let home = tempfile::tempdir().unwrap();
        // Any program stands in for the runner here: the pool only keeps and ends processes.
        let warm = |run| started(Path::new("/bin/cat"), home.path(), run);
        let pool = WarmPool::new(WarmLimits {
            runs: 2,
            idle: Duration::from_secs(60),
            per_run: 1,
        });
        for run in [1, 2, 3] {
            pool.put(run, warm(run));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(pool.waiting_runs(), [2, 3]);
        // A run's second process is not kept beside its first.
        pool.put(3, warm(3));
        assert_eq!(pool.waiting_runs(), [2, 3]);
        // A stopped run keeps nothing, even a process that finishes one of its tasks later.
        pool.end_run(2);
        pool.put(2, warm(2));
        assert_eq!(pool.waiting_runs(), [3]);
        let quick = WarmPool::new(WarmLimits {
            runs: 2,
            idle: Duration::from_millis(1),
            per_run: 1,
        });
        quick.put(7, warm(7));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(quick.reap(), 1);
        assert!(quick.waiting_runs().is_empty());
    }

    #[tokio::test]
    async fn a_simulations_run_keeps_one_process_per_worker() {
        let home = tempfile::tempdir().unwrap();
        // Alive until killed, as a runner waiting for its next task.
        let waiting = script(home.path(), "python3", "#!/bin/sh\nexec sleep 60\n");
        let warm = |run| started(&waiting, home.path(), run);
        let pool = WarmPool::new(WarmLimits {
            runs: 1,
            idle: Duration::from_secs(60),
            per_run: 2,
        });
        let (first, second) = (warm(5), warm(5));
        let ids = [first.process.id(), second.process.id()];
        pool.put(5, first);
        pool.put(5, second);
        // A third is beyond the run's workers.
        pool.put(5, warm(5));
        let taken = [pool.take(5), pool.take(5)];
        let mut taken_ids: Vec<_> = taken.iter().flatten().map(|w| w.process.id()).collect();
        taken_ids.sort();
        let mut kept = ids.to_vec();
        kept.sort();
        assert_eq!(taken_ids, kept);
        assert!(pool.take(5).is_none());
    }

    #[test]
    fn only_flowers_own_script_runs_warm_with_its_python() {
        let dir = tempfile::tempdir().unwrap();
        let python = script(dir.path(), "python3.11", "");
        let pip_script = |interpreter: &Path| {
            format!(
                "#!{}\n# -*- coding: utf-8 -*-\nimport re\nimport sys\n\
                 from flwr.supernode.cli import flwr_clientapp\n\
                 if __name__ == '__main__':\n    sys.exit(flwr_clientapp())\n",
                interpreter.display()
            )
        };
        let program = script(dir.path(), "flwr-clientapp", &pip_script(&python));
        assert_eq!(python_of(&program), Some(python.clone()));
        // A wrapper beside a python (a sandbox, another user, devices) is run as it is.
        let wrapper = script(
            dir.path(),
            "flwr-clientapp-jail",
            "#!/bin/sh\nexec bwrap --ro-bind / / flwr-clientapp \"$@\"\n",
        );
        assert_eq!(python_of(&wrapper), None);
        // So is a Python script that does more than Flower's entry point.
        let own = script(
            dir.path(),
            "flwr-clientapp-seccomp",
            &format!("#!{}\nimport seccomp\n", python.display()),
        );
        assert_eq!(python_of(&own), None);
        // And Flower's script whose Python is gone.
        let missing = script(
            dir.path(),
            "flwr-clientapp-stale",
            &pip_script(&dir.path().join("python3.9")),
        );
        assert_eq!(python_of(&missing), None);
    }
}
