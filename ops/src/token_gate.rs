//! The front door of a daemon's local app API (the SuperLink's ServerAppIo, the SuperNode's
//! ClientAppIo): the daemon starts an app process with a one-time token, and the process connects
//! back and shows it. A connection showing a token the daemon waits for is handed to whoever
//! waits; anything else is dropped, and why is kept a while ([`TokenGate::refusals_since`]) so
//! that the daemon can say it where a process it started failed to connect.
//!
//! The bounds are the gate's, whatever the API: only this host's processes may connect (unless
//! remote ones are allowed), a connection has [`HELLO_TIMEOUT`] to show its token, and at most
//! [`MAX_PENDING_HELLOS`] may owe one at a time. A new connection beyond that closes the oldest,
//! so whoever holds idle connections open cannot keep a process that just connected out.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::Hash;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// How long an accepted connection has to show its token (a process shows it at once).
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(1);

/// Most connections that may owe their token at once.
pub const MAX_PENDING_HELLOS: usize = 16;

/// What a connection showed in its hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown<T> {
    /// A token: the connection is for whoever waits for it.
    Token(T),
    /// A request for whatever has waited longest: a process the operator started and keeps
    /// running (Flower's process isolation), served only where [`Rules::accept_any`] allows.
    Any,
}

/// Reading a connection's hello: what it showed, or why it is no hello of this API (to drop it).
pub type HelloFuture<'a, T> = Pin<Box<dyn Future<Output = Result<Shown<T>, String>> + Send + 'a>>;

/// How many refusals are kept for [`TokenGate::refusals_since`]; older ones are forgotten.
pub const KEPT_REFUSALS: usize = 8;

/// Reads a connection's hello.
pub type HelloReader<T> = for<'a> fn(&'a mut TcpStream) -> HelloFuture<'a, T>;

/// What one API's gate allows, and what it says when it drops a connection.
#[derive(Debug, Clone)]
pub struct Rules {
    /// The API's name in log lines ("ServerAppIo").
    pub api: &'static str,
    /// Whether processes on other hosts may show a token at all.
    pub allow_remote: bool,
    /// Added to the warning about a connection from another host (the flag that allows them).
    pub remote_hint: &'static str,
    /// Whether [`Shown::Any`] is served.
    pub accept_any: bool,
    /// Said once when [`Shown::Any`] is refused: such a process asks again several times a
    /// second.
    pub any_refused: &'static str,
}

/// Connections owing their hello, by arrival, each with the task reading it.
#[derive(Default)]
struct Pending {
    next: u64,
    tasks: VecDeque<(u64, tokio::task::AbortHandle)>,
}

/// A bound listener, to be served once the daemon is up.
pub struct Bound {
    listener: std::net::TcpListener,
    address: SocketAddr,
}

impl Bound {
    /// The address processes are told to connect to: the bound one, or loopback when bound to
    /// every interface.
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

/// Binds `address` (port 0 picks a free one).
pub fn bind(address: SocketAddr) -> std::io::Result<Bound> {
    let listener = std::net::TcpListener::bind(address)?;
    listener.set_nonblocking(true)?;
    let mut bound = listener.local_addr()?;
    // Bound to every interface (Flower's 0.0.0.0): processes on this host reach it on loopback.
    if bound.ip().is_unspecified() {
        bound.set_ip(match bound {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Ok(Bound {
        listener,
        address: bound,
    })
}

/// Whether a connection from `peer` may show a token, on a listener bound to `local`: the
/// daemon's own processes connect from loopback, or from the listener's address when it is bound
/// to one interface; anyone else only when remote processes are allowed.
pub fn peer_allowed(peer: SocketAddr, local: SocketAddr, allow_remote: bool) -> bool {
    let loopback = match peer.ip() {
        std::net::IpAddr::V4(ip) => ip.is_loopback(),
        std::net::IpAddr::V6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    };
    allow_remote || loopback || peer.ip() == local.ip()
}

/// The gate of one local app API, for tokens of type `T`.
pub struct TokenGate<T> {
    rules: Rules,
    /// The address processes connect to.
    address: SocketAddr,
    read_hello: HelloReader<T>,
    /// Processes started and not yet connected, by token.
    waiting: Mutex<HashMap<T, oneshot::Sender<TcpStream>>>,
    /// Tokens that a [`Shown::Any`] connection may claim, oldest first.
    unclaimed: Mutex<VecDeque<T>>,
    /// Connections still owing their hello.
    pending: Mutex<Pending>,
    /// Whether a refused [`Shown::Any`] has been logged.
    refused_any: AtomicBool,
    /// The latest connections dropped for their hello, when and why.
    refusals: Mutex<VecDeque<(Instant, String)>>,
}

/// Locks `mutex`. Every structure here is changed by single inserts and removals, so one a
/// panicking thread left behind is still consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<T: Copy + Eq + Hash + Send + Sync + 'static> TokenGate<T> {
    /// Serves `bound` until `shutdown`, reading each connection's hello with `read_hello`.
    pub fn serve(
        bound: Bound,
        rules: Rules,
        read_hello: HelloReader<T>,
        shutdown: CancellationToken,
    ) -> std::io::Result<Arc<Self>> {
        let local = bound.listener.local_addr()?;
        let listener = TcpListener::from_std(bound.listener)?;
        let gate = Arc::new(TokenGate {
            rules,
            address: bound.address,
            read_hello,
            waiting: Mutex::default(),
            unclaimed: Mutex::default(),
            pending: Mutex::default(),
            refused_any: AtomicBool::new(false),
            refusals: Mutex::default(),
        });
        tokio::spawn(gate.clone().accept(listener, local, shutdown));
        Ok(gate)
    }

    /// The address processes connect to.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Waits for a connection showing `token`; it arrives on the receiver.
    pub fn expect(&self, token: T) -> oneshot::Receiver<TcpStream> {
        let (sender, receiver) = oneshot::channel();
        lock(&self.waiting).insert(token, sender);
        receiver
    }

    /// Like [`expect`](Self::expect), and a [`Shown::Any`] connection may claim it too.
    pub fn expect_any(&self, token: T) -> oneshot::Receiver<TcpStream> {
        let receiver = self.expect(token);
        lock(&self.unclaimed).push_back(token);
        receiver
    }

    /// Why connections were dropped for their hello since `since` (at most [`KEPT_REFUSALS`],
    /// oldest first). Any process on the host may connect, so a refusal is not proof that a
    /// given process was refused; it is what a process that failed to connect most likely met.
    pub fn refusals_since(&self, since: Instant) -> Vec<String> {
        lock(&self.refusals)
            .iter()
            .filter(|(when, _)| *when >= since)
            .map(|(_, why)| why.clone())
            .collect()
    }

    /// `reason` a process failed to connect, followed by what this API refused since `since`,
    /// the process's start: a wrong token or version then says why in the reply or run log
    /// that reports the failure, not only in the daemon's log.
    pub fn explained(&self, reason: String, since: Instant) -> String {
        let refusals = self.refusals_since(since);
        match refusals.as_slice() {
            [] => reason,
            [only] => format!(
                "{reason}; meanwhile {} refused a connection: {only}",
                self.rules.api
            ),
            many => format!(
                "{reason}; meanwhile {} refused {} connections: {}",
                self.rules.api,
                many.len(),
                many.join("; ")
            ),
        }
    }

    fn refuse(&self, peer: SocketAddr, why: String) {
        tracing::warn!(%peer, "{} connection dropped: {why}", self.rules.api);
        let mut refusals = lock(&self.refusals);
        if refusals.len() == KEPT_REFUSALS {
            refusals.pop_front();
        }
        refusals.push_back((Instant::now(), why));
    }

    /// Stops waiting for `token`.
    pub fn forget(&self, token: &T) {
        lock(&self.waiting).remove(token);
        lock(&self.unclaimed).retain(|queued| queued != token);
    }

    async fn accept(
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
                Ok((_, peer)) if !peer_allowed(peer, local, self.rules.allow_remote) => {
                    tracing::warn!(%peer, "{} connection from another host; dropped{}", self.rules.api, self.rules.remote_hint);
                }
                Ok((stream, peer)) => self.clone().start_admission(stream, peer),
                Err(error) => {
                    tracing::warn!(%error, "{} accept failed", self.rules.api);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Reads the hello of a new connection in a task of its own, closing the oldest connection
    /// still owing one when there are too many.
    fn start_admission(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        // Held while spawning, so the task finds its own entry when it removes it.
        let mut pending = lock(&self.pending);
        pending.next += 1;
        let id = pending.next;
        let task = tokio::spawn(self.clone().admit(stream, peer, id));
        pending.tasks.push_back((id, task.abort_handle()));
        if pending.tasks.len() > MAX_PENDING_HELLOS
            && let Some((_, oldest)) = pending.tasks.pop_front()
        {
            oldest.abort();
            tracing::warn!(
                "too many {} connections without a hello; closed the oldest",
                self.rules.api
            );
        }
    }

    /// Hands a connection to whoever waits for the token it shows.
    async fn admit(self: Arc<Self>, mut stream: TcpStream, peer: SocketAddr, id: u64) {
        let shown = tokio::time::timeout(HELLO_TIMEOUT, (self.read_hello)(&mut stream)).await;
        lock(&self.pending)
            .tasks
            .retain(|(pending, _)| *pending != id);
        let token = match shown {
            Ok(Ok(Shown::Token(token))) => token,
            Ok(Ok(Shown::Any)) => {
                if !self.rules.accept_any {
                    if !self.refused_any.swap(true, Ordering::Relaxed) {
                        tracing::warn!(%peer, "{}", self.rules.any_refused);
                    }
                    return;
                }
                // Nothing waiting: the process asks again shortly.
                let Some(token) = self.next_unclaimed() else {
                    return;
                };
                token
            }
            Ok(Err(why)) => return self.refuse(peer, why),
            Err(_) => {
                let why = format!("it showed no hello within {HELLO_TIMEOUT:?}");
                return self.refuse(peer, why);
            }
        };
        let waiting = lock(&self.waiting).remove(&token);
        match waiting {
            Some(waiting) => {
                let _ = waiting.send(stream);
            }
            None => self.refuse(
                peer,
                "it showed a token this daemon did not give or no longer waits for".into(),
            ),
        }
    }

    /// The oldest token still waiting that a [`Shown::Any`] connection may claim.
    fn next_unclaimed(&self) -> Option<T> {
        let mut unclaimed = lock(&self.unclaimed);
        while let Some(token) = unclaimed.pop_front() {
            if lock(&self.waiting).contains_key(&token) {
                return Some(token);
            }
        }
        None
    }
}

/// What `read_hello` makes of a connection that sends `bytes` and then waits: how each API's
/// tests check its hello.
pub async fn shown_by<T>(read_hello: HelloReader<T>, bytes: Vec<u8>) -> Result<Shown<T>, String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let io = |e: std::io::Error| e.to_string();
    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(io)?;
    let address = listener.local_addr().map_err(io)?;
    let writer = tokio::spawn(async move {
        let mut stream = TcpStream::connect(address).await.ok()?;
        stream.write_all(&bytes).await.ok()?;
        // Held open until the reader is done, so that a short hello is not an end of file.
        stream.read_u8().await.ok()
    });
    let (mut stream, _) = listener.accept().await.map_err(io)?;
    let shown = tokio::time::timeout(HELLO_TIMEOUT, read_hello(&mut stream))
        .await
        .unwrap_or_else(|_| Err("no hello in time".into()));
    drop(stream);
    let _ = writer.await;
    shown
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// The hello of these tests: one byte, 0 to ask for anything, else the token itself.
    fn one_byte_hello(stream: &mut TcpStream) -> HelloFuture<'_, u8> {
        Box::pin(async move {
            match stream.read_u8().await.map_err(|e| e.to_string())? {
                0 => Ok(Shown::Any),
                255 => Err("255 is no token".into()),
                token => Ok(Shown::Token(token)),
            }
        })
    }

    fn rules(accept_any: bool) -> Rules {
        Rules {
            api: "TestIo",
            allow_remote: false,
            remote_hint: "",
            accept_any,
            any_refused: "asked for anything",
        }
    }

    fn gate_on(address: &str, accept_any: bool) -> Arc<TokenGate<u8>> {
        let bound = bind(address.parse().unwrap()).unwrap();
        TokenGate::serve(
            bound,
            rules(accept_any),
            one_byte_hello,
            CancellationToken::new(),
        )
        .unwrap()
    }

    /// Sends `bytes` and reads until the gate closes the connection; returns what it sent.
    async fn answer_to(bytes: &[u8], gate: &TokenGate<u8>) -> Vec<u8> {
        let mut stream = TcpStream::connect(gate.address()).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        let mut received = Vec::new();
        tokio::time::timeout(HELLO_TIMEOUT * 2, stream.read_to_end(&mut received))
            .await
            .unwrap()
            .unwrap_or(0);
        received
    }

    /// Whether the gate closes `stream` within `within`, without an answer.
    async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
        let mut received = Vec::new();
        matches!(
            tokio::time::timeout(within, stream.read_to_end(&mut received)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    #[tokio::test]
    async fn bound_to_every_interface_processes_are_sent_to_loopback() {
        let gate = gate_on("0.0.0.0:0", false);
        assert!(gate.address().ip().is_loopback(), "{}", gate.address());
        assert_ne!(gate.address().port(), 0);
    }

    #[tokio::test]
    async fn connections_without_a_token_the_daemon_waits_for_get_nothing() {
        let gate = gate_on("127.0.0.1:0", false);
        let mut connection = gate.expect(1);
        // An unknown token, and a connection that says nothing until the timeout.
        for bytes in [&[2u8][..], &[]] {
            assert!(answer_to(bytes, &gate).await.is_empty());
        }
        assert!(
            connection.try_recv().is_err(),
            "the real process's slot is untouched"
        );
        assert!(lock(&gate.waiting).contains_key(&1));
    }

    #[tokio::test]
    async fn refusals_are_kept_to_explain_a_process_that_failed_to_connect() {
        let gate = gate_on("127.0.0.1:0", false);
        let before = Instant::now();
        assert_eq!(gate.explained("it exited".into(), before), "it exited");
        assert!(answer_to(&[2], &gate).await.is_empty());
        assert!(answer_to(&[255], &gate).await.is_empty());
        assert_eq!(
            gate.explained("it exited".into(), before),
            "it exited; meanwhile TestIo refused 2 connections: it showed a token this daemon \
             did not give or no longer waits for; 255 is no token"
        );
        // Only what happened since the process started, and only the latest few.
        assert!(gate.refusals_since(Instant::now()).is_empty());
        for _ in 0..KEPT_REFUSALS + 2 {
            assert!(answer_to(&[255], &gate).await.is_empty());
        }
        let kept = gate.refusals_since(before);
        assert_eq!(kept.len(), KEPT_REFUSALS);
        assert!(kept.iter().all(|why| why == "255 is no token"), "{kept:?}");
    }

    #[tokio::test]
    async fn idle_connections_beyond_the_cap_close_the_oldest_and_never_keep_a_process_out() {
        let gate = gate_on("127.0.0.1:0", false);
        let mut silent = Vec::new();
        for _ in 0..MAX_PENDING_HELLOS {
            silent.push(TcpStream::connect(gate.address()).await.unwrap());
        }
        // The cap is full of idle connections; a process that connects now is served at once,
        // and the oldest idle connection is the one closed.
        let connection = gate.expect(3);
        let mut process = TcpStream::connect(gate.address()).await.unwrap();
        process.write_all(&[3]).await.unwrap();
        tokio::time::timeout(HELLO_TIMEOUT / 2, connection)
            .await
            .expect("the process was kept waiting behind idle connections")
            .unwrap();
        assert!(closed_within(&mut silent[0], HELLO_TIMEOUT / 2).await);
        assert!(
            !closed_within(&mut silent[1], HELLO_TIMEOUT / 8).await,
            "only the oldest goes"
        );
    }

    #[tokio::test]
    async fn asking_for_anything_is_served_only_where_the_rules_allow() {
        for accept_any in [false, true] {
            let gate = gate_on("127.0.0.1:0", accept_any);
            let connection = gate.expect_any(4);
            let mut stream = TcpStream::connect(gate.address()).await.unwrap();
            stream.write_all(&[0]).await.unwrap();
            let handed = tokio::time::timeout(HELLO_TIMEOUT, connection).await;
            assert_eq!(
                matches!(handed, Ok(Ok(_))),
                accept_any,
                "accept_any = {accept_any}"
            );
        }
    }

    #[tokio::test]
    async fn asking_for_anything_when_nothing_waits_gets_nothing() {
        let gate = gate_on("127.0.0.1:0", true);
        // A token no longer waited for, though still queued, is not handed out either.
        let connection = gate.expect_any(5);
        lock(&gate.waiting).remove(&5);
        assert!(answer_to(&[0], &gate).await.is_empty());
        assert!(lock(&gate.unclaimed).is_empty());
        drop(connection);
    }

    #[tokio::test]
    async fn a_forgotten_token_leaves_nothing_behind() {
        let gate = gate_on("127.0.0.1:0", true);
        let _connection = gate.expect_any(6);
        gate.forget(&6);
        assert!(lock(&gate.waiting).is_empty());
        assert!(lock(&gate.unclaimed).is_empty());
        assert!(answer_to(&[6], &gate).await.is_empty());
    }

    #[test]
    fn only_this_hosts_processes_may_connect_unless_remote_ones_are_allowed() {
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
