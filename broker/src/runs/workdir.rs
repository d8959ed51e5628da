//! The directory a supervised server app runs in, and what of it the run keeps: a fresh private
//! directory per run, removed when the run's app is done, whose regular files become the run's
//! artifacts within bounds.

use crate::state::Shared;
use std::path::{Path, PathBuf};

/// Largest artifact or checkpoint a program may store.
pub const MAX_STORED_BYTES: u64 = 256 * 1024 * 1024;

/// Most files of the app's directory kept as artifacts.
const MAX_ARTIFACTS: usize = 64;

/// Most bytes of artifacts kept from one run.
const MAX_ARTIFACT_BYTES: u64 = 1 << 30;

/// Whether `name` may name an artifact: a plain file name (`flwr pull` writes it as one).
pub fn valid_artifact_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// Drops what it holds on a blocking thread: directories removed on drop (a work directory, a
/// Flower install) may hold many files, which no runtime worker should wait on.
pub struct OffRuntime<T: Send + 'static>(Option<T>);

impl<T: Send + 'static> OffRuntime<T> {
    /// Holds `value` until dropped.
    pub fn new(value: T) -> Self {
        OffRuntime(Some(value))
    }

    /// What it holds.
    pub fn get(&self) -> &T {
        self.0.as_ref().expect("held until dropped or taken")
    }

    /// Takes what it holds back, to be dropped by the caller.
    pub fn take(mut self) -> T {
        self.0.take().expect("held until dropped or taken")
    }
}

impl<T: Send + 'static> Drop for OffRuntime<T> {
    fn drop(&mut self) {
        if let Some(value) = self.0.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn_blocking(move || drop(value));
                }
                Err(_) => drop(value),
            }
        }
    }
}

/// The directory a ServerApp runs in, removed when dropped.
pub struct WorkDir(PathBuf);

impl WorkDir {
    /// A fresh directory for run `run_id` in `runs`, which is made private first. A run resumed
    /// after a restart starts afresh, as its app does.
    pub fn create(runs: &Path, run_id: wire::RunId) -> std::io::Result<WorkDir> {
        let path = runs.join(run_id.to_string());
        ops::private_dir::create_private_dir(runs).map_err(std::io::Error::from)?;
        match std::fs::remove_dir_all(&path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
        std::fs::create_dir(&path)?;
        Ok(WorkDir(path))
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
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
    valid_artifact_name(&name).then_some(name)
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
pub fn keep_artifacts(shared: &Shared, run_id: wire::RunId, workdir: WorkDir) {
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
            .min(MAX_STORED_BYTES);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_names_are_plain_file_names() {
        for good in ["model.safetensors", "metrics.json", "final_arrays-2.bin"] {
            assert!(valid_artifact_name(good), "{good}");
        }
        for bad in ["", ".hidden", "../x", "a/b", "a\\b", "é", &"x".repeat(129)] {
            assert!(!valid_artifact_name(bad), "{bad}");
        }
    }

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
