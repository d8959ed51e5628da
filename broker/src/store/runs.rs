//! Runs, their logs and their artifacts.

use super::{Store, StoreError, decode, encode, storage, tables};
use redb::{ReadableDatabase as _, ReadableTable as _};
use wire::RunId;
use wire::control::{LogLine, RunInfo, RunStatus, Simulation};

impl Store {
    /// Records a new run (pending) under a fresh id.
    pub fn create_run(&self, info: RunInfo) -> Result<RunInfo, StoreError> {
        self.create_run_on(info, None)
    }

    /// Stores a new run on the virtual federation `simulation`, as [`Store::create_run`] does,
    /// with its federation in the same transaction.
    pub fn create_run_on(
        &self,
        mut info: RunInfo,
        simulation: Option<&Simulation>,
    ) -> Result<RunInfo, StoreError> {
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut runs = txn.open_table(tables::RUNS).map_err(storage)?;
            info.run_id = loop {
                let candidate = RunId::random();
                if runs.get(candidate.0).map_err(storage)?.is_none() {
                    break candidate;
                }
            };
            runs.insert(info.run_id.0, encode(&info)?.as_slice())
                .map_err(storage)?;
            if let Some(simulation) = simulation {
                let mut simulations = txn.open_table(tables::SIMULATIONS).map_err(storage)?;
                simulations
                    .insert(info.run_id.0, encode(simulation)?.as_slice())
                    .map_err(storage)?;
            }
        }
        let tally = self.tallies.runs.hold();
        txn.commit().map_err(storage)?;
        tally.add(info.status);
        Ok(info)
    }

    /// The run `run_id`.
    pub fn run(&self, run_id: RunId) -> Result<Option<RunInfo>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let runs = txn.open_table(tables::RUNS).map_err(storage)?;
        let value = runs.get(run_id.0).map_err(storage)?;
        value.map(|bytes| decode("run", bytes.value())).transpose()
    }

    /// Every run, oldest first.
    pub fn list_runs(&self) -> Result<Vec<RunInfo>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let runs = txn.open_table(tables::RUNS).map_err(storage)?;
        let mut list = Vec::new();
        for entry in runs.iter().map_err(storage)? {
            let (_, bytes) = entry.map_err(storage)?;
            list.push(decode::<RunInfo>("run", bytes.value())?);
        }
        list.sort_by_key(|run| (run.pending_at_ms, run.run_id));
        Ok(list)
    }

    /// Applies `change` to a run in one transaction; returns the updated run.
    pub fn update_run(
        &self,
        run_id: RunId,
        change: impl FnOnce(&mut RunInfo),
    ) -> Result<RunInfo, StoreError> {
        let txn = self.db.begin_write().map_err(storage)?;
        let (info, before) = {
            let mut runs = txn.open_table(tables::RUNS).map_err(storage)?;
            let mut info: RunInfo = match runs.get(run_id.0).map_err(storage)? {
                Some(bytes) => decode("run", bytes.value())?,
                None => return Err(StoreError::UnknownRun(run_id)),
            };
            let before = info.status;
            change(&mut info);
            runs.insert(run_id.0, encode(&info)?.as_slice())
                .map_err(storage)?;
            (info, before)
        };
        let tally = self.tallies.runs.hold();
        txn.commit().map_err(storage)?;
        tally.moved(before, info.status);
        Ok(info)
    }

    /// Moves a run to `status` at `now_ms` unless it already finished; returns the run as stored.
    pub fn set_run_status(
        &self,
        run_id: RunId,
        status: RunStatus,
        details: &str,
        now_ms: u64,
    ) -> Result<RunInfo, StoreError> {
        self.update_run(run_id, |info| {
            if info.status.is_finished() {
                return;
            }
            info.status = status;
            match status {
                RunStatus::Pending => {}
                RunStatus::Starting => info.starting_at_ms = Some(now_ms),
                RunStatus::Running => info.running_at_ms = Some(now_ms),
                RunStatus::Completed | RunStatus::Failed | RunStatus::Stopped => {
                    info.finished_at_ms = Some(now_ms);
                    info.details = details.to_string();
                }
            }
        })
    }

    /// Appends a line to a run's log; returns it with its index.
    pub fn append_log(
        &self,
        run_id: RunId,
        text: &str,
        now_ms: u64,
    ) -> Result<LogLine, StoreError> {
        let mut lines = self.append_logs(run_id, &[text.to_string()], now_ms)?;
        lines
            .pop()
            .ok_or_else(|| StoreError::Storage("no line appended".into()))
    }

    /// Appends `texts` to a run's log in one transaction (one commit, however many lines);
    /// returns them as stored.
    pub fn append_logs(
        &self,
        run_id: RunId,
        texts: &[String],
        now_ms: u64,
    ) -> Result<Vec<LogLine>, StoreError> {
        let txn = self.db.begin_write().map_err(storage)?;
        let lines = {
            let mut logs = txn.open_table(tables::RUN_LOGS).map_err(storage)?;
            let first = match logs
                .range((run_id.0, 0)..=(run_id.0, u64::MAX))
                .map_err(storage)?
                .next_back()
            {
                Some(last) => last.map_err(storage)?.0.value().1 + 1,
                None => 0,
            };
            let mut lines = Vec::with_capacity(texts.len());
            for (index, text) in (first..).zip(texts) {
                let line = LogLine {
                    index,
                    at_ms: now_ms,
                    text: text.clone(),
                };
                logs.insert((run_id.0, index), encode(&line)?.as_slice())
                    .map_err(storage)?;
                lines.push(line);
            }
            lines
        };
        txn.commit().map_err(storage)?;
        Ok(lines)
    }

    /// A run's log lines from index `after` on.
    pub fn logs(&self, run_id: RunId, after: u64) -> Result<Vec<LogLine>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let logs = txn.open_table(tables::RUN_LOGS).map_err(storage)?;
        let mut lines = Vec::new();
        for entry in logs
            .range((run_id.0, after)..=(run_id.0, u64::MAX))
            .map_err(storage)?
        {
            let (_, bytes) = entry.map_err(storage)?;
            lines.push(decode("log line", bytes.value())?);
        }
        Ok(lines)
    }

    /// The lines of `run_id`'s log from index `after` on, as many as fit in `max_bytes` of text
    /// (at least one), and whether more follow. Reads only what it returns.
    pub fn logs_page(
        &self,
        run_id: RunId,
        after: u64,
        max_bytes: usize,
    ) -> Result<(Vec<LogLine>, bool), StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let logs = txn.open_table(tables::RUN_LOGS).map_err(storage)?;
        let mut lines: Vec<LogLine> = Vec::new();
        let mut bytes = 0;
        for entry in logs
            .range((run_id.0, after)..=(run_id.0, u64::MAX))
            .map_err(storage)?
        {
            let (_, value) = entry.map_err(storage)?;
            let line: LogLine = decode("log line", value.value())?;
            if !lines.is_empty() && bytes + line.text.len() > max_bytes {
                return Ok((lines, true));
            }
            bytes += line.text.len();
            lines.push(line);
        }
        Ok((lines, false))
    }

    /// The last lines of `run_id`'s log, at most `max_lines` of them and `max_bytes` of text (at
    /// least one line when there is one), in order; reads only what it returns.
    pub fn logs_tail(
        &self,
        run_id: RunId,
        max_lines: usize,
        max_bytes: usize,
    ) -> Result<Vec<LogLine>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let logs = txn.open_table(tables::RUN_LOGS).map_err(storage)?;
        let mut lines: Vec<LogLine> = Vec::new();
        let mut bytes = 0;
        for entry in logs
            .range((run_id.0, 0)..=(run_id.0, u64::MAX))
            .map_err(storage)?
            .rev()
            .take(max_lines)
        {
            let (_, value) = entry.map_err(storage)?;
            let line: LogLine = decode("log line", value.value())?;
            if !lines.is_empty() && bytes + line.text.len() > max_bytes {
                break;
            }
            bytes += line.text.len();
            lines.push(line);
        }
        lines.reverse();
        Ok(lines)
    }

    /// Stores (or replaces) an artifact of a run.
    pub fn save_artifact(&self, run_id: RunId, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut artifacts = txn.open_table(tables::ARTIFACTS).map_err(storage)?;
            artifacts.insert((run_id.0, name), bytes).map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }

    /// A run's artifact.
    pub fn artifact(&self, run_id: RunId, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let artifacts = txn.open_table(tables::ARTIFACTS).map_err(storage)?;
        let value = artifacts.get((run_id.0, name)).map_err(storage)?;
        Ok(value.map(|bytes| bytes.value().to_vec()))
    }

    /// Names of a run's artifacts.
    pub fn artifact_names(&self, run_id: RunId) -> Result<Vec<String>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let artifacts = txn.open_table(tables::ARTIFACTS).map_err(storage)?;
        let mut names = Vec::new();
        for entry in artifacts.range((run_id.0, "")..).map_err(storage)? {
            let (key, _) = entry.map_err(storage)?;
            let (run, name) = key.value();
            if run != run_id.0 {
                break;
            }
            names.push(name.to_string());
        }
        Ok(names)
    }

    /// Names and sizes of a run's artifacts.
    pub fn artifact_sizes(&self, run_id: RunId) -> Result<Vec<(String, u64)>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let artifacts = txn.open_table(tables::ARTIFACTS).map_err(storage)?;
        let mut sizes = Vec::new();
        for entry in artifacts.range((run_id.0, "")..).map_err(storage)? {
            let (key, value) = entry.map_err(storage)?;
            let (run, name) = key.value();
            if run != run_id.0 {
                break;
            }
            sizes.push((name.to_string(), value.value().len() as u64));
        }
        Ok(sizes)
    }

    /// Replaces a run's checkpoint.
    pub fn save_checkpoint(&self, run_id: RunId, state: &[u8]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut checkpoints = txn.open_table(tables::CHECKPOINTS).map_err(storage)?;
            checkpoints.insert(run_id.0, state).map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }

    /// A run's last checkpoint.
    pub fn checkpoint(&self, run_id: RunId) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let checkpoints = txn.open_table(tables::CHECKPOINTS).map_err(storage)?;
        let value = checkpoints.get(run_id.0).map_err(storage)?;
        Ok(value.map(|bytes| bytes.value().to_vec()))
    }

    /// The virtual federation of run `run_id`, when it is a simulation.
    pub fn simulation(&self, run_id: RunId) -> Result<Option<Simulation>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let simulations = txn.open_table(tables::SIMULATIONS).map_err(storage)?;
        let value = simulations.get(run_id.0).map_err(storage)?;
        value
            .map(|bytes| decode("simulation", bytes.value()))
            .transpose()
    }

    /// Whether a run has a checkpoint (without reading it).
    pub fn has_checkpoint(&self, run_id: RunId) -> Result<bool, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let checkpoints = txn.open_table(tables::CHECKPOINTS).map_err(storage)?;
        Ok(checkpoints.get(run_id.0).map_err(storage)?.is_some())
    }

    /// Forgets a finished run's checkpoint (it is only good for resuming).
    pub fn remove_checkpoint(&self, run_id: RunId) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut checkpoints = txn.open_table(tables::CHECKPOINTS).map_err(storage)?;
            checkpoints.remove(run_id.0).map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }

    /// Runs a previous broker process left unfinished.
    pub fn unfinished_runs(&self) -> Result<Vec<RunInfo>, StoreError> {
        Ok(self
            .list_runs()?
            .into_iter()
            .filter(|run| !run.status.is_finished())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_of_any_size_is_read_in_bounded_pages_in_order() {
        let store = Store::in_memory().unwrap();
        let run = RunId(1);
        // Three 4 MiB lines (stored before lines were bounded) among many short ones.
        for i in 0..3_000u64 {
            let len = if i % 1_000 == 0 { 4 << 20 } else { 600 };
            store.append_log(run, &"x".repeat(len), i).unwrap();
        }
        let (mut after, mut pages, mut seen) = (0, 0, 0);
        loop {
            let (page, more) = store.logs_page(run, after, 1 << 20).unwrap();
            let bytes: usize = page.iter().map(|l| l.text.len()).sum();
            assert!(page.len() == 1 || bytes <= 1 << 20, "{bytes} bytes");
            for line in &page {
                assert_eq!(line.index, seen);
                seen += 1;
            }
            pages += 1;
            match page.last() {
                Some(last) if more => after = last.index + 1,
                _ => break,
            }
        }
        assert_eq!(seen, 3_000);
        assert!(pages > 3, "{pages}");
        assert_eq!(
            store.logs_page(run, 3_000, 1 << 20).unwrap(),
            (vec![], false)
        );
        let tail = store.logs_tail(run, 100, 1 << 20).unwrap();
        let indices: Vec<u64> = tail.iter().map(|l| l.index).collect();
        assert_eq!(indices, (2_900..3_000).collect::<Vec<_>>());
        // A 4 MiB line past the byte bound ends the tail, unless it is the only line.
        let tail = store.logs_tail(run, 3_000, 1 << 20).unwrap();
        assert_eq!(tail.first().map(|l| l.index), Some(2_001));
        assert_eq!(store.logs_tail(RunId(2), 10, 10).unwrap(), vec![]);
    }
}
