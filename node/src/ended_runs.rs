//! The runs the SuperLink said have ended, remembered so that a late instruction or a process that
//! finishes afterwards is not served or kept. The SuperLink says so at the end of every run, so
//! the set keeps the latest [`MAX_ENDED_RUNS`]: a daemon that lives through a million runs does
//! not grow by a million ids, and a run that ended that many runs ago sends nothing more.

use std::collections::{HashSet, VecDeque};

/// Most ended runs remembered.
pub const MAX_ENDED_RUNS: usize = 4096;

/// The latest ended runs, by id.
#[derive(Debug, Default)]
pub struct EndedRuns {
    order: VecDeque<u64>,
    ids: HashSet<u64>,
}

impl EndedRuns {
    /// Remembers `run`, forgetting the oldest beyond the bound.
    pub fn insert(&mut self, run: u64) {
        if !self.ids.insert(run) {
            return;
        }
        self.order.push_back(run);
        if self.order.len() > MAX_ENDED_RUNS
            && let Some(oldest) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
        }
    }

    /// Whether `run` ended.
    pub fn contains(&self, run: u64) -> bool {
        self.ids.contains(&run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_runs_are_kept_and_the_oldest_forgotten() {
        let mut ended = EndedRuns::default();
        for run in 0..(MAX_ENDED_RUNS as u64 + 10) {
            ended.insert(run);
            ended.insert(run);
        }
        assert!(!ended.contains(9));
        assert!(ended.contains(10));
        assert!(ended.contains(MAX_ENDED_RUNS as u64 + 9));
        assert_eq!(ended.ids.len(), MAX_ENDED_RUNS);
    }
}
