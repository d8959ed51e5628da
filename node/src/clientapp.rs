//! `flwr-clientapp`: the process a node starts for one instruction under subprocess isolation. It
//! connects to the node's ClientAppIo API, proves with the token from its environment that it is
//! the child the node started, runs the client app on the instruction, sends the reply and exits.
//! Whatever the app does to this process (abort, running out of memory), the node lives on.
//!
//! Started by the operator without a token, for a node under `--isolation process`, it stays:
//! it asks the node for the next waiting instruction, answers it, and asks again.

use crate::settings::RuntimeArgs;
use clap::Parser;
use flwr_sdk::app::ClientContext;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use wire::clientappio::{
    AppHello, AppJob, CLIENTAPPIO_VERSION, CONTROL_FRAME_LIMIT, PULL_TOKEN, TOKEN_ENV, decode_token,
};
use wire::io::{read_message, read_value, write_message};
use wire::message::now_ms;
use wire::stream::{DEFAULT_CHUNK, Limits};
use wire::{Message, MessageBody};

/// Runs one client app instruction for the SuperNode that started this process, or, started by
/// hand for a SuperNode under `--isolation process`, every instruction it hands out.
#[derive(Debug, Parser)]
#[command(name = "flwr-clientapp", version, about)]
pub struct Args {
    /// The SuperNode's ClientAppIo API.
    #[arg(long, value_name = "ADDR")]
    pub clientappio_api_address: SocketAddr,
    /// Training device and log format.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Why this process could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum ClientAppError {
    /// The token in the environment is not one a node makes.
    #[error(
        "{TOKEN_ENV} is malformed: it is set by flower-supernode for the process it starts (leave it unset to serve a node under --isolation process)"
    )]
    BadToken,
    /// The node could not be reached or broke the exchange.
    #[error("ClientAppIo API at {address}: {reason}")]
    Io {
        /// The node's address.
        address: SocketAddr,
        /// What failed.
        reason: String,
    },
}

/// The whole `flwr-clientapp` program: flags, logging, then [`run`]; a failure is printed with
/// its reason and ends the process with a failure status.
pub fn main() -> std::process::ExitCode {
    let args = Args::parse();
    crate::logging::init(args.runtime.log_format);
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start its runtime: {error}"))
        .and_then(|runtime| {
            runtime
                .block_on(run(&args))
                .map_err(|error| error.to_string())
        });
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!("flwr-clientapp: {reason}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the client app on `instruction`; a panic becomes an error reply, like in the node.
async fn answer(
    job: &AppJob,
    instruction: &Message,
    args: &Args,
    cancelled: Arc<AtomicBool>,
) -> MessageBody {
    let context = ClientContext {
        node_id: job.node_id,
        node_config: job.node_config.clone(),
        run_config: job.header.run_config.clone(),
        cancelled,
    };
    let apps =
        crate::apps::client_apps(Arc::new(crate::apps::CnnClient::new(args.runtime.backend)));
    crate::apps::answer(&apps, &job.header.app_name, instruction, context).await
}

/// How long a client app keeps trying to reach its node.
const CONNECT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// Pause between two attempts.
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Connects, shows the token, and receives the job; or why not.
async fn connect_for_job(
    address: std::net::SocketAddr,
    token: [u8; wire::clientappio::TOKEN_LEN],
) -> Result<(TcpStream, AppJob), String> {
    let mut stream = TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    let hello = AppHello {
        version: CLIENTAPPIO_VERSION,
        token,
    };
    wire::io::write_value(&mut stream, &hello)
        .await
        .map_err(|e| e.to_string())?;
    let job: AppJob = read_value(&mut stream, CONTROL_FRAME_LIMIT)
        .await
        .map_err(|e| format!("no job: {e}"))?;
    Ok((stream, job))
}

/// How often a process started by the operator asks for work while there is none.
const POLL_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);

/// With a token: connects, receives the instruction, answers it. Without one: serves the node
/// under `--isolation process` until killed.
pub async fn run(args: &Args) -> Result<(), ClientAppError> {
    let token = match std::env::var(TOKEN_ENV) {
        Ok(text) => decode_token(&text).ok_or(ClientAppError::BadToken)?,
        Err(_) => return serve(args).await,
    };
    let address = args.clientappio_api_address;
    let io = |reason: String| ClientAppError::Io { address, reason };
    // The node may close a connection that waited behind others: try again until it answers.
    let deadline = tokio::time::Instant::now() + CONNECT_PATIENCE;
    let (mut stream, job) = loop {
        match connect_for_job(address, token).await {
            Ok(connected) => break connected,
            Err(reason) if tokio::time::Instant::now() >= deadline => return Err(io(reason)),
            Err(_) => tokio::time::sleep(RETRY_PAUSE).await,
        }
    };
    answer_job(&mut stream, &job, args).await.map_err(io)
}

/// Receives the instruction that follows `job` on `stream`, runs the app, sends the reply.
async fn answer_job(stream: &mut TcpStream, job: &AppJob, args: &Args) -> Result<(), String> {
    let instruction = read_message(&mut *stream, Limits::default())
        .await
        .map_err(|e| format!("unreadable instruction: {e}"))?;
    tracing::info!(
        app = %job.header.app_name,
        message_type = instruction.metadata.message_type.as_str(),
        round = %instruction.metadata.group_id,
        "running the client app"
    );
    // The node closes the connection when the run stops or the instruction expires: then the
    // app is told to stop (a process the node started is killed anyway; one the operator
    // started lives on to take the next instruction).
    let cancelled = Arc::new(AtomicBool::new(false));
    let (mut from_node, _) = stream.split();
    let work = answer(job, &instruction, args, cancelled.clone());
    tokio::pin!(work);
    let mut probe = [0u8; 1];
    let body = tokio::select! {
        body = &mut work => body,
        _ = from_node.read(&mut probe) => {
            cancelled.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = work.await;
            return Err("the node closed the connection (run stopped or instruction expired)".into());
        }
    };
    let reply = instruction.reply(body, now_ms());
    write_message(&mut *stream, &reply, DEFAULT_CHUNK)
        .await
        .map_err(|e| format!("cannot send the reply: {e}"))?;
    stream
        .shutdown()
        .await
        .map_err(|e| format!("cannot send the reply: {e}"))
}

/// Process isolation: asks the node for work, answers it, and asks again, until killed.
async fn serve(args: &Args) -> Result<(), ClientAppError> {
    let address = args.clientappio_api_address;
    tracing::info!(%address, "taking instructions from the SuperNode (--isolation process)");
    let mut said_unreachable = false;
    loop {
        match connect_for_job(address, PULL_TOKEN).await {
            Ok((mut stream, job)) => {
                said_unreachable = false;
                if let Err(reason) = answer_job(&mut stream, &job, args).await {
                    tracing::warn!(%reason, "instruction not answered");
                }
            }
            Err(reason) => {
                // "No job" is the node saying there is no work yet; a refused connection is a
                // node not (yet) there: said once, then tried again quietly.
                if reason.starts_with("no job") {
                    said_unreachable = false;
                } else if !said_unreachable {
                    tracing::warn!(%address, %reason, "the SuperNode's ClientAppIo API does not answer; trying again");
                    said_unreachable = true;
                }
                tokio::time::sleep(POLL_PAUSE).await;
            }
        }
    }
}
