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

    /// One more in `status`.
    pub fn add(&self, status: S) {
        *self.counts().entry(status).or_insert(0) += 1;
    }

    /// One moved from `from` to `to`.
    pub fn moved(&self, from: S, to: S) {
        if from == to {
            return;
        }
        let mut counts = self.counts();
        if let Some(count) = counts.get_mut(&from) {
            *count = count.saturating_sub(1);
        }
        *counts.entry(to).or_insert(0) += 1;
    }

    /// How many are in `status`.
    pub fn get(&self, status: S) -> u64 {
        self.counts().get(&status).copied().unwrap_or(0)
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
        tally.moved(NodeStatus::Online, NodeStatus::Offline);
        tally.moved(NodeStatus::Offline, NodeStatus::Offline);
        tally.add(NodeStatus::Registered);
        assert_eq!(tally.get(NodeStatus::Registered), 2);
        assert_eq!(tally.get(NodeStatus::Online), 0);
        assert_eq!(tally.get(NodeStatus::Offline), 1);
    }
}
