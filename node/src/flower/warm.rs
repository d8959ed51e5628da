//! Warm ClientApps: one Python process per run on this node, kept alive across the run's
//! instructions, instead of a fresh `flwr-clientapp` for each. A process start costs Python's own
//! start, the FAB's install and the app's imports (seconds for PyTorch); SecAgg+ sends four
//! instructions a round. The process runs `warm_clientapp.py`, Flower's `flwr-clientapp` task
//! loop, and is fed each instruction's task token on its stdin.
//!
//! Isolation stays per run: a run's process serves that run alone, with a `FLWR_HOME` of its
//! own, and is killed when the run stops, when it has idled past the limit, or when more runs'
//! processes idle than the limit allows (the longest idle goes first). A process that crashes or
//! hangs costs the instruction it was serving; the next one starts a fresh process.

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
}

impl Default for WarmLimits {
    fn default() -> Self {
        WarmLimits {
            runs: 4,
            idle: Duration::from_secs(60),
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
    /// Starts the runner with `python` against the runtime API at `address`, in a fresh
    /// execution directory under `home`.
    pub fn start(
        python: &Path,
        address: std::net::SocketAddr,
        home: &Path,
        output: ops::app_process::Output,
    ) -> Result<Warm, String> {
        let execution = Execution::create_untokened(home)
            .map_err(|e| format!("cannot make the Flower app's directory: {e}"))?;
        let script = execution
            .write_private("warm_clientapp.py", RUNNER.as_bytes())
            .map_err(|e| format!("cannot write the warm ClientApp runner: {e}"))?;
        let mut command =
            flower_runtime::launch::warm_command(python, &script, address, &execution);
        let (process, stdin) = AppProcess::spawn_fed(&mut command, output)
            .map_err(|e| format!("cannot start {}: {e}", python.display()))?;
        Ok(Warm {
            process,
            stdin,
            idle_since: Instant::now(),
            _execution: execution,
        })
    }

    /// Hands the process the task of `token`; an error means the process is gone.
    pub async fn feed(&mut self, token: &str) -> std::io::Result<()> {
        self.stdin
            .write_all(format!("{token}\n").as_bytes())
            .await?;
        self.stdin.flush().await
    }
}

/// The runs' processes waiting for their next instruction. A process is taken out while it
/// serves one, so an instruction that arrives meanwhile starts a process of its own.
#[derive(Default)]
pub struct WarmPool {
    limits: WarmLimits,
    idle: Mutex<HashMap<u64, Warm>>,
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

    fn idle(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Warm>> {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `run`'s waiting process, if it is still alive.
    pub fn take(&self, run: u64) -> Option<Warm> {
        let mut warm = self.idle().remove(&run)?;
        (!warm.process.has_exited()).then_some(warm)
    }

    /// Keeps `warm` for `run`'s next instruction, within the limits: a run keeps one process
    /// (another one already waiting stays, this one goes), and beyond the limit of runs the
    /// longest idle goes.
    pub fn put(&self, run: u64, mut warm: Warm) {
        warm.idle_since = Instant::now();
        let evicted = {
            let mut idle = self.idle();
            if idle.contains_key(&run) {
                return;
            }
            idle.insert(run, warm);
            let mut evicted = Vec::new();
            while idle.len() > self.limits.runs {
                let Some(oldest) = idle
                    .iter()
                    .min_by_key(|(_, warm)| warm.idle_since)
                    .map(|(run, _)| *run)
                else {
                    break;
                };
                evicted.extend(idle.remove(&oldest));
            }
            evicted
        };
        // Killed outside the lock.
        drop(evicted);
    }

    /// Kills `run`'s waiting process (the run stopped).
    pub fn end_run(&self, run: u64) {
        let ended = self.idle().remove(&run);
        drop(ended);
    }

    /// Kills the processes idle past the limit; how many.
    pub fn reap(&self) -> usize {
        let reaped: Vec<Warm> = {
            let mut idle = self.idle();
            let expired: Vec<u64> = idle
                .iter()
                .filter(|(_, warm)| warm.idle_since.elapsed() >= self.limits.idle)
                .map(|(run, _)| *run)
                .collect();
            expired
                .into_iter()
                .filter_map(|run| idle.remove(&run))
                .collect()
        };
        reaped.len()
    }

    /// The process id of `run`'s waiting process, if any.
    pub fn process_id(&self, run: u64) -> Option<u32> {
        self.idle().get(&run).and_then(|warm| warm.process.id())
    }
}

/// The Python that has Flower beside `program` (Flower's `flwr-clientapp` script): the
/// interpreter its `#!` line names, as pip writes it for the environment it installed into, or
/// `python3` in the same directory. `None` when neither is there (a wrapper, a binary): the node
/// then starts `flwr-clientapp` for every instruction.
pub fn python_of(program: &Path) -> Option<PathBuf> {
    use std::io::Read as _;
    let mut head = [0u8; 512];
    let read = std::fs::File::open(program)
        .and_then(|mut file| file.read(&mut head))
        .unwrap_or(0);
    let first_line = head[..read]
        .split(|&b| b == b'\n')
        .next()
        .unwrap_or_default();
    let named = first_line
        .strip_prefix(b"#!")
        .and_then(|rest| std::str::from_utf8(rest).ok())
        .and_then(|rest| rest.split_whitespace().next())
        .map(PathBuf::from)
        .filter(|interpreter| {
            interpreter.is_absolute()
                && interpreter.is_file()
                && interpreter
                    .file_name()
                    .is_some_and(|name| name.to_string_lossy().starts_with("python"))
        });
    named.or_else(|| {
        let dir = program.parent()?;
        ["python3", "python"]
            .iter()
            .map(|name| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
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

    #[test]
    fn the_python_is_the_scripts_own_or_the_one_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let python = script(dir.path(), "python3.11", "");
        let program = script(
            dir.path(),
            "flwr-clientapp",
            &format!("#!{} -s\nimport sys\n", python.display()),
        );
        assert_eq!(python_of(&program), Some(python));
        // pip's form for long paths runs /bin/sh: the python beside the script is taken.
        let other = tempfile::tempdir().unwrap();
        let beside = script(other.path(), "python3", "");
        let program = script(
            other.path(),
            "flwr-clientapp",
            "#!/bin/sh\n'''exec' \"/very/long/bin/python3\" \"$0\" \"$@\"\n' '''\n",
        );
        assert_eq!(python_of(&program), Some(beside));
        let lone = tempfile::tempdir().unwrap();
        let program = script(lone.path(), "flwr-clientapp", "#!/bin/sh\nexit 1\n");
        assert_eq!(python_of(&program), None);
    }
}
