//! The SuperLink's ServerAppIo API: where the server app program of a run connects back
//! (`--serverappio-api-address`, 127.0.0.1:9091 by default, as in Flower). A connection is
//! handed to the run whose one-time token it shows in its hello; anything else is dropped
//! without a word. Only this host's processes may connect.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use wire::clientappio::{AppHello, HELLO_FRAME_LIMIT, TOKEN_LEN};
use wire::io::read_value;
use wire::serverappio::SERVERAPPIO_VERSION;

/// How long an accepted connection has to send its hello (a program sends it at once).
const HELLO_TIMEOUT: Duration = Duration::from_secs(1);

/// Most connections that may owe their hello at once. A new one beyond that closes the oldest:
/// whoever holds idle connections open cannot keep a program that just connected out.
const MAX_PENDING_HELLOS: usize = 16;

/// A one-time token.
pub type Token = [u8; TOKEN_LEN];

/// Connections owing their hello, by arrival.
#[derive(Default)]
struct Pending {
    next: u64,
    tasks: std::collections::VecDeque<(u64, tokio::task::AbortHandle)>,
}

/// The SuperLink's side of the ServerAppIo API.
pub struct ServerAppIo {
    /// The address programs connect to (loopback when bound to every interface).
    address: SocketAddr,
    /// Programs started and not yet connected, by token.
    waiting: Mutex<HashMap<Token, oneshot::Sender<TcpStream>>>,
    /// Connections still owing their hello, oldest first, each with the task reading it.
    pending: Mutex<Pending>,
}

/// A bound listener, to be served once the broker is up.
pub struct Bound {
    listener: std::net::TcpListener,
    address: SocketAddr,
}

/// Binds `address` (port 0 picks a free one).
pub fn bind(address: SocketAddr) -> std::io::Result<Bound> {
    let listener = std::net::TcpListener::bind(address)?;
    listener.set_nonblocking(true)?;
    let mut bound = listener.local_addr()?;
    // Bound to every interface: programs, on this host, reach it on loopback.
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

impl ServerAppIo {
    /// The API over `bound`, served until `shutdown`.
    pub fn serve(bound: Bound, shutdown: CancellationToken) -> std::io::Result<Arc<Self>> {
        let local = bound.listener.local_addr()?;
        let listener = TcpListener::from_std(bound.listener)?;
        let io = Arc::new(ServerAppIo {
            address: bound.address,
            waiting: Mutex::default(),
            pending: Mutex::default(),
        });
        tokio::spawn(io.clone().accept(listener, local, shutdown));
        Ok(io)
    }

    /// The address programs connect to.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        // Pushes and removals only: a poisoned queue is still consistent.
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<Token, oneshot::Sender<TcpStream>>> {
        // Inserts and removes only: a poisoned map is still consistent.
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A fresh token, and where the connection showing it will arrive.
    pub fn expect(&self) -> (Token, oneshot::Receiver<TcpStream>) {
        let token: Token = rand::random();
        let (sender, receiver) = oneshot::channel();
        self.waiting().insert(token, sender);
        (token, receiver)
    }

    /// Stops waiting for `token`.
    pub fn forget(&self, token: &Token) {
        self.waiting().remove(token);
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
                Ok((_, peer)) if !(peer.ip().is_loopback() || peer.ip() == local.ip()) => {
                    tracing::warn!(%peer, "ServerAppIo connection from another host; dropped");
                }
                Ok((stream, peer)) => {
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
                        tracing::warn!(
                            "too many ServerAppIo connections without a hello; closed the oldest"
                        );
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "ServerAppIo accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Hands a connection to the run whose program holds its token.
    async fn admit(self: Arc<Self>, mut stream: TcpStream, peer: SocketAddr, id: u64) {
        let hello = tokio::time::timeout(
            HELLO_TIMEOUT,
            read_value::<AppHello, _>(&mut stream, HELLO_FRAME_LIMIT),
        )
        .await;
        self.pending().tasks.retain(|(pending, _)| *pending != id);
        let hello = match hello {
            Ok(Ok(hello)) if hello.version == SERVERAPPIO_VERSION => hello,
            _ => {
                tracing::warn!(%peer, "ServerAppIo connection without a valid hello; dropped");
                return;
            }
        };
        match self.waiting().remove(&hello.token) {
            Some(run) => {
                let _ = run.send(stream);
            }
            None => tracing::warn!(%peer, "ServerAppIo connection with an unknown token; dropped"),
        }
    }
}
