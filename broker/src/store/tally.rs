//! How many nodes and runs are in each status, kept up to date as the store changes them, so
//! that the metrics endpoint reads counts instead of scanning the registry on every scrape.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use wire::control::{NodeStatus, RunStatus};

/// Counts by status.
#[derive(Debug)]
pub struct Tally<S> {
    counts: Mutex<HashMap<S, u64>>,
}

impl<S: Copy + Eq + Hash> Tally<S> {
    /// Counts `statuses`.
    pub fn of(statuses: impl IntoIterator<Item = S>) -> Self {
        let mut counts = HashMap::new();
        for status in statuses {
            *counts.entry(status).or_insert(0) += 1;
        }
        Tally {
            counts: Mutex::new(counts),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<S, u64>> {
        // Increments and decrements only: a poisoned map is still a count.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The counts, held: take it before committing a change and apply the change after the
    /// commit succeeds, so that updates land in commit order.
    pub fn hold(&self) -> Held<'_, S> {
        Held(self.counts())
    }

    /// How many are in `status`.
    pub fn get(&self, status: S) -> u64 {
        self.counts().get(&status).copied().unwrap_or(0)
    }
}

/// A tally held across a commit.
pub struct Held<'a, S>(std::sync::MutexGuard<'a, HashMap<S, u64>>);

impl<S: Copy + Eq + Hash> Held<'_, S> {
    /// One more in `status`.
    pub fn add(mut self, status: S) {
        *self.0.entry(status).or_insert(0) += 1;
    }

    /// One moved from `from` to `to`.
    pub fn moved(mut self, from: S, to: S) {
        if from == to {
            return;
        }
        match self.0.get_mut(&from) {
            Some(count) if *count > 0 => *count -= 1,
            _ => debug_assert!(false, "a tally moved from an empty status"),
        }
        *self.0.entry(to).or_insert(0) += 1;
    }
}

/// The store's tallies.
#[derive(Debug)]
pub struct Tallies {
    /// Nodes by status.
    pub nodes: Tally<NodeStatus>,
    /// Runs by status.
    pub runs: Tally<RunStatus>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_keep_the_total_and_a_no_op_move_changes_nothing() {
        let tally = Tally::of([NodeStatus::Registered, NodeStatus::Online]);
        tally.hold().moved(NodeStatus::Online, NodeStatus::Offline);
        tally.hold().moved(NodeStatus::Offline, NodeStatus::Offline);
        tally.hold().add(NodeStatus::Registered);
        assert_eq!(tally.get(NodeStatus::Registered), 2);
        assert_eq!(tally.get(NodeStatus::Online), 0);
        assert_eq!(tally.get(NodeStatus::Offline), 1);
    }
}
