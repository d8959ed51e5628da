//! The live connections of authenticated nodes, so that an operator's unregister (or a newer
//! connection with the same key) can close them at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use wire::NodeId;

/// One node's live connection.
struct Session {
    /// The QUIC connection, to close it from outside the connection's task.
    connection: quinn::Connection,
    /// Distinguishes this connection from an older or newer one of the same node.
    generation: u64,
}

/// Live sessions by node id.
#[derive(Default)]
pub struct Sessions {
    /// The sessions; a std mutex because no lock is held across an await.
    by_node: Mutex<HashMap<NodeId, Session>>,
    /// Source of generation numbers.
    next_generation: AtomicU64,
}

impl Sessions {
    /// Records `connection` as `node`'s session, closing any previous one with `replaced_code`.
    /// Returns the new session's generation.
    pub fn attach(&self, node: NodeId, connection: quinn::Connection, replaced_code: u32) -> u64 {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let previous = self.lock().insert(
            node,
            Session {
                connection,
                generation,
            },
        );
        if let Some(previous) = previous {
            previous
                .connection
                .close(replaced_code.into(), b"replaced by a newer connection");
        }
        generation
    }

    /// Forgets `node`'s session if it is still generation `generation`; returns whether it was.
    pub fn detach(&self, node: NodeId, generation: u64) -> bool {
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
    }

    /// Closes `node`'s connection, if it has one, with `code` and `reason`.
    pub fn close(&self, node: NodeId, code: u32, reason: &str) -> bool {
        match self.lock().remove(&node) {
            Some(session) => {
                session.connection.close(code.into(), reason.as_bytes());
                true
            }
            None => false,
        }
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no node is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Session>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts and
        // removes), so a poisoned lock is still safe to use.
        self.by_node
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
