//! Child processes that leave nothing behind, say what they said, and see only what they need.

use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};

/// Environment variables a program from an app bundle keeps; everything else the daemon has
/// (credentials, tokens of other tools) is not passed on.
pub const PASSED_ENVIRONMENT: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR",
];

/// The values of [`PASSED_ENVIRONMENT`] in this process.
pub fn passed_environment() -> Vec<(String, std::ffi::OsString)> {
    PASSED_ENVIRONMENT
        .iter()
        .filter_map(|name| Some((name.to_string(), std::env::var_os(name)?)))
        .collect()
}

/// Calls `on_line` with each line `reader` yields until it ends, whatever it yields: bytes that
/// are not UTF-8 are replaced, and a line longer than `max_len` bytes is cut there (the rest is
/// read and dropped), so a child writing binary or an endless progress bar costs bounded memory
/// and is read to its end (a pipe left unread would block it, or kill it with SIGPIPE).
pub async fn for_each_line<R: AsyncRead + Unpin>(
    reader: R,
    max_len: usize,
    mut on_line: impl FnMut(String),
) {
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    while let Ok(buffer) = reader.fill_buf().await {
        if buffer.is_empty() {
            if !line.is_empty() {
                on_line(String::from_utf8_lossy(&line).into_owned());
            }
            break;
        }
        let end = buffer.iter().position(|&b| b == b'\n' || b == b'\r');
        let chunk = &buffer[..end.unwrap_or(buffer.len())];
        let room = max_len.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let used = end.map_or(buffer.len(), |end| end + 1);
        reader.consume(used);
        if end.is_some() {
            if !line.is_empty() {
                on_line(String::from_utf8_lossy(&line).into_owned());
            }
            line.clear();
        }
    }
}

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

    /// Kills every process of the group now.
    pub fn kill(&self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
    }

    /// Asks every process of the group to stop (SIGTERM), as a daemon stops: cleanly.
    pub fn terminate(&self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(pid) = self.0.and_then(|pid| i32::try_from(pid).ok()) {
            // The group may be gone already (every member exited): nothing to do then.
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), signal);
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The resident memory of process `pid`, in bytes (Linux's `/proc/PID/status`); `None` when
/// it is gone or this is not Linux.
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// This machine's memory, in bytes (Linux's `/proc/meminfo`); `None` elsewhere.
pub fn total_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_read_to_the_end_cut_and_made_text() {
        let input: &[u8] = b"first\n\xff\xfebinary\r\nprogress 1%\rprogress 2%\r".as_slice();
        let long = [b'x'; 100].repeat(3);
        let mut lines = Vec::new();
        for_each_line(input, 1000, |line| lines.push(line)).await;
        assert_eq!(
            lines,
            [
                "first",
                "\u{fffd}\u{fffd}binary",
                "progress 1%",
                "progress 2%"
            ]
        );
        let mut cut = Vec::new();
        for_each_line(
            [long.as_slice(), b"\nnext"].concat().as_slice(),
            10,
            |line| cut.push(line),
        )
        .await;
        assert_eq!(cut, ["x".repeat(10), "next".to_string()]);
    }
}
