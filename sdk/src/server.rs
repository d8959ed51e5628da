//! The server half: one run per process, the federation reached through the SuperLink.

use crate::app::{Grid, GridError, Instruction, ServerApp, ServerContext};
use crate::connect::{SdkError, connect_for_job};
use std::io::{Read, Write};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wire::blocking::{read_message, read_value, write_message, write_value};
use wire::error::FrameIoError;
use wire::serverappio::{
    ADDRESS_ENV, CONTROL_FRAME_LIMIT, GridFailure, GridRequest, GridResponse, SERVERAPPIO_VERSION,
    ServerJob, TOKEN_ENV,
};
use wire::stream::{DEFAULT_CHUNK, Limits};
use wire::{Message, MessageBody, MessageId, Metadata, NodeId, RunId};

/// A byte stream to the SuperLink.
pub trait Link: Read + Write + Send {}

impl<T: Read + Write + Send> Link for T {}

/// The federation as a server program sees it: every [`Grid`] operation is a request to the
/// SuperLink that started the program.
pub struct RemoteGrid {
    run_id: RunId,
    link: Mutex<Box<dyn Link>>,
    /// The thread running a `send_and_fold` callback, while it does: the link is busy with
    /// the replies then, and a grid call from that callback is an error rather than a deadlock.
    folding: Mutex<Option<std::thread::ThreadId>>,
}

fn broken(error: FrameIoError) -> GridError {
    GridError::Internal(format!("the connection to the SuperLink broke: {error}"))
}

fn refused(failure: GridFailure) -> GridError {
    match failure {
        GridFailure::Stopped => GridError::Stopped,
        other => GridError::Internal(other.to_string()),
    }
}

fn unexpected(response: GridResponse) -> GridError {
    GridError::Internal(format!(
        "unexpected answer from the SuperLink: {response:?}"
    ))
}

impl RemoteGrid {
    /// A grid for run `run_id` over `link`, past the job.
    pub fn new(run_id: RunId, link: Box<dyn Link>) -> Self {
        RemoteGrid {
            run_id,
            link: Mutex::new(link),
            folding: Mutex::new(None),
        }
    }

    fn link(&self) -> Result<std::sync::MutexGuard<'_, Box<dyn Link>>, GridError> {
        let folding = *self.folding.lock().unwrap_or_else(|p| p.into_inner());
        if folding == Some(std::thread::current().id()) {
            return Err(GridError::Internal(
                "a grid call from inside a send_and_fold callback: the connection is busy with \
                 the replies; collect what the callback needs and call the grid after it"
                    .into(),
            ));
        }
        // Requests are written and answered whole under the lock: a poisoned link is still
        // between two requests.
        Ok(self
            .link
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// Sends `request` (and `bytes` after it) and reads the answer.
    fn call(&self, request: &GridRequest, bytes: &[u8]) -> Result<GridResponse, GridError> {
        let mut link = self.link()?;
        write_value(&mut *link, request).map_err(broken)?;
        link.write_all(bytes)
            .and_then(|()| link.flush())
            .map_err(|e| broken(e.into()))?;
        match read_value(&mut *link, CONTROL_FRAME_LIMIT).map_err(broken)? {
            GridResponse::Error(failure) => Err(refused(failure)),
            response => Ok(response),
        }
    }

    fn nodes(&self, request: &GridRequest) -> Result<Vec<NodeId>, GridError> {
        match self.call(request, &[])? {
            GridResponse::Nodes(nodes) => Ok(nodes),
            other => Err(unexpected(other)),
        }
    }

    fn stored(&self, request: &GridRequest, bytes: &[u8]) -> Result<(), GridError> {
        match self.call(request, bytes)? {
            GridResponse::Ok => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Sends one content to `destinations` and folds the replies as they arrive.
    fn send_group(
        &self,
        destinations: Vec<NodeId>,
        template: &Instruction,
        timeout: Duration,
        on_reply: &mut dyn FnMut(Message),
    ) -> Result<(), GridError> {
        let mut link = self.link()?;
        let request = GridRequest::SendAndReceive {
            destinations,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        // The SuperLink fills in routing and ids; only the type and the round are read here.
        let message = Message {
            metadata: Metadata {
                run_id: self.run_id,
                message_id: MessageId(0),
                src_node_id: NodeId::SERVER,
                dst_node_id: NodeId(0),
                reply_to: None,
                group_id: template.group_id.clone(),
                ttl_ms: 0,
                message_type: template.message_type.clone(),
                created_at_ms: 0,
            },
            body: MessageBody::Content((*template.content).clone()),
        };
        write_value(&mut *link, &request).map_err(broken)?;
        write_message(&mut *link, &message, DEFAULT_CHUNK).map_err(broken)?;
        link.flush().map_err(|e| broken(e.into()))?;
        loop {
            match read_value(&mut *link, CONTROL_FRAME_LIMIT).map_err(broken)? {
                GridResponse::Reply => {
                    let reply = read_message(&mut *link, Limits::default()).map_err(broken)?;
                    *self.folding.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(std::thread::current().id());
                    on_reply(reply);
                    *self.folding.lock().unwrap_or_else(|p| p.into_inner()) = None;
                }
                GridResponse::Done => return Ok(()),
                GridResponse::Error(failure) => return Err(refused(failure)),
                other => return Err(unexpected(other)),
            }
        }
    }
}

impl Grid for RemoteGrid {
    fn run_id(&self) -> RunId {
        self.run_id
    }

    fn node_ids(&self) -> Result<Vec<NodeId>, GridError> {
        self.nodes(&GridRequest::NodeIds)
    }

    fn wait_for_nodes(&self, count: usize, timeout: Duration) -> Result<Vec<NodeId>, GridError> {
        self.nodes(&GridRequest::WaitForNodes {
            count: count as u64,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        })
    }

    fn send_and_fold(
        &self,
        instructions: Vec<Instruction>,
        timeout: Duration,
        on_reply: &mut dyn FnMut(Message),
    ) -> Result<(), GridError> {
        // Instructions that share their content, type and round go in one request: the
        // content crosses the connection once, however many nodes it is for.
        let mut groups: Vec<(Instruction, Vec<NodeId>)> = Vec::new();
        for instruction in instructions {
            let same = groups.iter_mut().find(|(first, _)| {
                Arc::ptr_eq(&first.content, &instruction.content)
                    && first.message_type == instruction.message_type
                    && first.group_id == instruction.group_id
            });
            match same {
                Some((_, destinations)) => destinations.push(instruction.dst),
                None => {
                    let dst = instruction.dst;
                    groups.push((instruction, vec![dst]));
                }
            }
        }
        for (template, destinations) in groups {
            self.send_group(destinations, &template, timeout, on_reply)?;
        }
        Ok(())
    }

    fn log(&self, line: &str) {
        let request = GridRequest::Log {
            line: line.to_string(),
        };
        if let Err(error) = self.stored(&request, &[]) {
            eprintln!("server app: a log line was lost: {error}");
        }
    }

    fn save_artifact(&self, name: &str, bytes: &[u8]) -> Result<(), GridError> {
        let request = GridRequest::SaveArtifact {
            name: name.to_string(),
            size: bytes.len() as u64,
        };
        self.stored(&request, bytes)
    }

    fn save_checkpoint(&self, state: &[u8]) -> Result<(), GridError> {
        let request = GridRequest::SaveCheckpoint {
            size: state.len() as u64,
        };
        self.stored(&request, state)
    }
}

/// Runs `app` for the run of `job`, over `link` (connected, past its hello and the job).
pub fn serve_run(
    app: &dyn ServerApp,
    job: ServerJob,
    mut link: Box<dyn Link>,
) -> Result<(), SdkError> {
    let checkpoint = match job.checkpoint_size {
        Some(size) => {
            let size = usize::try_from(size)
                .map_err(|_| SdkError::Refused("a checkpoint larger than memory".into()))?;
            let mut bytes = vec![0u8; size];
            link.read_exact(&mut bytes).map_err(FrameIoError::from)?;
            Some(bytes)
        }
        None => None,
    };
    let context = ServerContext {
        run_id: job.run_id,
        run_config: job.run_config,
        checkpoint,
    };
    let grid = RemoteGrid::new(job.run_id, link);
    app.run(&grid, &context)
        .map_err(|error| SdkError::Refused(error.to_string()))
}

/// The whole `main` of a server program: connects to the SuperLink that started it, runs `app`
/// for its run, and returns the exit code; the run completes on success and fails otherwise,
/// with the reason (printed on stderr) in its log.
///
/// ```no_run
/// # struct MyStrategyApp;
/// # impl flwr_sdk::ServerApp for MyStrategyApp {
/// #     fn run(&self, _: &dyn flwr_sdk::Grid, _: &flwr_sdk::ServerContext)
/// #         -> Result<(), flwr_sdk::AppError> { Ok(()) }
/// # }
/// fn main() -> std::process::ExitCode {
///     flwr_sdk::run_server_app(&MyStrategyApp)
/// }
/// ```
pub fn run_server_app(app: &dyn ServerApp) -> ExitCode {
    let outcome = connect_for_job(
        ADDRESS_ENV,
        TOKEN_ENV,
        SERVERAPPIO_VERSION,
        CONTROL_FRAME_LIMIT,
    )
    .and_then(|(stream, job)| serve_run(app, job, Box::new(stream)));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("server app: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use wire::{Array, ArrayRecord, MessageType, Record, RecordDict};

    fn instruction(content: RecordDict) -> Instruction {
        Instruction {
            dst: NodeId(300),
            message_type: MessageType::TRAIN,
            group_id: "1".into(),
            content: Arc::new(content),
        }
    }

    /// A SuperLink that answers one SendAndReceive with an echo of the content from node 300,
    /// then `Ok` to everything.
    fn superlink(mut stream: UnixStream) -> std::thread::JoinHandle<Vec<GridRequest>> {
        std::thread::spawn(move || {
            let mut requests = Vec::new();
            while let Ok(request) = read_value::<GridRequest, _>(&mut stream, CONTROL_FRAME_LIMIT) {
                if let GridRequest::SendAndReceive { .. } = &request {
                    let sent = read_message(&mut stream, Limits::default()).unwrap();
                    let mut reply = sent.reply(sent.body.clone(), 0);
                    reply.metadata.src_node_id = NodeId(300);
                    write_value(&mut stream, &GridResponse::Reply).unwrap();
                    write_message(&mut stream, &reply, 7).unwrap();
                    write_value(&mut stream, &GridResponse::Done).unwrap();
                } else {
                    write_value(&mut stream, &GridResponse::Ok).unwrap();
                }
                requests.push(request);
            }
            requests
        })
    }

    #[test]
    fn replies_are_folded_and_a_grid_call_from_the_fold_is_refused_not_deadlocked() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let server = superlink(theirs);
        let grid = RemoteGrid::new(RunId(7), Box::new(ours));
        let array = Array::from_f32(vec![3], &[1.0, 2.0, 3.0]).unwrap();
        let content = RecordDict::new().with(
            "arrays",
            Record::Arrays(ArrayRecord::new().with("w", array)),
        );
        let mut replies = Vec::new();
        let mut nested = None;
        grid.send_and_fold(
            vec![instruction(content.clone())],
            Duration::from_secs(1),
            &mut |reply| {
                nested = Some(grid.node_ids());
                replies.push(reply);
            },
        )
        .unwrap();
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].body, MessageBody::Content(content));
        assert!(
            matches!(nested, Some(Err(GridError::Internal(_)))),
            "{nested:?}"
        );
        // After the fold, the grid works again.
        grid.log("after");
        grid.save_artifact("model.bin", b"weights").unwrap();
        drop(grid);
        let requests = server.join().unwrap();
        assert!(matches!(&requests[1], GridRequest::Log { line } if line == "after"));
        assert!(matches!(
            &requests[2],
            GridRequest::SaveArtifact { name, size: 7 } if name == "model.bin"
        ));
    }
}
