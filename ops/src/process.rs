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
