//! Client apps in a process of their own (Flower's subprocess isolation). For each instruction the
//! node starts `flwr-clientapp`, which connects back to the ClientAppIo API on
//! `--clientappio-api-address`, proves with a one-time token that it is the child the node started,
//! receives the instruction, and sends the reply. A child that aborts, runs out of memory or is
//! killed costs that one instruction an error reply; the node itself carries on.
//!
//! Under process isolation (Flower's `--isolation process`) the operator starts
//! `flwr-clientapp --clientappio-api-address ADDR` without a token, as many as wanted, and keeps
//! them running; each asks for the next waiting instruction ([`PULL_TOKEN`]) and answers it. The
//! trust boundary is then who may reach the address: this host's processes, by default.

use ops::app_process::{AppProcess, Ended, Output};
use ops::token_gate::{self, HelloFuture, Rules, Shown, TokenGate};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wire::clientappio::{
    ADDRESS_ENV, AppHello, AppJob, CLIENTAPPIO_VERSION, HELLO_FRAME_LIMIT, PULL_TOKEN, TOKEN_ENV,
    TOKEN_LEN, encode_token,
};
use wire::io::{read_message, read_value, write_message, write_value};
use wire::message::{ErrorCode, MessageError};
use wire::stream::{DEFAULT_CHUNK, Limits};
use wire::{Message, MessageBody};

/// How long a started child has to connect and say hello.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// How often a running child is checked for a stopped run.
const CANCEL_POLL: Duration = Duration::from_millis(100);

/// Where client apps run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Isolation {
    /// On a thread of the node: fastest to start, but an abort or running out of memory in the app
    /// takes the node down.
    InProcess,
    /// In a `program` process per instruction.
    Subprocess {
        /// The `flwr-clientapp` executable.
        program: PathBuf,
        /// Arguments passed before the ClientAppIo address (the training backend, for example).
        args: Vec<String>,
    },
    /// In processes the operator started and keeps running, each taking the next waiting
    /// instruction.
    Process,
}

/// How an instruction's client app process comes to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    /// The node starts a process for it.
    Child(ChildCommand),
    /// A process the operator started takes it.
    Operator,
}

/// A client app process the node starts: `flwr-clientapp`, or an app bundle's program. Either
/// finds the ClientAppIo API's address in [`ADDRESS_ENV`] and its token in [`TOKEN_ENV`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildCommand {
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its working directory (an unpacked bundle); the node's own when `None`.
    pub dir: Option<PathBuf>,
    /// Whether the address is also passed as `--clientappio-api-address ADDR` after `args`, as
    /// `flwr-clientapp` takes it.
    pub address_flag: bool,
    /// Whether the program gets only [`ops::process::PASSED_ENVIRONMENT`] of the node's
    /// environment (an app bundle's program), rather than all of it (`flwr-clientapp`).
    pub clean_environment: bool,
}

impl ChildCommand {
    /// `flwr-clientapp` at `program`, with `args` before the address flag.
    pub fn clientapp(program: PathBuf, args: Vec<String>) -> Self {
        ChildCommand {
            program,
            args,
            dir: None,
            address_flag: true,
            clean_environment: false,
        }
    }
}

/// A one-time token.
type Token = [u8; TOKEN_LEN];

/// The node's side of the ClientAppIo API.
pub struct ClientAppIo {
    /// Where children show their tokens.
    gate: Arc<TokenGate<Token>>,
    /// Limits on the replies children send.
    limits: Limits,
}

/// A child's hello: this API's version, and its token or [`PULL_TOKEN`].
fn read_hello(stream: &mut TcpStream) -> HelloFuture<'_, Token> {
    Box::pin(async move {
        let hello = read_value::<AppHello, _>(stream, HELLO_FRAME_LIMIT)
            .await
            .map_err(|e| format!("it sent no ClientAppIo hello: {e}"))?;
        if hello.version != CLIENTAPPIO_VERSION {
            return Err(format!(
                "its hello is of ClientAppIo version {} (this node speaks version \
                 {CLIENTAPPIO_VERSION})",
                hello.version
            ));
        }
        Ok(if hello.token == PULL_TOKEN {
            Shown::Any
        } else {
            Shown::Token(hello.token)
        })
    })
}

impl ClientAppIo {
    /// Binds `address` (port 0 picks a free one) and serves it until `shutdown`; connections
    /// from other hosts are dropped unless `allow_remote`, and processes asking for work are
    /// served only when `accept_pulls` (process isolation).
    pub async fn start(
        address: SocketAddr,
        allow_remote: bool,
        accept_pulls: bool,
        shutdown: CancellationToken,
    ) -> std::io::Result<Arc<Self>> {
        let rules = Rules {
            api: "ClientAppIo",
            allow_remote,
            remote_hint: " (see --clientappio-allow-remote)",
            accept_any: accept_pulls,
            any_refused: "a client app process asks for work, but this node starts its own \
                          (--isolation subprocess): its requests are dropped",
        };
        let gate = TokenGate::serve(token_gate::bind(address)?, rules, read_hello, shutdown)?;
        Ok(Arc::new(ClientAppIo {
            gate,
            limits: Limits::default(),
        }))
    }

    /// The address children connect to.
    pub fn address(&self) -> SocketAddr {
        self.gate.address()
    }

    /// Runs `instruction` in a client app process, started for it or taking it; returns the
    /// reply's body, or an error body saying why there is none.
    pub async fn run(
        &self,
        launch: &Launch,
        job: AppJob,
        instruction: &Message,
        cancelled: Arc<AtomicBool>,
    ) -> MessageBody {
        let token = loop {
            let token: Token = rand::random();
            if token != PULL_TOKEN {
                break token;
            }
        };
        let outcome = match launch {
            Launch::Child(command) => {
                let connection = self.gate.expect(token);
                self.supervise(command, token, connection, job, instruction, cancelled)
                    .await
            }
            Launch::Operator => {
                let connection = self.gate.expect_any(token);
                self.hand_over(connection, job, instruction, cancelled)
                    .await
            }
        };
        // Not taken (expired or stopped): forgotten, so nothing waits for it unseen.
        self.gate.forget(&token);
        match outcome {
            Ok(body) => body,
            Err(reason) => {
                tracing::warn!(%reason, "client app process failed");
                MessageBody::Error(MessageError {
                    code: ErrorCode::ClientAppRaisedException,
                    reason,
                })
            }
        }
    }

    async fn supervise(
        &self,
        command: &ChildCommand,
        token: Token,
        connection: oneshot::Receiver<TcpStream>,
        job: AppJob,
        instruction: &Message,
        cancelled: Arc<AtomicBool>,
    ) -> Result<MessageBody, String> {
        let program = &command.program;
        let mut child = Command::new(program);
        child.args(&command.args);
        if command.address_flag {
            child
                .arg("--clientappio-api-address")
                .arg(self.address().to_string());
        }
        if let Some(dir) = &command.dir {
            child.current_dir(dir);
        }
        if command.clean_environment {
            child.env_clear().envs(ops::process::passed_environment());
        }
        child
            .env(TOKEN_ENV, encode_token(&token))
            .env(ADDRESS_ENV, self.address().to_string());
        let started = std::time::Instant::now();
        let mut process = AppProcess::spawn(&mut child, CLIENT_APP_OUTPUT)
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;

        // The broker stops waiting for the reply after the instruction's time to live; a child
        // still starting or working then (stuck, or simply too slow) is of no more use to anyone.
        // An interrupted child is killed with its group when `process` is dropped.
        let ttl = Duration::from_millis(instruction.metadata.ttl_ms);
        let expires = Instant::now() + ttl;
        let mut stream = match process
            .until(
                connection,
                interruption(&cancelled, expires, Some(CONNECT_TIMEOUT)),
                Duration::ZERO,
            )
            .await
        {
            Ended::Reported(connected) => {
                connected.map_err(|_| "the ClientAppIo API stopped".to_string())?
            }
            Ended::Exited(status) => {
                let crash = crash(&mut process, status).await;
                return Err(self.gate.explained(crash, started));
            }
            Ended::Interrupted(why) => return Err(self.gate.explained(why.reason(ttl), started)),
        };
        // Its exit is not watched now: a program may hand the exchange to a process of its own
        // and exit. The exchange ends with the connection, a stop or the time to live.
        let exchange = self.exchange(&mut stream, &job, instruction);
        let exchanged = tokio::select! {
            reply = exchange => Ok(reply),
            why = interruption(&cancelled, expires, None) => Err(why),
        };
        let reply = match exchanged {
            Ok(Ok(reply)) => reply,
            // The connection broke. A child that exits cleanly without a reply it could send
            // broke the protocol; any other end is a crash, which its exit status and last words
            // explain.
            Ok(Err(error)) => {
                return Err(match process.exit_within(BROKEN_EXCHANGE_EXIT).await {
                    Some(Ok(status)) if status.success() => {
                        format!("the client app process broke the ClientAppIo exchange: {error}")
                    }
                    Some(status) => crash(&mut process, status).await,
                    None => {
                        format!("the client app process broke the ClientAppIo exchange: {error}")
                    }
                });
            }
            Err(why) => return Err(why.reason(ttl)),
        };
        if reply.metadata.reply_to != Some(instruction.metadata.message_id) {
            return Err("the client app process answered another instruction".into());
        }
        process.exit_within(BROKEN_EXCHANGE_EXIT).await;
        Ok(reply.body)
    }
}

/// How long a child that sent its reply, or broke the exchange, has to exit before it is killed.
const BROKEN_EXCHANGE_EXIT: Duration = Duration::from_secs(5);

/// Why the node stopped waiting for a client app process.
enum Interruption {
    /// The run was stopped.
    Stopped,
    /// The instruction's time to live ran out.
    Expired,
    /// The process did not connect in time.
    NeverConnected,
}

impl Interruption {
    /// In words, for an instruction whose time to live is `ttl`.
    fn reason(&self, ttl: Duration) -> String {
        match self {
            Interruption::Stopped => "run stopped".into(),
            Interruption::Expired => format!(
                "the client app did not finish within the instruction's time to live ({ttl:?}); \
                 its process was killed"
            ),
            Interruption::NeverConnected => {
                format!("the client app process did not connect within {CONNECT_TIMEOUT:?}")
            }
        }
    }
}

/// Resolves when the node stops waiting: the run stopped, the instruction expired, or (given a
/// patience) the process took longer than that to connect.
async fn interruption(
    cancelled: &AtomicBool,
    expires: Instant,
    connect_within: Option<Duration>,
) -> Interruption {
    let never_connected = async {
        match connect_within {
            Some(patience) => tokio::time::sleep(patience).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = stopped(cancelled) => Interruption::Stopped,
        () = tokio::time::sleep_until(expires) => Interruption::Expired,
        () = never_connected => Interruption::NeverConnected,
    }
}

/// Why a client app process ended without replying.
async fn crash(
    process: &mut AppProcess,
    status: std::io::Result<std::process::ExitStatus>,
) -> String {
    process
        .crash_report(status, "the client app process", "before replying")
        .await
}

/// Resolves once `cancelled` is set (the run was stopped).
pub(crate) async fn stopped(cancelled: &AtomicBool) {
    while !cancelled.load(Ordering::Relaxed) {
        tokio::time::sleep(CANCEL_POLL).await;
    }
}

impl ClientAppIo {
    /// Sends the job and the instruction over `stream`; returns the reply.
    async fn exchange(
        &self,
        stream: &mut TcpStream,
        job: &AppJob,
        instruction: &Message,
    ) -> Result<Message, String> {
        write_value(&mut *stream, job)
            .await
            .map_err(|e| e.to_string())?;
        write_message(&mut *stream, instruction, DEFAULT_CHUNK)
            .await
            .map_err(|e| e.to_string())?;
        read_message(&mut *stream, self.limits)
            .await
            .map_err(|e| e.to_string())
    }

    /// Waits for a process the operator started to take the instruction, then for its reply;
    /// both within the instruction's time to live.
    async fn hand_over(
        &self,
        connection: oneshot::Receiver<TcpStream>,
        job: AppJob,
        instruction: &Message,
        cancelled: Arc<AtomicBool>,
    ) -> Result<MessageBody, String> {
        let ttl = Duration::from_millis(instruction.metadata.ttl_ms);
        let work = async {
            let mut stream = connection
                .await
                .map_err(|_| "the ClientAppIo API stopped".to_string())?;
            let reply = self
                .exchange(&mut stream, &job, instruction)
                .await
                .map_err(|e| {
                    format!("the client app process broke the ClientAppIo exchange: {e}")
                })?;
            if reply.metadata.reply_to != Some(instruction.metadata.message_id) {
                return Err("the client app process answered another instruction".into());
            }
            Ok(reply.body)
        };
        tokio::select! {
            outcome = work => outcome,
            _ = stopped(&cancelled) => Err("run stopped".into()),
            _ = tokio::time::sleep(ttl) => Err(format!(
                "no client app process answered within the instruction's time to live ({ttl:?}); \
                 under --isolation process, start one: flwr-clientapp --clientappio-api-address {}",
                self.address()
            )),
        }
    }
}

/// A client app process's output: logged as the node's own, its last line that is not part
/// of a backtrace kept to explain a crash.
pub(crate) const CLIENT_APP_OUTPUT: Output = Output {
    on_line: client_app_line,
    kept_lines: 1,
    stdout: false,
};

fn client_app_line(line: String) -> Option<String> {
    let line = wire::text::escape_controls(&line).into_owned();
    tracing::info!(target: "clientapp", "{line}");
    (!is_backtrace(&line)).then(|| line.trim().to_string())
}

/// Lines of a Rust backtrace and its notes: they follow the message that explains a crash.
fn is_backtrace(line: &str) -> bool {
    line.trim().is_empty()
        || line.starts_with(char::is_whitespace)
        || line.starts_with("stack backtrace:")
        || line.starts_with("note: ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the hello reader makes of `bytes`.
    async fn shown(bytes: Vec<u8>) -> Result<Shown<Token>, String> {
        ops::token_gate::shown_by(read_hello, bytes).await
    }

    fn hello(version: u16, token: Token) -> Vec<u8> {
        wire::frame::encode(&AppHello { version, token }).unwrap()
    }

    #[tokio::test]
    async fn a_hello_shows_its_token_or_asks_for_work_in_this_apis_version_only() {
        assert_eq!(
            shown(hello(CLIENTAPPIO_VERSION, [1; TOKEN_LEN])).await,
            Ok(Shown::Token([1; TOKEN_LEN]))
        );
        assert_eq!(
            shown(hello(CLIENTAPPIO_VERSION, PULL_TOKEN)).await,
            Ok(Shown::Any)
        );
        assert_eq!(
            shown(hello(CLIENTAPPIO_VERSION - 1, [1; TOKEN_LEN])).await,
            Err(format!(
                "its hello is of ClientAppIo version {} (this node speaks version \
                 {CLIENTAPPIO_VERSION})",
                CLIENTAPPIO_VERSION - 1
            ))
        );
        assert!(shown(vec![0xFF; 16]).await.is_err());
    }

    #[tokio::test]
    async fn a_hello_announcing_more_than_its_exact_size_is_dropped_at_once() {
        // A 1 MiB frame declared, then trickled: refused on its prefix, not after the timeout.
        let mut bytes = (1u32 << 20).to_le_bytes().to_vec();
        bytes.extend([0; 64]);
        let started = std::time::Instant::now();
        assert!(shown(bytes).await.is_err());
        assert!(started.elapsed() < ops::token_gate::HELLO_TIMEOUT / 4);
    }

    #[tokio::test]
    async fn bound_to_every_interface_children_are_sent_to_loopback() {
        let io = ClientAppIo::start(
            SocketAddr::from(([0, 0, 0, 0], 0)),
            false,
            false,
            CancellationToken::new(),
        )
        .await
        .unwrap();
        assert!(io.address().ip().is_loopback(), "{}", io.address());
        assert_ne!(io.address().port(), 0);
    }
}
