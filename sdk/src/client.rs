//! The client half: one instruction per process.

use crate::app::{ClientApp, ClientContext};
use crate::connect::{SdkError, connect_for_job};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use wire::MessageBody;
use wire::blocking::{read_message, write_message};
use wire::clientappio::{ADDRESS_ENV, AppJob, CLIENTAPPIO_VERSION, CONTROL_FRAME_LIMIT, TOKEN_ENV};
use wire::message::{ErrorCode, MessageError, now_ms};
use wire::stream::{DEFAULT_CHUNK, Limits};

/// Answers the instruction this process was started for with `app`, over `stream` (connected,
/// past its hello and its `job`): receives the instruction, runs the app, sends the reply.
/// An error of the app becomes an error reply, which reaches the run's log.
pub fn serve_instruction<S: std::io::Read + std::io::Write>(
    app: &dyn ClientApp,
    job: AppJob,
    stream: &mut S,
) -> Result<(), SdkError> {
    let instruction = read_message(stream, Limits::default())?;
    let context = ClientContext {
        node_id: job.node_id,
        node_config: job.node_config,
        run_config: job.header.run_config,
        cancelled: Arc::new(AtomicBool::new(false)),
    };
    let body = match app.handle(&instruction, &context) {
        Ok(content) => MessageBody::Content(content),
        Err(error) => MessageBody::Error(MessageError {
            code: ErrorCode::ClientAppRaisedException,
            reason: error.to_string(),
        }),
    };
    write_message(stream, &instruction.reply(body, now_ms()), DEFAULT_CHUNK)?;
    stream.flush().map_err(wire::error::FrameIoError::from)?;
    Ok(())
}

/// The whole `main` of a client program: connects to the node that started it, answers its
/// instruction with `app`, and returns the exit code (failure, with the reason on stderr, when
/// the exchange broke).
///
/// ```no_run
/// # struct MyApp;
/// # impl flwr_sdk::ClientApp for MyApp {
/// #     fn handle(&self, _: &flwr_sdk::Message, _: &flwr_sdk::ClientContext)
/// #         -> Result<flwr_sdk::RecordDict, flwr_sdk::AppError> { Ok(flwr_sdk::RecordDict::new()) }
/// # }
/// fn main() -> std::process::ExitCode {
///     flwr_sdk::run_client_app(&MyApp)
/// }
/// ```
pub fn run_client_app(app: &dyn ClientApp) -> ExitCode {
    let outcome = connect_for_job(
        ADDRESS_ENV,
        TOKEN_ENV,
        CLIENTAPPIO_VERSION,
        CONTROL_FRAME_LIMIT,
    )
    .and_then(|(mut stream, job)| serve_instruction(app, job, &mut stream));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("client app: {error}");
            ExitCode::FAILURE
        }
    }
}
