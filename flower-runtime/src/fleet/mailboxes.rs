//! What each Flower SuperNode holds of the SuperLink's instructions: the ones it pulled and has
//! not answered, each an [`Exchange`] (its objects until confirmed, then its reply as it
//! arrives). Bounded: a node holds at most [`MAX_HELD`] at once, and an instruction whose time to
//! live passed, or whose node went away, is dropped with everything it held.

use crate::exchange::Exchange;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use wire::{Metadata, NodeId};

/// Most unanswered instructions a SuperNode holds (Flower's answers one at a time).
pub const MAX_HELD: usize = 4;

/// One pulled instruction.
pub struct Held {
    /// Its metadata here (its reply is built from it).
    pub instruction: Metadata,
    /// Its way out and its reply's way back.
    pub exchange: Exchange,
}

impl Held {
    fn expired(&self, now_ms: u64) -> bool {
        self.instruction.is_expired(now_ms)
    }
}

/// Every SuperNode's pulled instructions, by node, then by Flower's message id.
#[derive(Default)]
pub struct Mailboxes {
    nodes: Mutex<HashMap<NodeId, HashMap<String, Held>>>,
    /// The nodes a pull is under way for.
    pulling: Mutex<std::collections::HashSet<NodeId>>,
}

/// A pull under way for one node; the next may start when it is dropped.
pub struct Pulling<'a> {
    mailboxes: &'a Mailboxes,
    node: NodeId,
}

impl Drop for Pulling<'_> {
    fn drop(&mut self) {
        self.mailboxes
            .pulling
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&self.node);
    }
}

impl Mailboxes {
    fn lock(&self) -> MutexGuard<'_, HashMap<NodeId, HashMap<String, Held>>> {
        // Whole inserts and removes only: a poisoned map is still consistent.
        self.nodes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts a pull for `node`, unless one is under way or it holds [`MAX_HELD`] live
    /// instructions already.
    pub fn begin_pull(&self, node: NodeId, now_ms: u64) -> Option<Pulling<'_>> {
        {
            let mut nodes = self.lock();
            if let Some(held) = nodes.get_mut(&node) {
                held.retain(|_, held| !held.expired(now_ms));
                if held.len() >= MAX_HELD {
                    return None;
                }
            }
        }
        let mut pulling = self
            .pulling
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        pulling.insert(node).then_some(Pulling {
            mailboxes: self,
            node,
        })
    }

    /// Keeps `held` for `node`.
    pub fn hold(&self, node: NodeId, held: Held) {
        let id = held.exchange.message_id().to_string();
        self.lock().entry(node).or_default().insert(id, held);
    }

    /// Runs `with` on the instruction of `node` that `pick` selects, if it is held and live.
    pub fn with<T>(
        &self,
        node: NodeId,
        now_ms: u64,
        pick: impl Fn(&Held) -> bool,
        with: impl FnOnce(&mut Held) -> T,
    ) -> Option<T> {
        let mut nodes = self.lock();
        let held = nodes.get_mut(&node)?;
        held.retain(|_, held| !held.expired(now_ms));
        held.values_mut().find(|held| pick(held)).map(with)
    }

    /// Runs `with` on instruction `message_id` of `node`, if it is held and live.
    pub fn with_message<T>(
        &self,
        node: NodeId,
        message_id: &str,
        now_ms: u64,
        with: impl FnOnce(&mut Held) -> T,
    ) -> Option<T> {
        let mut nodes = self.lock();
        let held = nodes.get_mut(&node)?.get_mut(message_id)?;
        if held.expired(now_ms) {
            nodes.get_mut(&node)?.remove(message_id);
            return None;
        }
        Some(with(held))
    }

    /// Takes instruction `message_id` of `node` out.
    pub fn take(&self, node: NodeId, message_id: &str) -> Option<Held> {
        let mut nodes = self.lock();
        let held = nodes.get_mut(&node)?;
        let taken = held.remove(message_id);
        if held.is_empty() {
            nodes.remove(&node);
        }
        taken
    }

    /// Whether `node` holds an instruction of run `run_id` (only then may it read the run).
    pub fn holds_run(&self, node: NodeId, run_id: u64, now_ms: u64) -> bool {
        self.with(
            node,
            now_ms,
            |held| held.exchange.run_id() == run_id,
            |_| (),
        )
        .is_some()
    }

    /// Drops everything `node` holds (it went away, or was unregistered).
    pub fn forget(&self, node: NodeId) {
        self.lock().remove(&node);
    }

    /// Drops every instruction whose time to live passed.
    pub fn sweep(&self, now_ms: u64) {
        let mut nodes = self.lock();
        nodes.retain(|_, held| {
            held.retain(|_, held| !held.expired(now_ms));
            !held.is_empty()
        });
    }
}
