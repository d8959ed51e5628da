//! Starting Flower's app programs (`flwr-serverapp`, `flwr-clientapp`) for a task, as Flower's
//! SuperExec starts them: the runtime API's address, the task's token, `--insecure` (the API
//! is plain HTTP on loopback) and the daemon's pid, so the app exits when the daemon is gone.
//!
//! The token goes in a file only the daemon's user can read (`--token-file`), not on the command
//! line, where every user of the host could read it in the process list. Each execution gets a
//! fresh `FLWR_HOME` ([`Execution`]), removed with the token file when the task is over.

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

/// One execution of a Flower app program: a fresh directory of its own under a private base,
/// holding the program's `FLWR_HOME` (where Flower installs the FAB it runs) and, outside that
/// tree, the task's token file; removed with everything in it when dropped.
///
/// Flower reuses an install it finds in `FLWR_HOME` without looking at it again, so a shared one
/// would let one execution change what every later one runs; here each starts from the FAB
/// itself, which was checked.
#[derive(Debug)]
pub struct Execution {
    dir: PathBuf,
    home: PathBuf,
    /// The task's token; `None` for a warm runner's execution, which is given its tasks' tokens
    /// as they come.
    token_file: Option<PathBuf>,
}

impl Execution {
    /// Makes the execution's directory in `base` (created if missing, and refused unless only
    /// this user can change it and every directory above it: `ops::private_dir`), with the
    /// token `token` in its file.
    pub fn create(base: &Path, token: &str) -> std::io::Result<Execution> {
        let mut execution = Self::create_untokened(base)?;
        execution.token_file = Some(execution.write_private("task.token", token.as_bytes())?);
        Ok(execution)
    }

    /// Like [`create`](Self::create), without a token: for a warm runner, which is given its
    /// tasks' tokens as they come.
    pub fn create_untokened(base: &Path) -> std::io::Result<Execution> {
        // Absolute: the program may be started in another directory than the daemon's.
        let base = std::path::absolute(base)?;
        ops::private_dir::create_private_dir(&base)?;
        let dir = base.join(format!("{:032x}", rand::random::<u128>()));
        // Not recursive: the directory must be new, made by this call.
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let execution = Execution {
            home: dir.join("flwr-home"),
            token_file: None,
            dir,
        };
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&execution.home)?;
        Ok(execution)
    }

    /// Writes `contents` to a new file `name` of the execution's own, outside its `FLWR_HOME`,
    /// readable by this user alone; its path.
    pub fn write_private(&self, name: &str, contents: &[u8]) -> std::io::Result<PathBuf> {
        let path = self.dir.join(name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        file.write_all(contents)?;
        Ok(path)
    }

    /// The program's `FLWR_HOME`.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The file holding the task's token (none for a warm runner).
    pub fn token_file(&self) -> Option<&Path> {
        self.token_file.as_deref()
    }
}

impl Drop for Execution {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(path = %self.dir.display(), %error, "could not remove a Flower app's directory");
        }
    }
}

/// The command that starts `program` for `execution`'s task against the runtime API at
/// `address`. The program starts in a process group of its own, with only the environment a
/// bundle's program gets ([`ops::process::PASSED_ENVIRONMENT`]) and [`FLOWER_ENVIRONMENT`], and
/// is killed if the command's child is dropped; its output is the caller's to route.
pub fn app_command(
    program: &Path,
    address: SocketAddr,
    execution: &Execution,
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(program);
    command
        .arg("--runtime-api-address")
        .arg(address.to_string());
    if let Some(token_file) = execution.token_file() {
        command.arg("--token-file").arg(token_file);
    }
    command
        .arg("--insecure")
        .arg("--parent-pid")
        .arg(std::process::id().to_string());
    with_flower_environment(&mut command, execution);
    command
}

/// The command that starts a warm runner for the tasks of run `run_id` with the FAB `fab_hash`:
/// `python` on the runner's `script`, against the runtime API at `address`, for `execution` (a
/// [`Execution::create_untokened`] one). Its environment and process group are
/// `flwr-clientapp`'s ([`app_command`]); the tasks' tokens are the caller's to write on its
/// stdin, one a line.
pub fn warm_command(
    python: &Path,
    script: &Path,
    address: SocketAddr,
    execution: &Execution,
    run_id: u64,
    fab_hash: &str,
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(python);
    // Unbuffered, so the app's output reaches the daemon's log as it is written.
    command
        .arg("-u")
        .arg(script)
        .arg(address.to_string())
        .arg(std::process::id().to_string())
        .arg(run_id.to_string())
        .arg(fab_hash);
    with_flower_environment(&mut command, execution);
    command
}

/// What every Flower app process gets: only the environment a bundle's program gets and
/// [`FLOWER_ENVIRONMENT`], the execution's `FLWR_HOME`, a process group of its own, and death
/// when the command's child is dropped.
fn with_flower_environment(command: &mut tokio::process::Command, execution: &Execution) {
    command
        .env_clear()
        .envs(ops::process::passed_environment())
        .envs(flower_environment())
        .env("FLWR_HOME", execution.home())
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    if std::env::var_os("FLWR_TELEMETRY_ENABLED").is_none() {
        // Otherwise every app process posts to Flower's telemetry server and waits for it.
        command.env("FLWR_TELEMETRY_ENABLED", "0");
    }
}

/// Variables a Python program of Flower's keeps besides a bundle program's, by name or by a
/// prefix ending in `_`: the environment it runs in (a virtual environment, Conda), Flower's own
/// switches, what numerical libraries, machine-learning frameworks and GPUs are set up with, and
/// how the host reaches the network (proxies, as set, and certificate authorities), which apps
/// that download their data need. Credentials of cloud providers and other tools stay with the
/// daemon, and so does any variable whose name says it holds a secret (`HF_TOKEN`).
pub const FLOWER_ENVIRONMENT: &[&str] = &[
    "VIRTUAL_ENV",
    "CONDA_PREFIX",
    "PYTHONPATH",
    "PYTHONHOME",
    "LD_LIBRARY_PATH",
    "XDG_CACHE_HOME",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "FLWR_",
    "CUDA_",
    "NVIDIA_",
    "NCCL_",
    "HIP_",
    "ROCR_",
    "OPENBLAS_",
    "HF_",
    "TORCH_",
    "PYTORCH_",
    "TF_",
    "XLA_",
    "JAX_",
];

/// Whether a variable's name says it holds a secret (`HF_TOKEN`, `TF_TOKEN_app_terraform_io`,
/// `TF_VAR_db_password`): such a variable is withheld whatever prefix it shares.
fn names_a_secret(name: &str) -> bool {
    let name = name.to_ascii_uppercase();
    ["TOKEN", "KEY", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL"]
        .iter()
        .any(|word| name.contains(word))
}

/// The values of [`FLOWER_ENVIRONMENT`] in this process (but `FLWR_HOME`, which is the
/// execution's own, and any whose name says it holds a secret).
fn flower_environment() -> Vec<(String, std::ffi::OsString)> {
    flower_environment_of(std::env::vars_os())
}

/// What of `variables` a Python program of Flower's keeps (see [`flower_environment`]).
fn flower_environment_of(
    variables: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Vec<(String, std::ffi::OsString)> {
    variables
        .filter_map(|(name, value)| {
            let name = name.into_string().ok()?;
            (name != "FLWR_HOME" && !names_a_secret(&name) && in_flower_environment(&name))
                .then_some((name, value))
        })
        .collect()
}

/// Whether [`FLOWER_ENVIRONMENT`] names `name`, or a prefix of it.
fn in_flower_environment(name: &str) -> bool {
    FLOWER_ENVIRONMENT.iter().any(|kept| {
        if kept.ends_with('_') {
            name.starts_with(kept)
        } else {
            name == *kept
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn paths_are_absolute_whatever_directory_the_program_starts_in() {
        let execution = Execution::create(Path::new("relative-base-for-a-test"), "t").unwrap();
        let command = app_command(
            Path::new("flwr-clientapp"),
            "127.0.0.1:1".parse().unwrap(),
            &execution,
        );
        let args: Vec<_> = command.as_std().get_args().collect();
        let token_path = Path::new(args[3]);
        assert!(token_path.is_absolute(), "{token_path:?}");
        assert_eq!(execution.token_file(), Some(token_path));
        let home = command
            .as_std()
            .get_envs()
            .find(|(name, _)| *name == "FLWR_HOME")
            .and_then(|(_, value)| value)
            .unwrap();
        assert!(Path::new(home).is_absolute(), "{home:?}");
        drop(execution);
        let _ = std::fs::remove_dir_all("relative-base-for-a-test");
    }

    #[test]
    fn each_execution_has_its_own_private_home_and_token_and_leaves_nothing() {
        let base = tempfile::tempdir().unwrap();
        let first = Execution::create(base.path(), "secret").unwrap();
        let second = Execution::create(base.path(), "other").unwrap();
        assert_ne!(first.home(), second.home());
        let token_file = first.token_file().unwrap();
        assert_eq!(std::fs::read_to_string(token_file).unwrap(), "secret");
        assert_eq!(mode(token_file), 0o600);
        assert_eq!(mode(first.home()), 0o700);
        assert_eq!(mode(first.home().parent().unwrap()), 0o700);
        // The token is not in the tree the app installs into and may change.
        assert!(!token_file.starts_with(first.home()));
        std::fs::write(first.home().join("planted.py"), "import os").unwrap();
        drop((first, second));
        assert_eq!(std::fs::read_dir(base.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_base_other_users_may_change_is_refused() {
        let parent = tempfile::tempdir().unwrap();
        let base = parent.path().join("flwr-home");
        std::fs::create_dir(&base).unwrap();
        std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let error = Execution::create(&base, "t").unwrap_err().to_string();
        assert!(error.contains("writable by other users"), "{error}");
    }

    #[test]
    fn secrets_under_a_kept_prefix_are_withheld() {
        let secrets = [
            "HF_TOKEN",
            "HF_HUB_TOKEN",
            "TF_TOKEN_app_terraform_io",
            "TF_VAR_db_password",
            "AWS_SECRET_ACCESS_KEY",
            "FLWR_HOME",
        ];
        let settings = [
            "HF_HOME",
            "CUDA_VISIBLE_DEVICES",
            "TF_CPP_MIN_LOG_LEVEL",
            "HTTPS_PROXY",
        ];
        let variables = secrets
            .iter()
            .chain(&settings)
            .map(|name| (name.into(), "x".into()));
        let kept: Vec<String> = flower_environment_of(variables)
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(kept, settings);
    }

    #[tokio::test]
    async fn programs_get_none_of_the_daemons_other_variables() {
        let kept = |name: &str| {
            ops::process::PASSED_ENVIRONMENT.contains(&name)
                || in_flower_environment(name)
                || ["PWD", "SHLVL", "_"].contains(&name)
        };
        // The test's own process has others (cargo's, at least): the check below means something.
        assert!(std::env::vars_os().any(|(name, _)| !kept(&name.to_string_lossy())));
        let base = tempfile::tempdir().unwrap();
        let program = base.path().join("dump-environment");
        std::fs::write(&program, "#!/bin/sh\nenv > \"$FLWR_HOME/environment\"\n").unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o700)).unwrap();
        let execution = Execution::create(&base.path().join("executions"), "t").unwrap();
        let status = app_command(&program, "127.0.0.1:1".parse().unwrap(), &execution)
            .status()
            .await
            .unwrap();
        assert!(status.success());
        let dumped = std::fs::read_to_string(execution.home().join("environment")).unwrap();
        let names: Vec<&str> = dumped.lines().filter_map(|l| l.split('=').next()).collect();
        assert!(names.contains(&"FLWR_HOME"), "{names:?}");
        assert!(!names.iter().any(|name| names_a_secret(name)), "{names:?}");
        let leaked: Vec<_> = names.into_iter().filter(|name| !kept(name)).collect();
        assert!(
            leaked.is_empty(),
            "the daemon's variables reached the program: {leaked:?}"
        );
    }
}
