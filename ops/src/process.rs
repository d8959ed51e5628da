//! Child processes that leave nothing behind.

/// Kills a child's whole process group when dropped. Start the child in a group of its own
/// (`Command::process_group(0)`): then a program that started processes of its own (a shell
/// script, a launcher) leaves none of them running when it is killed or returns.
#[derive(Debug)]
pub struct ProcessGroup(Option<u32>);

impl ProcessGroup {
    /// The group led by the child `pid` (`None`: the child is gone already).
    pub fn of(pid: Option<u32>) -> Self {
        ProcessGroup(pid)
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Some(pid) = self.0.and_then(|pid| i32::try_from(pid).ok()) {
            // The group may be gone already (every member exited): nothing to do then.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// How a child ended, in words: `exited with status 3`, `was killed by signal 9 (SIGKILL)`.
pub fn describe_exit(status: std::io::Result<std::process::ExitStatus>) -> String {
    let status = match status {
        Ok(status) => status,
        Err(error) => return format!("could not be waited for: {error}"),
    };
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt as _;
        if let Some(signal) = status.signal() {
            let name = nix::sys::signal::Signal::try_from(signal)
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|_| "an unknown signal".into());
            return format!("was killed by signal {signal} ({name})");
        }
    }
    match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => "ended".into(),
    }
}
