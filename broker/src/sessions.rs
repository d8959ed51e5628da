//! The live connections of authenticated nodes: who is online, how to wake a node's delivery
//! loop, how to push a frame on its session stream, and how to close it (unregister, or a newer
//! connection with the same key).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, mpsc, watch};
use wire::NodeId;
use wire::fleet::BrokerFrame;

/// One node's live connection.
struct Session {
    /// The QUIC connection, to close it from outside the connection's task.
    connection: quinn::Connection,
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

/// Live sessions by node id.
pub struct Sessions {
    /// The sessions; a std mutex because no lock is held across an await.
    by_node: Mutex<HashMap<NodeId, Session>>,
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
            by_node: Mutex::default(),
            next_generation: AtomicU64::new(0),
            changes: watch::channel(0).0,
            departures: tokio::sync::broadcast::channel(4096).0,
        }
    }
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Session>> {
        // Inserts and removes only: a poisoned map is still consistent.
        self.by_node
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn changed(&self) {
        self.changes.send_modify(|version| *version += 1);
    }

    /// Records `connection` as `node`'s session, closing any previous one with `replaced_code`.
    pub fn attach(
        &self,
        node: NodeId,
        connection: quinn::Connection,
        replaced_code: u32,
    ) -> Attached {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let wake = Arc::new(Notify::new());
        let (push, pushes) = mpsc::unbounded_channel();
        let previous = self.lock().insert(
            node,
            Session {
                connection,
                generation,
                wake: wake.clone(),
                push,
            },
        );
        if let Some(previous) = previous {
            previous
                .connection
                .close(replaced_code.into(), b"replaced by a newer connection");
            let _ = self.departures.send(node);
        }
        // Anything queued while the node was away goes out now.
        wake.notify_one();
        self.changed();
        Attached {
            generation,
            wake,
            pushes,
        }
    }

    /// Forgets `node`'s session if it is still generation `generation`; returns whether it was.
    pub fn detach(&self, node: NodeId, generation: u64) -> bool {
        let removed = {
            let mut sessions = self.lock();
            if sessions
                .get(&node)
                .is_some_and(|s| s.generation == generation)
            {
                sessions.remove(&node);
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

    /// Closes `node`'s connection, if it has one, with `code` and `reason`.
    pub fn close(&self, node: NodeId, code: u32, reason: &str) -> bool {
        let session = self.lock().remove(&node);
        match session {
            Some(session) => {
                session.connection.close(code.into(), reason.as_bytes());
                let _ = self.departures.send(node);
                self.changed();
                true
            }
            None => false,
        }
    }

    /// Wakes `node`'s delivery loop; `false` if the node is not online.
    pub fn wake(&self, node: NodeId) -> bool {
        match self.lock().get(&node) {
            Some(session) => {
                session.wake.notify_one();
                true
            }
            None => false,
        }
    }

    /// Pushes `frame` to every online node.
    pub fn push_all(&self, frame: BrokerFrame) {
        for session in self.lock().values() {
            let _ = session.push.send(frame.clone());
        }
    }

    /// Ids of the online nodes, sorted.
    pub fn online(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self.lock().keys().copied().collect();
        ids.sort();
        ids
    }

    /// Whether `node` is online.
    pub fn is_online(&self, node: NodeId) -> bool {
        self.lock().contains_key(&node)
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
        self.lock().values().fold((0, 0), |(rx, tx), session| {
            let stats = session.connection.stats();
            (rx + stats.udp_rx.bytes, tx + stats.udp_tx.bytes)
        })
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no node is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
