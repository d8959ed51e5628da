//! The live sessions of authenticated nodes: who is online, how to wake a node's delivery loop,
//! how to push a frame on its session stream, and how to close it (unregister, or a newer
//! connection with the same key). A node is on one of two links: a QUIC connection (this
//! project's `flower-supernode`), or Flower's Fleet API over HTTP (Flower's own SuperNode),
//! which polls and is online while its heartbeats keep coming.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use wire::NodeId;
use wire::fleet::BrokerFrame;

/// How a node is connected.
enum Link {
    /// A QUIC connection, to close it from outside the connection's task.
    Quic(quinn::Connection),
    /// Flower's Fleet API over HTTP: no connection of its own; online until this deadline,
    /// which each heartbeat moves.
    Http { online_until: Instant },
}

/// The protocol a node is online over.
pub use wire::control::NodeProtocol as Protocol;

impl Link {
    fn close(&self, code: u32, reason: &[u8]) {
        if let Link::Quic(connection) = self {
            connection.close(code.into(), reason);
        }
    }
}

/// One node's live session.
struct Session {
    /// Its link.
    link: Link,
    /// Distinguishes this connection from an older or newer one of the same node.
    generation: u64,
    /// Wakes the node's delivery loop when instructions are queued for it.
    wake: Arc<Notify>,
    /// Frames to push on the node's session stream.
    push: mpsc::UnboundedSender<BrokerFrame>,
}

/// What a connection task needs to serve its session.
pub struct Attached {
    /// This session's generation (for [`Sessions::detach`]).
    pub generation: u64,
    /// Notified when instructions are queued for the node.
    pub wake: Arc<Notify>,
    /// Frames to push on the session stream.
    pub pushes: mpsc::UnboundedReceiver<BrokerFrame>,
}

/// What the lock guards: the live sessions, and the nodes revoked while this process runs.
/// Revocation and attachment take the same lock, so a node unregistered between the registry
/// read of its handshake and its attachment is never attached (and one attached first is closed).
#[derive(Default)]
struct Live {
    by_node: HashMap<NodeId, Session>,
    revoked: HashSet<NodeId>,
}

/// Live sessions by node id.
pub struct Sessions {
    /// The sessions; a std mutex because no lock is held across an await.
    live: Mutex<Live>,
    /// Source of generation numbers.
    next_generation: AtomicU64,
    /// Bumped whenever a node comes or goes, for whoever waits for enough nodes.
    changes: watch::Sender<u64>,
    /// Tells runs when a node goes away, so its unanswered instructions fail at once.
    departures: tokio::sync::broadcast::Sender<NodeId>,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            live: Mutex::default(),
            next_generation: AtomicU64::new(0),
            changes: watch::channel(0).0,
            departures: tokio::sync::broadcast::channel(4096).0,
        }
    }
}

impl Sessions {
    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        // Inserts and removes only: poisoned maps are still consistent.
        self.live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn changed(&self) {
        self.changes.send_modify(|version| *version += 1);
    }

    /// Records `connection` as `node`'s session, closing any previous one with `replaced_code`;
    /// `None` if the node was revoked (see [`Sessions::revoke`]).
    pub fn attach(
        &self,
        node: NodeId,
        connection: quinn::Connection,
        replaced_code: u32,
    ) -> Option<Attached> {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let wake = Arc::new(Notify::new());
        let (push, pushes) = mpsc::unbounded_channel();
        let previous = {
            let mut live = self.live();
            if live.revoked.contains(&node) {
                return None;
            }
            live.by_node.insert(
                node,
                Session {
                    link: Link::Quic(connection),
                    generation,
                    wake: wake.clone(),
                    push,
                },
            )
        };
        self.close_replaced(node, previous, replaced_code);
        // Anything queued while the node was away goes out now.
        wake.notify_one();
        self.changed();
        Some(Attached {
            generation,
            wake,
            pushes,
        })
    }

    /// Keeps `node` online over Flower's HTTP Fleet API until `online_until`: a new session
    /// (replacing a QUIC one, closed with `replaced_code`), or the deadline of the one it has
    /// moved. `None` if the node was revoked; else whether the session is new.
    pub fn attach_http(
        &self,
        node: NodeId,
        online_until: Instant,
        replaced_code: u32,
    ) -> Option<bool> {
        let previous = {
            let mut live = self.live();
            if live.revoked.contains(&node) {
                return None;
            }
            if let Some(Session {
                link: Link::Http {
                    online_until: until,
                },
                ..
            }) = live.by_node.get_mut(&node)
            {
                *until = online_until;
                return Some(false);
            }
            let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
            // Nothing reads a polling node's pushes or wakes: it asks.
            let (push, _) = mpsc::unbounded_channel();
            live.by_node.insert(
                node,
                Session {
                    link: Link::Http { online_until },
                    generation,
                    wake: Arc::new(Notify::new()),
                    push,
                },
            )
        };
        self.close_replaced(node, previous, replaced_code);
        self.changed();
        Some(true)
    }

    /// Closes the session a newer one of `node` replaced, if any, with `code`: the node left,
    /// as far as its unanswered instructions are concerned.
    fn close_replaced(&self, node: NodeId, previous: Option<Session>, code: u32) {
        if let Some(previous) = previous {
            previous.link.close(code, b"replaced by a newer connection");
            let _ = self.departures.send(node);
        }
    }

    /// Ends `node`'s HTTP session, if it has one; returns whether it had.
    pub fn detach_http(&self, node: NodeId) -> bool {
        let removed = {
            let mut live = self.live();
            match live.by_node.get(&node) {
                Some(Session {
                    link: Link::Http { .. },
                    ..
                }) => live.by_node.remove(&node).is_some(),
                _ => false,
            }
        };
        if removed {
            let _ = self.departures.send(node);
            self.changed();
        }
        removed
    }

    /// Ends every HTTP session whose heartbeats stopped before `now`; the nodes that went.
    pub fn expire_http(&self, now: Instant) -> Vec<NodeId> {
        let gone: Vec<NodeId> = {
            let mut live = self.live();
            let gone: Vec<NodeId> = live
                .by_node
                .iter()
                .filter(|(_, session)| {
                    matches!(session.link, Link::Http { online_until } if online_until <= now)
                })
                .map(|(node, _)| *node)
                .collect();
            for node in &gone {
                live.by_node.remove(node);
            }
            gone
        };
        for node in &gone {
            let _ = self.departures.send(*node);
        }
        if !gone.is_empty() {
            self.changed();
        }
        gone
    }

    /// The protocol `node` is online over, if it is.
    pub fn protocol(&self, node: NodeId) -> Option<Protocol> {
        self.live()
            .by_node
            .get(&node)
            .map(|session| match session.link {
                Link::Quic(_) => Protocol::Quic,
                Link::Http { .. } => Protocol::FlowerHttp,
            })
    }

    /// Forgets `node`'s session if it is still generation `generation`; returns whether it was.
    pub fn detach(&self, node: NodeId, generation: u64) -> bool {
        let removed = {
            let mut live = self.live();
            if live
                .by_node
                .get(&node)
                .is_some_and(|s| s.generation == generation)
            {
                live.by_node.remove(&node);
                true
            } else {
                false
            }
        };
        if removed {
            let _ = self.departures.send(node);
            self.changed();
        }
        removed
    }

    /// Revokes `node` for the life of this process: closes its connection, if it has one, with
    /// `code` and `reason`, and refuses every later attachment. Returns whether it was online.
    pub fn revoke(&self, node: NodeId, code: u32, reason: &str) -> bool {
        let session = {
            let mut live = self.live();
            live.revoked.insert(node);
            live.by_node.remove(&node)
        };
        match session {
            Some(session) => {
                session.link.close(code, reason.as_bytes());
                let _ = self.departures.send(node);
                self.changed();
                true
            }
            None => false,
        }
    }

    /// Wakes `node`'s delivery loop; `false` if the node is not online.
    pub fn wake(&self, node: NodeId) -> bool {
        match self.live().by_node.get(&node) {
            Some(session) => {
                session.wake.notify_one();
                true
            }
            None => false,
        }
    }

    /// Pushes `frame` to every online node.
    pub fn push_all(&self, frame: BrokerFrame) {
        for session in self.live().by_node.values() {
            let _ = session.push.send(frame.clone());
        }
    }

    /// Ids of the online nodes, sorted.
    pub fn online(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self.live().by_node.keys().copied().collect();
        ids.sort();
        ids
    }

    /// Whether `node` is online.
    pub fn is_online(&self, node: NodeId) -> bool {
        self.live().by_node.contains_key(&node)
    }

    /// Whether `node` was revoked while this process runs.
    pub fn is_revoked(&self, node: NodeId) -> bool {
        self.live().revoked.contains(&node)
    }

    /// Follows arrivals and departures.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Follows departures.
    pub fn departures(&self) -> tokio::sync::broadcast::Receiver<NodeId> {
        self.departures.subscribe()
    }

    /// UDP bytes (received, sent) so far on the live connections.
    pub fn traffic(&self) -> (u64, u64) {
        self.live()
            .by_node
            .values()
            .fold((0, 0), |(rx, tx), session| match &session.link {
                Link::Quic(connection) => {
                    let stats = connection.stats();
                    (rx + stats.udp_rx.bytes, tx + stats.udp_tx.bytes)
                }
                Link::Http { .. } => (rx, tx),
            })
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.live().by_node.len()
    }

    /// Whether no node is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Both ends of a real QUIC connection over loopback, with the endpoints that keep it alive.
    async fn connection_pair() -> (
        quinn::Connection,
        quinn::Connection,
        quinn::Endpoint,
        quinn::Endpoint,
    ) {
        let (cert, key) = certs::generate::ephemeral_server_certificate().unwrap();
        let auth = certs::tls::ClientAuth {
            policy: Arc::new(|_: &certs::PublicKey| true),
            mandatory: false,
        };
        let tls = certs::tls::server_config(vec![cert], key, auth, b"test").unwrap();
        let transport = || certs::quic::transport(Duration::from_secs(5), None);
        let server_config = certs::quic::server_config(tls, transport()).unwrap();
        let server =
            quinn::Endpoint::server(server_config, "127.0.0.1:0".parse().unwrap()).unwrap();
        let address = server.local_addr().unwrap();
        let client = certs::quic::client_endpoint(address).unwrap();
        let client_tls = certs::tls::insecure_client_config(None, b"test").unwrap();
        let config = certs::quic::client_config(client_tls, transport()).unwrap();
        let connecting = client.connect_with(config, address, "localhost").unwrap();
        let accepted = async { server.accept().await.unwrap().await.unwrap() };
        let (server_side, client_side) = tokio::join!(accepted, connecting);
        (server_side, client_side.unwrap(), server, client)
    }

    #[tokio::test]
    async fn a_node_revoked_after_its_registry_check_is_never_attached() {
        let (connection, _client, _server_endpoint, _client_endpoint) = connection_pair().await;
        let sessions = Sessions::default();
        let node = NodeId(7);
        // The interleaving of the race: the handshake read "registered", then the operator's
        // unregister committed and revoked (no session yet), then the handshake attaches.
        assert!(!sessions.revoke(node, 2, "unregistered"));
        assert!(sessions.attach(node, connection, 1).is_none());
        assert!(!sessions.is_online(node));
        assert!(sessions.online().is_empty());
        assert!(sessions.is_revoked(node));
    }

    #[tokio::test]
    async fn revoking_an_attached_node_closes_its_connection() {
        let (connection, client, _server_endpoint, _client_endpoint) = connection_pair().await;
        let sessions = Sessions::default();
        let node = NodeId(8);
        assert!(sessions.attach(node, connection, 1).is_some());
        assert!(sessions.revoke(node, 2, "unregistered"));
        assert!(!sessions.is_online(node));
        let closed = tokio::time::timeout(Duration::from_secs(5), client.closed())
            .await
            .unwrap();
        assert!(
            matches!(closed, quinn::ConnectionError::ApplicationClosed(ref c) if c.error_code == quinn::VarInt::from_u32(2)),
            "{closed:?}"
        );
    }
}
