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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;
use tokio::sync::oneshot;
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

/// How long an accepted connection has to send its hello (a child sends it at once).
const HELLO_TIMEOUT: Duration = Duration::from_secs(1);

/// Most connections that may be waiting to show a token at once. A new one beyond that closes the
/// oldest: whoever holds idle connections open cannot keep a child that just connected out.
const MAX_PENDING_HELLOS: usize = 16;

/// Connections still owing their hello, oldest first, each with the task reading it.
#[derive(Default)]
struct PendingHellos {
    next: u64,
    tasks: std::collections::VecDeque<(u64, tokio::task::AbortHandle)>,
}

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

/// Children the node started and is waiting to hear from, by token.
type Waiting = HashMap<[u8; TOKEN_LEN], oneshot::Sender<TcpStream>>;

/// The node's side of the ClientAppIo API.
pub struct ClientAppIo {
    /// The address children connect to (loopback when bound to every interface).
    address: SocketAddr,
    /// Started children not yet connected.
    waiting: Mutex<Waiting>,
    /// Limits on the replies children send.
    limits: Limits,
    /// Connections still owing their hello.
    pending: Mutex<PendingHellos>,
    /// Whether peers on other hosts may connect at all (`--clientappio-allow-remote`).
    allow_remote: bool,
    /// Whether processes the operator started may ask for work ([`PULL_TOKEN`]).
    accept_pulls: bool,
    /// Tokens of instructions waiting for such a process, oldest first.
    unclaimed: Mutex<std::collections::VecDeque<[u8; TOKEN_LEN]>>,
    /// Whether a refused request for work has been logged.
    refused_pulls: AtomicBool,
}

/// Whether a connection from `peer` may show a token, on a listener bound to `local`: the
/// node's own children connect from loopback, or from the listener's address when it is bound to
/// one interface; anyone else only when remote client apps are allowed.
fn peer_allowed(peer: SocketAddr, local: SocketAddr, allow_remote: bool) -> bool {
    let loopback = match peer.ip() {
        std::net::IpAddr::V4(ip) => ip.is_loopback(),
        std::net::IpAddr::V6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    };
    allow_remote || loopback || peer.ip() == local.ip()
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
        let listener = TcpListener::bind(address).await?;
        let local = listener.local_addr()?;
        let mut bound = local;
        // Bound to every interface (Flower's 0.0.0.0:9094): children reach it on loopback.
        if bound.ip().is_unspecified() {
            bound.set_ip(match bound {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let io = Arc::new(ClientAppIo {
            address: bound,
            waiting: Mutex::default(),
            limits: Limits::default(),
            pending: Mutex::default(),
            allow_remote,
            accept_pulls,
            unclaimed: Mutex::default(),
            refused_pulls: AtomicBool::new(false),
        });
        tokio::spawn(io.clone().serve(listener, local, shutdown));
        Ok(io)
    }

    /// The address children connect to.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        // Inserts and removes only: a poisoned map is still consistent.
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        local: SocketAddr,
        shutdown: CancellationToken,
    ) {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((_, peer)) if !peer_allowed(peer, local, self.allow_remote) => {
                    tracing::warn!(%peer, "ClientAppIo connection from another host; dropped (see --clientappio-allow-remote)");
                }
                Ok((stream, peer)) => self.clone().start_admission(stream, peer),
                Err(error) => {
                    tracing::warn!(%error, "ClientAppIo accept failed");
                    tokio::time::sleep(CANCEL_POLL).await;
                }
            }
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, PendingHellos> {
        // Pushes and removals only: a poisoned queue is still consistent.
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reads the hello of a new connection in a task of its own, closing the oldest connection
    /// still owing one when there are too many.
    fn start_admission(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        // Held while spawning, so the task finds its own entry when it removes it.
        let mut pending = self.pending();
        pending.next += 1;
        let id = pending.next;
        let task = tokio::spawn(self.clone().admit(stream, peer, id));
        pending.tasks.push_back((id, task.abort_handle()));
        if pending.tasks.len() > MAX_PENDING_HELLOS
            && let Some((_, oldest)) = pending.tasks.pop_front()
        {
            oldest.abort();
            tracing::warn!("too many ClientAppIo connections without a hello; closed the oldest");
        }
    }

    /// Hands a connection to the instruction whose child holds its token; anything else is
    /// dropped without a word.
    async fn admit(self: Arc<Self>, mut stream: TcpStream, peer: SocketAddr, id: u64) {
        let hello = tokio::time::timeout(
            HELLO_TIMEOUT,
            read_value::<AppHello, _>(&mut stream, HELLO_FRAME_LIMIT),
        )
        .await;
        self.pending().tasks.retain(|(pending, _)| *pending != id);
        let hello = match hello {
            Ok(Ok(hello)) if hello.version == CLIENTAPPIO_VERSION => hello,
            _ => {
                tracing::warn!(%peer, "ClientAppIo connection without a valid hello; dropped");
                return;
            }
        };
        let token = if hello.token == PULL_TOKEN {
            if !self.accept_pulls {
                // Said once: such a process asks again several times a second.
                if !self.refused_pulls.swap(true, Ordering::Relaxed) {
                    tracing::warn!(%peer, "a client app process asks for work, but this node starts its own (--isolation subprocess): its requests are dropped");
                }
                return;
            }
            // Nothing waiting: the process asks again shortly.
            let Some(token) = self.next_unclaimed() else {
                return;
            };
            token
        } else {
            hello.token
        };
        let Some(waiting) = self.waiting().remove(&token) else {
            tracing::warn!(%peer, "ClientAppIo connection with an unknown token; dropped");
            return;
        };
        let _ = waiting.send(stream);
    }

    fn unclaimed(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<[u8; TOKEN_LEN]>> {
        // Pushes and pops only: a poisoned queue is still consistent.
        self.unclaimed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The oldest instruction still waiting for a process the operator started.
    fn next_unclaimed(&self) -> Option<[u8; TOKEN_LEN]> {
        let mut unclaimed = self.unclaimed();
        while let Some(token) = unclaimed.pop_front() {
            if self.waiting().contains_key(&token) {
                return Some(token);
            }
        }
        None
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
            let token: [u8; TOKEN_LEN] = rand::random();
            if token != PULL_TOKEN {
                break token;
            }
        };
        let (connected, connection) = oneshot::channel();
        self.waiting().insert(token, connected);
        let outcome = match launch {
            Launch::Child(command) => {
                self.supervise(command, token, connection, job, instruction, cancelled)
                    .await
            }
            Launch::Operator => {
                self.unclaimed().push_back(token);
                let outcome = self
                    .hand_over(connection, job, instruction, cancelled)
                    .await;
                // Not taken (expired or stopped): out of the queue, so it cannot grow unseen.
                self.unclaimed().retain(|queued| *queued != token);
                outcome
            }
        };
        self.waiting().remove(&token);
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
        token: [u8; TOKEN_LEN],
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
                .arg(self.address.to_string());
        }
        if let Some(dir) = &command.dir {
            child.current_dir(dir);
        }
        if command.clean_environment {
            child.env_clear().envs(ops::process::passed_environment());
        }
        let mut child = child
            .env(TOKEN_ENV, encode_token(&token))
            .env(ADDRESS_ENV, self.address.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        let _group = ops::process::ProcessGroup::of(child.id());
        let mut stderr = child
            .stderr
            .take()
            .map(|stderr| tokio::spawn(forward_output(stderr)));

        // The broker stops waiting for the reply after the instruction's time to live; a child
        // still starting or working then (stuck, or simply too slow) is of no more use to anyone.
        let ttl = Duration::from_millis(instruction.metadata.ttl_ms);
        let expired = tokio::time::sleep(ttl);
        tokio::pin!(expired);
        let too_late = || {
            format!(
                "the client app did not finish within the instruction's time to live ({ttl:?}); \
                 its process was killed"
            )
        };
        let mut stream = tokio::select! {
            connected = connection => connected.map_err(|_| "the ClientAppIo API stopped".to_string())?,
            status = child.wait() => return Err(crash_report(status, stderr.take()).await),
            _ = tokio::time::sleep(CONNECT_TIMEOUT) => {
                return Err(format!("the client app process did not connect within {CONNECT_TIMEOUT:?}"));
            }
            _ = &mut expired => return Err(too_late()),
            _ = stopped(&cancelled) => return Err("run stopped".into()),
        };
        let exchange = self.exchange(&mut stream, &job, instruction);
        let stopped = stopped(&cancelled);
        tokio::pin!(exchange);
        let reply = tokio::select! {
            reply = &mut exchange => reply,
            _ = stopped => {
                let _ = child.kill().await;
                return Err("run stopped".into());
            }
            _ = &mut expired => {
                let _ = child.kill().await;
                return Err(too_late());
            }
        };
        let reply = match reply {
            Ok(reply) => reply,
            // The connection broke. A child that exits cleanly without a reply it could send broke the protocol;
            // any other end is a crash, which its exit status and last words explain.
            Err(error) => {
                let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                return Err(match status {
                    Ok(Ok(status)) if status.success() => {
                        format!("the client app process broke the ClientAppIo exchange: {error}")
                    }
                    Ok(status) => crash_report(status, stderr.take()).await,
                    Err(_) => {
                        let _ = child.kill().await;
                        format!("the client app process broke the ClientAppIo exchange: {error}")
                    }
                });
            }
        };
        if reply.metadata.reply_to != Some(instruction.metadata.message_id) {
            let _ = child.kill().await;
            return Err("the client app process answered another instruction".into());
        }
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
        Ok(reply.body)
    }
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
                self.address
            )),
        }
    }
}

/// Longest stderr line of a child kept; the rest of a longer one is dropped.
const STDERR_LINE_BYTES: usize = 4096;

/// Logs a child's output as the node's own; returns its last line worth quoting.
pub(crate) async fn forward_output<R: tokio::io::AsyncRead + Unpin>(output: R) -> Option<String> {
    let mut last = None;
    ops::process::for_each_line(output, STDERR_LINE_BYTES, |line| {
        let line = wire::text::escape_controls(&line).into_owned();
        tracing::info!(target: "clientapp", "{line}");
        if !is_backtrace(&line) {
            last = Some(line.trim().to_string());
        }
    })
    .await;
    last
}

/// Lines of a Rust backtrace and its notes: they follow the message that explains a crash.
fn is_backtrace(line: &str) -> bool {
    line.trim().is_empty()
        || line.starts_with(char::is_whitespace)
        || line.starts_with("stack backtrace:")
        || line.starts_with("note: ")
}

/// Why a child ended without replying: its exit status and the last thing it said.
pub(crate) async fn crash_report(
    status: std::io::Result<ExitStatus>,
    stderr: Option<tokio::task::JoinHandle<Option<String>>>,
) -> String {
    let last = match stderr {
        Some(task) => tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .ok()
            .and_then(Result::ok)
            .flatten(),
        None => None,
    };
    let last = last.map(|line| format!(": {line}")).unwrap_or_default();
    format!(
        "the client app process {} before replying{last}",
        ops::process::describe_exit(status)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// Reads until the node closes the connection; returns what it sent.
    async fn answer_to(bytes: &[u8], io: &ClientAppIo) -> Vec<u8> {
        let mut stream = TcpStream::connect(io.address()).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        let mut received = Vec::new();
        tokio::time::timeout(HELLO_TIMEOUT * 2, stream.read_to_end(&mut received))
            .await
            .unwrap()
            .unwrap_or(0);
        received
    }

    /// A ClientAppIo on a free loopback port, for the life of the test.
    async fn loopback_io() -> Arc<ClientAppIo> {
        ClientAppIo::start(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            false,
            false,
            CancellationToken::new(),
        )
        .await
        .unwrap()
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

    #[tokio::test]
    async fn connections_without_a_token_the_node_waits_for_get_nothing() {
        let io = loopback_io().await;
        let (waiting, _connection) = oneshot::channel();
        io.waiting().insert([1; TOKEN_LEN], waiting);
        let unknown = wire::frame::encode(&AppHello {
            version: CLIENTAPPIO_VERSION,
            token: [2; TOKEN_LEN],
        })
        .unwrap();
        let wrong_version = wire::frame::encode(&AppHello {
            version: CLIENTAPPIO_VERSION + 1,
            token: [1; TOKEN_LEN],
        })
        .unwrap();
        for bytes in [unknown, wrong_version, vec![0xFF; 16]] {
            assert!(answer_to(&bytes, &io).await.is_empty());
        }
        assert!(
            io.waiting().contains_key(&[1; TOKEN_LEN]),
            "the real child's slot is untouched"
        );
    }

    /// Whether the node closes `stream` within `within`, without an answer.
    async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
        let mut received = Vec::new();
        matches!(
            tokio::time::timeout(within, stream.read_to_end(&mut received)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    #[tokio::test]
    async fn a_hello_announcing_more_than_its_exact_size_is_dropped_at_once() {
        let io = loopback_io().await;
        let mut stream = TcpStream::connect(io.address()).await.unwrap();
        // A 1 MiB frame declared, then trickled: refused on its prefix, not after the timeout.
        stream.write_all(&(1u32 << 20).to_le_bytes()).await.unwrap();
        stream.write_all(&[0; 64]).await.unwrap();
        assert!(closed_within(&mut stream, HELLO_TIMEOUT / 4).await);
    }

    #[tokio::test]
    async fn idle_connections_beyond_the_cap_close_the_oldest_and_never_keep_a_child_out() {
        let io = loopback_io().await;
        let mut silent = Vec::new();
        for _ in 0..MAX_PENDING_HELLOS {
            silent.push(TcpStream::connect(io.address()).await.unwrap());
        }
        // The cap is full of idle connections; a child that connects now is served at once, and
        // the oldest idle connection is the one closed.
        let token = [3; TOKEN_LEN];
        let (waiting, connection) = oneshot::channel();
        io.waiting().insert(token, waiting);
        let mut child = TcpStream::connect(io.address()).await.unwrap();
        let hello = AppHello {
            version: CLIENTAPPIO_VERSION,
            token,
        };
        child
            .write_all(&wire::frame::encode(&hello).unwrap())
            .await
            .unwrap();
        tokio::time::timeout(HELLO_TIMEOUT / 2, connection)
            .await
            .expect("the child was kept waiting behind idle connections")
            .unwrap();
        assert!(closed_within(&mut silent[0], HELLO_TIMEOUT / 2).await);
        assert!(io.pending().tasks.len() <= MAX_PENDING_HELLOS);
    }

    #[tokio::test]
    async fn a_process_asking_for_work_gets_it_only_under_process_isolation() {
        let pull = wire::frame::encode(&AppHello {
            version: CLIENTAPPIO_VERSION,
            token: PULL_TOKEN,
        })
        .unwrap();
        for accept_pulls in [false, true] {
            let io = ClientAppIo::start(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                false,
                accept_pulls,
                CancellationToken::new(),
            )
            .await
            .unwrap();
            let token = [4; TOKEN_LEN];
            let (waiting, connection) = oneshot::channel();
            io.waiting().insert(token, waiting);
            io.unclaimed().push_back(token);
            let mut stream = TcpStream::connect(io.address()).await.unwrap();
            stream.write_all(&pull).await.unwrap();
            let handed = tokio::time::timeout(HELLO_TIMEOUT, connection).await;
            assert_eq!(
                matches!(handed, Ok(Ok(_))),
                accept_pulls,
                "accept_pulls = {accept_pulls}"
            );
        }
    }

    #[tokio::test]
    async fn a_process_asking_when_nothing_waits_gets_nothing() {
        let io = ClientAppIo::start(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            false,
            true,
            CancellationToken::new(),
        )
        .await
        .unwrap();
        // An instruction that already ended (its slot gone) is not handed out either.
        io.unclaimed().push_back([5; TOKEN_LEN]);
        let pull = wire::frame::encode(&AppHello {
            version: CLIENTAPPIO_VERSION,
            token: PULL_TOKEN,
        })
        .unwrap();
        assert!(answer_to(&pull, &io).await.is_empty());
        assert!(io.unclaimed().is_empty());
    }

    #[test]
    fn only_this_hosts_processes_may_connect_unless_remote_apps_are_allowed() {
        let any: SocketAddr = "0.0.0.0:9094".parse().unwrap();
        let one: SocketAddr = "10.0.0.5:9094".parse().unwrap();
        let loopback: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:40000".parse().unwrap();
        let itself: SocketAddr = "10.0.0.5:40000".parse().unwrap();
        let stranger: SocketAddr = "10.0.0.9:40000".parse().unwrap();
        assert!(peer_allowed(loopback, any, false));
        assert!(peer_allowed(mapped, any, false));
        assert!(peer_allowed(itself, one, false));
        assert!(!peer_allowed(stranger, any, false));
        assert!(!peer_allowed(stranger, one, false));
        assert!(peer_allowed(stranger, one, true));
    }
}
