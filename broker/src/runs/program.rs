//! Server apps that are programs: the server half of an app bundle, in any language. For each
//! run the SuperLink unpacks the bundle into a fresh workspace, starts the program there with
//! the ServerAppIo API's address and a one-time token in its environment, and serves the
//! program's [`GridRequest`]s with the run's grid, as the built-in apps use it. The run
//! completes when the program exits with status 0, and fails otherwise, with its exit status and
//! last stderr lines in the run's log. Stopping the run kills the program's process group.

use super::grid::BrokerGrid;
use super::output::{SERVER_APP_OUTPUT, quoted};
use super::workdir::{MAX_STORED_BYTES, OffRuntime, valid_artifact_name};
use crate::state::Shared;
use app_bundle::workspace::Workspace;
use app_bundle::{Bundle, Program};
use flwr_sdk::app::{AppError, Grid as _, GridError, Instruction, ServerContext};
use ops::app_process::{AppProcess, EXIT_GRACE, Ended};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wire::MessageBody;
use wire::clientappio::encode_token;
use wire::error::FrameIoError;
use wire::io::{read_message, read_value, write_message, write_value};
use wire::serverappio::{
    ADDRESS_ENV, CONTROL_FRAME_LIMIT, GridFailure, GridRequest, GridResponse, ServerJob, TOKEN_ENV,
};
use wire::stream::{DEFAULT_CHUNK, Limits};

/// How long a started program has to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the connection of a program that exited right after connecting may take to arrive.
const HELLO_GRACE: Duration = Duration::from_secs(2);

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
}

impl ProgramServerApp {
    /// Runs the program against `grid` until it exits, breaks the protocol, or the run is
    /// stopped; every process of it is gone when this returns.
    pub async fn run(self, grid: Arc<BrokerGrid>, context: ServerContext) -> Result<(), AppError> {
        let apps_dir = self.shared.config.apps_dir.clone();
        let unpacked = {
            let (apps_dir, bundle) = (apps_dir.clone(), self.bundle.clone());
            // Writes the bundle's files: off the runtime.
            tokio::task::spawn_blocking(move || {
                ops::private_dir::create_private_dir(&apps_dir)
                    .map_err(std::io::Error::from)
                    .and_then(|()| Workspace::create(&apps_dir, &bundle))
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|unpacked| unpacked)
        };
        let workspace = OffRuntime::new(unpacked.map_err(|e| {
            AppError::new(format!(
                "cannot unpack the app bundle into {}: {e}",
                apps_dir.display()
            ))
        })?);
        let program = match self.program.bundle_path() {
            Some(path) => workspace.get().path().join(path),
            None => self.program.command.clone().into(),
        };
        let io = &self.shared.serverappio;
        let (token, connection) = io.expect();
        // The program gets what it needs of the broker's environment, nothing more.
        let mut command = tokio::process::Command::new(&program);
        command
            .args(&self.program.args)
            .current_dir(workspace.get().path())
            .env_clear()
            .envs(ops::process::passed_environment())
            .env(TOKEN_ENV, encode_token(&token))
            .env(ADDRESS_ENV, io.address().to_string());
        let started = std::time::Instant::now();
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
        let interruption = async {
            tokio::select! {
                () = tokio::time::sleep(CONNECT_TIMEOUT) => format!("the server app did not connect within {CONNECT_TIMEOUT:?}"),
                () = self.cancel.cancelled() => "the run was stopped".to_string(),
            }
        };
        // A program may connect just before it exits: its hello gets a moment to arrive.
        let connected = match process.until(connection, interruption, HELLO_GRACE).await {
            Ended::Reported(connected) => {
                connected.map_err(|_| "the ServerAppIo API stopped".to_string())
            }
            Ended::Exited(status) => Err(io.explained(
                format!(
                    "the server app {} before connecting",
                    ops::process::describe_exit(status)
                ),
                started,
            )),
            Ended::Interrupted(reason) => Err(io.explained(reason, started)),
        };
        io.forget(&token);
        let served = match connected {
            Ok(stream) => {
                let job = ServerJob {
                    run_id: context.run_id,
                    app_name: self.bundle.manifest.name.clone(),
                    app_version: self.bundle.manifest.version.clone(),
                    run_config: context.run_config.clone(),
                    checkpoint_size: context.checkpoint.as_ref().map(|c| c.len() as u64),
                };
                let writes = TaskTracker::new();
                let serving = Serving {
                    grid,
                    stream,
                    writes: writes.clone(),
                }
                .run(job, context.checkpoint.as_deref());
                // A stopped run takes the program's connection with it, whatever it is doing (no
                // reply reaches a stopped run's app), and so does a program that exits while it
                // is served: a round it left open is not waited out.
                let served = match process
                    .until(serving, self.cancel.cancelled(), HELLO_GRACE)
                    .await
                {
                    Ended::Reported(served) => served,
                    Ended::Exited(_) => Ok(()),
                    Ended::Interrupted(()) => Err("the run was stopped".to_string()),
                };
                // Store writes it asked for are done (or refused) before the run is declared
                // over: none lands after a stopped run's checkpoint is forgotten.
                writes.close();
                writes.wait().await;
                served
            }
            Err(reason) => Err(reason),
        };
        // A stopped run's program, or one that broke the protocol, is killed, not waited for.
        if self.cancel.is_cancelled() || served.is_err() {
            process.kill();
        }
        let status = process.exit_within(EXIT_GRACE).await;
        // Whatever it left running goes with it.
        process.kill();
        let last_words = process.last_words().await;
        // Removed before the run is declared over, off the runtime.
        let workspace = workspace.take();
        let _ = tokio::task::spawn_blocking(move || drop(workspace)).await;
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
struct Serving {
    grid: Arc<BrokerGrid>,
    stream: TcpStream,
    /// The store writes it asked for, each on a blocking thread; awaited before the run ends.
    writes: TaskTracker,
}

fn failure(error: GridError) -> GridResponse {
    GridResponse::Error(match error {
        GridError::Stopped => GridFailure::Stopped,
        GridError::Internal(why) => GridFailure::Internal(why),
    })
}

/// What a blocking store call on a thread of its own gave, or why it gave nothing.
fn stored(outcome: Result<Result<(), GridError>, tokio::task::JoinError>) -> GridResponse {
    match outcome {
        Ok(Ok(())) => GridResponse::Ok,
        Ok(Err(error)) => failure(error),
        Err(join) => failure(GridError::Internal(join.to_string())),
    }
}

impl Serving {
    /// Sends the job, then answers requests until the program closes the connection. An error
    /// is a program that broke the protocol.
    async fn run(mut self, job: ServerJob, checkpoint: Option<&[u8]>) -> Result<(), String> {
        let broke = |e: FrameIoError| format!("the server app broke the ServerAppIo exchange: {e}");
        self.job(&job, checkpoint).await.map_err(broke)?;
        loop {
            let request =
                match read_value::<GridRequest, _>(&mut self.stream, CONTROL_FRAME_LIMIT).await {
                    Ok(request) => request,
                    // The program closed its side (or died): its exit status says which.
                    Err(FrameIoError::Closed | FrameIoError::Io(_)) => return Ok(()),
                    Err(error) => return Err(broke(error)),
                };
            match self.answer(request).await {
                Ok(()) => {}
                Err(FrameIoError::Io(_) | FrameIoError::Closed) => return Ok(()),
                Err(error) => return Err(broke(error)),
            }
        }
    }

    async fn job(
        &mut self,
        job: &ServerJob,
        checkpoint: Option<&[u8]>,
    ) -> Result<(), FrameIoError> {
        write_value(&mut self.stream, job).await?;
        if let Some(checkpoint) = checkpoint {
            self.stream.write_all(checkpoint).await?;
        }
        Ok(())
    }

    async fn respond(&mut self, response: &GridResponse) -> Result<(), FrameIoError> {
        write_value(&mut self.stream, response).await
    }

    /// Raw bytes following a request, bounded.
    async fn bytes(&mut self, size: u64) -> Result<Vec<u8>, FrameIoError> {
        let mut bytes = vec![0u8; size as usize];
        self.stream.read_exact(&mut bytes).await?;
        Ok(bytes)
    }

    /// Reads and drops `size` raw bytes following a refused request.
    async fn discard(&mut self, size: u64) -> Result<(), FrameIoError> {
        let copied =
            tokio::io::copy(&mut (&mut self.stream).take(size), &mut tokio::io::sink()).await?;
        if copied < size {
            return Err(FrameIoError::Closed);
        }
        Ok(())
    }

    async fn answer(&mut self, request: GridRequest) -> Result<(), FrameIoError> {
        let grid = self.grid.clone();
        let response = match request {
            GridRequest::NodeIds => match grid.node_ids() {
                Ok(nodes) => GridResponse::Nodes(nodes),
                Err(error) => failure(error),
            },
            GridRequest::WaitForNodes { count, timeout_ms } => {
                let count = usize::try_from(count).unwrap_or(usize::MAX);
                match grid
                    .wait_for_nodes_async(count, Duration::from_millis(timeout_ms))
                    .await
                {
                    Ok(nodes) => GridResponse::Nodes(nodes),
                    Err(error) => failure(error),
                }
            }
            GridRequest::SendAndReceive {
                destinations,
                timeout_ms,
            } => return self.send_and_receive(destinations, timeout_ms).await,
            // The store commits to disk: off the runtime.
            GridRequest::Log { line } => {
                let _ = self.writes.spawn_blocking(move || grid.log(&line)).await;
                GridResponse::Ok
            }
            GridRequest::SaveArtifact { name, size } => {
                if size > MAX_STORED_BYTES || !valid_artifact_name(&name) {
                    self.discard(size).await?;
                    GridResponse::Error(GridFailure::Invalid(format!(
                        "artifact {:?} of {size} bytes: names are plain file names (letters, \
                         digits, '.', '-', '_'), sizes at most {MAX_STORED_BYTES} bytes",
                        wire::text::sanitize(&name, 64)
                    )))
                } else {
                    let bytes = self.bytes(size).await?;
                    stored(
                        self.writes
                            .spawn_blocking(move || grid.save_artifact(&name, &bytes))
                            .await,
                    )
                }
            }
            GridRequest::SaveCheckpoint { size } => {
                if size > MAX_STORED_BYTES {
                    self.discard(size).await?;
                    GridResponse::Error(GridFailure::Invalid(format!(
                        "a checkpoint of {size} bytes (at most {MAX_STORED_BYTES})"
                    )))
                } else {
                    let bytes = self.bytes(size).await?;
                    stored(
                        self.writes
                            .spawn_blocking(move || grid.save_checkpoint(&bytes))
                            .await,
                    )
                }
            }
        };
        self.respond(&response).await
    }

    /// Writes a node's error reply in the run's log, as for every kind of app: the program hears
    /// of it, and may say nothing of it.
    fn log_error(&self, reply: &wire::Message) {
        if let Some(line) = crate::runs::output::node_error_line(reply) {
            let grid = self.grid.clone();
            // Tracked like every write of the program's: awaited before the run ends.
            self.writes.spawn_blocking(move || grid.log(&line));
        }
    }

    /// Sends a message to `destinations` and forwards each reply to the program as it arrives.
    /// A program that stops reading ends the round at once: its instructions are withdrawn.
    async fn send_and_receive(
        &mut self,
        destinations: Vec<wire::NodeId>,
        timeout_ms: u64,
    ) -> Result<(), FrameIoError> {
        let message = read_message(&mut self.stream, Limits::default()).await?;
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
                message_type: message.metadata.message_type.clone(),
                group_id: message.metadata.group_id.clone(),
                content: content.clone(),
            })
            .collect();
        let (replies, mut received) = tokio::sync::mpsc::unbounded_channel();
        let grid = self.grid.clone();
        // Owns the sending end of `replies`: once the round is over, the channel ends.
        let send = async move {
            let mut on_reply = move |reply| {
                let _ = replies.send(reply);
            };
            grid.send_and_fold_async(
                instructions,
                Duration::from_millis(timeout_ms),
                &mut on_reply,
            )
            .await
        };
        tokio::pin!(send);
        let mut sent = None;
        loop {
            tokio::select! {
                result = &mut send, if sent.is_none() => {
                    // A stopped run's app hears of no reply still queued.
                    if matches!(result, Err(GridError::Stopped)) {
                        return self.respond(&failure(GridError::Stopped)).await;
                    }
                    sent = Some(result);
                }
                reply = received.recv() => match reply {
                    Some(reply) => {
                        self.log_error(&reply);
                        write_value(&mut self.stream, &GridResponse::Reply).await?;
                        write_message(&mut self.stream, &reply, DEFAULT_CHUNK).await?;
                    }
                    None => break,
                },
            }
        }
        // The channel ends only once the round is over, so `sent` is known here.
        let sent =
            sent.unwrap_or_else(|| Err(GridError::Internal("the round ended unseen".into())));
        match sent {
            Ok(()) => self.respond(&GridResponse::Done).await,
            Err(error) => self.respond(&failure(error)).await,
        }
    }
}
