//! Starting Flower's app programs (`flwr-serverapp`, `flwr-clientapp`) for a task, as Flower's
//! SuperExec starts them: the runtime API's address, the task's token, `--insecure` (the API
//! is plain HTTP on loopback) and the daemon's pid, so the app exits when the daemon is gone.
//!
//! The token goes in a file only the daemon's user can read (`--token-file`), not on the command
//! line, where every user of the host could read it in the process list; the file is removed
//! when the task is over.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// The program `given` (its flag `flag` names it), or the first `name` on `PATH` other than
/// `passed_over` (a program of the same name that is not Flower's); an error ends with `hint`,
/// which says how to install it.
pub fn find_program(
    name: &str,
    flag: &str,
    given: Option<&Path>,
    passed_over: Option<&Path>,
    hint: &str,
) -> Result<PathBuf, String> {
    if let Some(program) = given {
        return if program.is_file() {
            Ok(program.to_path_buf())
        } else {
            Err(format!(
                "{flag} {} does not exist: {hint}",
                program.display()
            ))
        };
    }
    let passed_over = passed_over.and_then(|path| path.canonicalize().ok());
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .filter(|candidate| candidate.is_file())
        .find(|candidate| passed_over.is_none() || candidate.canonicalize().ok() != passed_over)
        .ok_or_else(|| format!("there is no Flower {name} here to run a Flower app: {hint}"))
}

/// A task's token in a private file, removed when dropped.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
}

impl TokenFile {
    /// Writes `token` to a fresh file in `dir` (created private to this user).
    pub fn write(dir: &Path, token: &str) -> std::io::Result<TokenFile> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let name: [u8; 16] = rand::random();
        let name: String = name.iter().map(|b| format!("{b:02x}")).collect();
        let path = dir.join(format!("{name}.token"));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        file.write_all(token.as_bytes())?;
        Ok(TokenFile { path })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TokenFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The command that starts `program` for the task holding `token`, against the runtime API at
/// `address`, with `home` (made absolute) as its `FLWR_HOME` (where it installs FABs; the token
/// file goes in `home/tokens`). The program starts in a process group of its own and is killed if the
/// command's child is dropped; its output is the caller's to route.
pub fn app_command(
    program: &Path,
    address: SocketAddr,
    token: &str,
    home: &Path,
) -> std::io::Result<(tokio::process::Command, TokenFile)> {
    // Absolute: the program may be started in another directory than the daemon's.
    let home = std::path::absolute(home)?;
    let token_file = TokenFile::write(&home.join("tokens"), token)?;
    let mut command = tokio::process::Command::new(program);
    command
        .arg("--runtime-api-address")
        .arg(address.to_string())
        .arg("--token-file")
        .arg(token_file.path())
        .arg("--insecure")
        .arg("--parent-pid")
        .arg(std::process::id().to_string())
        .env("FLWR_HOME", &home)
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    if std::env::var_os("FLWR_TELEMETRY_ENABLED").is_none() {
        // Otherwise every app process posts to Flower's telemetry server and waits for it.
        command.env("FLWR_TELEMETRY_ENABLED", "0");
    }
    Ok((command, token_file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn paths_are_absolute_whatever_directory_the_program_starts_in() {
        let (command, token_file) = app_command(
            Path::new("flwr-clientapp"),
            "127.0.0.1:1".parse().unwrap(),
            "t",
            Path::new("relative-home-for-a-test"),
        )
        .unwrap();
        let args: Vec<_> = command.as_std().get_args().collect();
        let token_path = Path::new(args[3]);
        assert!(token_path.is_absolute(), "{token_path:?}");
        assert_eq!(token_file.path(), token_path);
        drop(token_file);
        let _ = std::fs::remove_dir_all("relative-home-for-a-test");
    }

    #[test]
    fn a_token_file_is_private_and_goes_with_its_task() {
        let dir = tempfile::tempdir().unwrap();
        let file = TokenFile::write(&dir.path().join("tokens"), "secret").unwrap();
        let path = file.path().to_path_buf();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "secret");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        drop(file);
        assert!(!path.exists());
    }
}
