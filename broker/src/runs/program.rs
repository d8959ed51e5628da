//! Server apps that are programs: the server half of an app bundle, in any language. For each
//! run the SuperLink unpacks the bundle into a fresh workspace, starts the program there with
//! the ServerAppIo API's address and a one-time token in its environment, and serves the
//! program's [`GridRequest`]s with the run's [`Grid`], as the built-in apps use it. The run
//! completes when the program exits with status 0, and fails otherwise, with its exit status and
//! last stderr lines in the run's log. Stopping the run kills the program's process group.

use super::output::{SERVER_APP_OUTPUT, quoted};
use crate::state::Shared;
use model::app::{AppError, Grid, GridError, Instruction, ServerApp, ServerContext};
use model::bundle::workspace::Workspace;
use model::bundle::{Bundle, Program};
use ops::app_process::{AppProcess, EXIT_GRACE, Ended};
use std::io::Read as _;
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use wire::MessageBody;
use wire::blocking::{read_message, read_value, write_message, write_value};
use wire::clientappio::encode_token;
use wire::error::FrameIoError;
use wire::serverappio::{
    ADDRESS_ENV, CONTROL_FRAME_LIMIT, GridFailure, GridRequest, GridResponse, ServerJob, TOKEN_ENV,
};
use wire::stream::{DEFAULT_CHUNK, Limits};

/// How long a started program has to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the connection of a program that exited right after connecting may take to arrive.
const HELLO_GRACE: Duration = Duration::from_secs(2);

/// Largest artifact or checkpoint a program may store.
pub const MAX_STORED_BYTES: u64 = 256 * 1024 * 1024;

/// Most destinations of one request.
const MAX_DESTINATIONS: usize = 1 << 20;

/// A server app that is a bundle's program.
pub struct ProgramServerApp {
    /// The broker.
    pub shared: Arc<Shared>,
    /// The bundle, checked.
    pub bundle: Arc<Bundle>,
    /// The program in it.
    pub program: Program,
    /// Cancelled when the run is stopped or the broker shuts down.
    pub cancel: CancellationToken,
    /// The broker's runtime, for the child process's async parts.
    pub handle: tokio::runtime::Handle,
}

impl ServerApp for ProgramServerApp {
    fn run(&self, grid: &dyn Grid, context: &ServerContext) -> Result<(), AppError> {
        let apps_dir = &self.shared.config.apps_dir;
        let workspace = ops::private_dir::create_private_dir(apps_dir)
            .map_err(std::io::Error::from)
            .and_then(|()| Workspace::create(apps_dir, &self.bundle))
            .map_err(|e| {
                AppError::new(format!(
                    "cannot unpack the app bundle into {}: {e}",
                    apps_dir.display()
                ))
            })?;
        let program = match self.program.bundle_path() {
            Some(path) => workspace.path().join(path),
            None => self.program.command.clone().into(),
        };
        let io = &self.shared.serverappio;
        let (token, connection) = io.expect();
        let _entered = self.handle.enter();
        // The program gets what it needs of the broker's environment, nothing more.
        let mut command = tokio::process::Command::new(&program);
        command
            .args(&self.program.args)
            .current_dir(workspace.path())
            .env_clear()
            .envs(ops::process::passed_environment())
            .env(TOKEN_ENV, encode_token(&token))
            .env(ADDRESS_ENV, io.address().to_string());
        let mut process = match AppProcess::spawn(&mut command, SERVER_APP_OUTPUT) {
            Ok(process) => process,
            Err(error) => {
                io.forget(&token);
                return Err(AppError::new(format!(
                    "cannot start the server app {}: {error}",
                    program.display()
                )));
            }
        };
        // A stopped run takes the program with it, whatever it is doing, and its connection,
        // which a process that left the group could still hold open.
        let connection_to_close: Arc<Mutex<Option<TcpStream>>> = Arc::default();
        let killer = {
            let cancel = self.cancel.clone();
            let pid = process.id();
            let connection_to_close = connection_to_close.clone();
            self.handle.spawn(async move {
                cancel.cancelled().await;
                ops::process::ProcessGroup::of(pid).kill();
                if let Some(stream) = connection_to_close
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                {
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                }
            })
        };
        let interruption = async {
            tokio::select! {
                () = tokio::time::sleep(CONNECT_TIMEOUT) => format!("the server app did not connect within {CONNECT_TIMEOUT:?}"),
                () = self.cancel.cancelled() => "the run was stopped".to_string(),
            }
        };
        // A program may connect just before it exits: its hello gets a moment to arrive.
        let connected = self
            .handle
            .block_on(process.until(connection, interruption, HELLO_GRACE));
        let connected = match connected {
            Ended::Reported(connected) => {
                connected.map_err(|_| "the ServerAppIo API stopped".to_string())
            }
            Ended::Exited(status) => Err(format!(
                "the server app {} before connecting",
                ops::process::describe_exit(status)
            )),
            Ended::Interrupted(reason) => Err(reason),
        };
        io.forget(&token);
        let served = connected.and_then(|stream| {
            let stream = stream
                .into_std()
                .and_then(|stream| stream.set_nonblocking(false).map(|()| stream))
                .map_err(|e| e.to_string())?;
            if let Ok(clone) = stream.try_clone() {
                *connection_to_close
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(clone);
            }
            if self.cancel.is_cancelled() {
                return Err("the run was stopped".to_string());
            }
            let job = ServerJob {
                run_id: context.run_id,
                app_name: self.bundle.manifest.name.clone(),
                app_version: self.bundle.manifest.version.clone(),
                run_config: context.run_config.clone(),
                checkpoint_size: context.checkpoint.as_ref().map(|c| c.len() as u64),
            };
            Serving { grid, stream }.run(job, context.checkpoint.as_deref())
        });
        // A stopped run's program, or one that broke the protocol, is killed, not waited for.
        if self.cancel.is_cancelled() || served.is_err() {
            process.kill();
        }
        let status = self.handle.block_on(process.exit_within(EXIT_GRACE));
        killer.abort();
        // Whatever it left running goes with it.
        process.kill();
        let last_words = self.handle.block_on(process.last_words());
        drop(workspace);
        served.map_err(|reason| AppError::new(format!("{reason}{}", quoted(&last_words))))?;
        match status {
            Some(Ok(status)) if status.success() => Ok(()),
            Some(status) => Err(AppError::new(format!(
                "the server app {}{}",
                ops::process::describe_exit(status),
                quoted(&last_words)
            ))),
            None => Err(AppError::new(format!(
                "the server app closed its connection but did not exit within {EXIT_GRACE:?}; \
                 it was killed{}",
                quoted(&last_words)
            ))),
        }
    }
}

/// One program's requests, answered with the run's grid.
struct Serving<'a> {
    grid: &'a dyn Grid,
    stream: TcpStream,
}

fn failure(error: GridError) -> GridResponse {
    GridResponse::Error(match error {
        GridError::Stopped => GridFailure::Stopped,
        GridError::Internal(why) => GridFailure::Internal(why),
    })
}

/// Whether `name` may name an artifact: a plain file name (`flwr pull` writes it as one).
pub(super) fn valid_artifact_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

impl Serving<'_> {
    /// Sends the job, then answers requests until the program closes the connection. An error
    /// is a program that broke the protocol.
    fn run(mut self, job: ServerJob, checkpoint: Option<&[u8]>) -> Result<(), String> {
        let broke = |e: FrameIoError| format!("the server app broke the ServerAppIo exchange: {e}");
        self.job(&job, checkpoint).map_err(broke)?;
        loop {
            let request = match read_value::<GridRequest, _>(&mut self.stream, CONTROL_FRAME_LIMIT)
            {
                Ok(request) => request,
                // The program closed its side (or died): its exit status says which.
                Err(FrameIoError::Closed | FrameIoError::Io(_)) => return Ok(()),
                Err(error) => return Err(broke(error)),
            };
            match self.answer(request) {
                Ok(()) => {}
                Err(FrameIoError::Io(_) | FrameIoError::Closed) => return Ok(()),
                Err(error) => return Err(broke(error)),
            }
        }
    }

    fn job(&mut self, job: &ServerJob, checkpoint: Option<&[u8]>) -> Result<(), FrameIoError> {
        use std::io::Write as _;
        write_value(&mut self.stream, job)?;
        if let Some(checkpoint) = checkpoint {
            self.stream.write_all(checkpoint)?;
        }
        Ok(())
    }

    fn respond(&mut self, response: &GridResponse) -> Result<(), FrameIoError> {
        write_value(&mut self.stream, response)
    }

    /// Raw bytes following a request, bounded.
    fn bytes(&mut self, size: u64) -> Result<Vec<u8>, FrameIoError> {
        let mut bytes = vec![0u8; size as usize];
        self.stream.read_exact(&mut bytes)?;
        Ok(bytes)
    }

    /// Reads and drops `size` raw bytes following a refused request.
    fn discard(&mut self, size: u64) -> Result<(), FrameIoError> {
        let copied = std::io::copy(&mut (&mut self.stream).take(size), &mut std::io::sink())?;
        if copied < size {
            return Err(FrameIoError::Closed);
        }
        Ok(())
    }

    fn answer(&mut self, request: GridRequest) -> Result<(), FrameIoError> {
        let response = match request {
            GridRequest::NodeIds => match self.grid.node_ids() {
                Ok(nodes) => GridResponse::Nodes(nodes),
                Err(error) => failure(error),
            },
            GridRequest::WaitForNodes { count, timeout_ms } => {
                let count = usize::try_from(count).unwrap_or(usize::MAX);
                match self
                    .grid
                    .wait_for_nodes(count, Duration::from_millis(timeout_ms))
                {
                    Ok(nodes) => GridResponse::Nodes(nodes),
                    Err(error) => failure(error),
                }
            }
            GridRequest::SendAndReceive {
                destinations,
                timeout_ms,
            } => return self.send_and_receive(destinations, timeout_ms),
            GridRequest::Log { line } => {
                self.grid.log(&line);
                GridResponse::Ok
            }
            GridRequest::SaveArtifact { name, size } => {
                if size > MAX_STORED_BYTES || !valid_artifact_name(&name) {
                    self.discard(size)?;
                    GridResponse::Error(GridFailure::Invalid(format!(
                        "artifact {:?} of {size} bytes: names are plain file names (letters, \
                         digits, '.', '-', '_'), sizes at most {MAX_STORED_BYTES} bytes",
                        wire::text::sanitize(&name, 64)
                    )))
                } else {
                    let bytes = self.bytes(size)?;
                    match self.grid.save_artifact(&name, &bytes) {
                        Ok(()) => GridResponse::Ok,
                        Err(error) => failure(error),
                    }
                }
            }
            GridRequest::SaveCheckpoint { size } => {
                if size > MAX_STORED_BYTES {
                    self.discard(size)?;
                    GridResponse::Error(GridFailure::Invalid(format!(
                        "a checkpoint of {size} bytes (at most {MAX_STORED_BYTES})"
                    )))
                } else {
                    let bytes = self.bytes(size)?;
                    match self.grid.save_checkpoint(&bytes) {
                        Ok(()) => GridResponse::Ok,
                        Err(error) => failure(error),
                    }
                }
            }
        };
        self.respond(&response)
    }

    fn send_and_receive(
        &mut self,
        destinations: Vec<wire::NodeId>,
        timeout_ms: u64,
    ) -> Result<(), FrameIoError> {
        let message = read_message(&mut self.stream, Limits::default())?;
        let MessageBody::Content(content) = message.body else {
            return Err(
                wire::WireError::Invalid("a message to send without content".into()).into(),
            );
        };
        if destinations.len() > MAX_DESTINATIONS || destinations.iter().any(|node| !node.is_node())
        {
            return Err(wire::WireError::Invalid("destinations must be node ids".into()).into());
        }
        let content = Arc::new(content);
        let instructions = destinations
            .into_iter()
            .map(|dst| Instruction {
                dst,
                message_type: message.metadata.message_type,
                group_id: message.metadata.group_id.clone(),
                content: content.clone(),
            })
            .collect();
        let mut broken: Option<FrameIoError> = None;
        let stream = &mut self.stream;
        let sent = self.grid.send_and_fold(
            instructions,
            Duration::from_millis(timeout_ms),
            &mut |reply| {
                if broken.is_some() {
                    return;
                }
                let written = write_value(&mut *stream, &GridResponse::Reply)
                    .and_then(|()| write_message(&mut *stream, &reply, DEFAULT_CHUNK));
                if let Err(error) = written {
                    broken = Some(error);
                }
            },
        );
        if let Some(error) = broken {
            return Err(error);
        }
        match sent {
            Ok(()) => self.respond(&GridResponse::Done),
            Err(error) => self.respond(&failure(error)),
        }
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
}
