//! Carrying tables of earlier versions over to this one, inside the transaction that opens the
//! database: either everything is carried over or nothing changes.

use super::{StoreError, decode, encode, storage, tables};
use redb::{ReadableTable as _, TableDefinition, TableHandle as _};
use serde::Deserialize;
use wire::control::{RunInfo, RunStatus};
use wire::{ConfigRecord, RunId};

/// `runs_v1`: runs before they had a bundle.
const RUNS_V1: TableDefinition<u64, &[u8]> = TableDefinition::new("runs_v1");

/// A run as `runs_v1` stored it.
#[derive(Deserialize)]
struct RunV1 {
    run_id: RunId,
    app_name: String,
    app_version: String,
    config: ConfigRecord,
    status: RunStatus,
    details: String,
    owner: String,
    pending_at_ms: u64,
    starting_at_ms: Option<u64>,
    running_at_ms: Option<u64>,
    finished_at_ms: Option<u64>,
}

impl From<RunV1> for RunInfo {
    fn from(run: RunV1) -> RunInfo {
        RunInfo {
            run_id: run.run_id,
            app_name: run.app_name,
            app_version: run.app_version,
            config: run.config,
            status: run.status,
            details: run.details,
            owner: run.owner,
            pending_at_ms: run.pending_at_ms,
            starting_at_ms: run.starting_at_ms,
            running_at_ms: run.running_at_ms,
            finished_at_ms: run.finished_at_ms,
            bundle: None,
        }
    }
}

/// Moves every run of `runs_v1` into the current runs table (as a built-in app's run) and drops
/// `runs_v1`; nothing to do when there is no `runs_v1`.
pub fn runs_v1(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let exists = txn
        .list_tables()
        .map_err(storage)?
        .any(|table| table.name() == RUNS_V1.name());
    if !exists {
        return Ok(());
    }
    {
        let old = txn.open_table(RUNS_V1).map_err(storage)?;
        let mut runs = txn.open_table(tables::RUNS).map_err(storage)?;
        for entry in old.iter().map_err(storage)? {
            let (id, bytes) = entry.map_err(storage)?;
            let run: RunInfo = decode::<RunV1>("run (version 1)", bytes.value())?.into();
            runs.insert(id.value(), encode(&run)?.as_slice())
                .map_err(storage)?;
        }
    }
    txn.delete_table(RUNS_V1).map_err(storage)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use redb::ReadableDatabase as _;
    use serde::Serialize;

    /// The bytes `runs_v1` held: the same fields, in the same order, without the bundle.
    #[derive(Serialize)]
    struct WrittenV1<'a> {
        run_id: RunId,
        app_name: &'a str,
        app_version: &'a str,
        config: ConfigRecord,
        status: RunStatus,
        details: &'a str,
        owner: &'a str,
        pending_at_ms: u64,
        starting_at_ms: Option<u64>,
        running_at_ms: Option<u64>,
        finished_at_ms: Option<u64>,
    }

    #[test]
    fn runs_of_a_version_1_database_are_carried_over_and_the_old_table_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        drop(Store::open(&path).unwrap());
        {
            // Made into what a version 1 broker left: schema 1, runs in runs_v1.
            let db = redb::Database::open(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut meta = txn.open_table(tables::META).unwrap();
                meta.insert("schema", 1u32.to_le_bytes().as_slice())
                    .unwrap();
                let mut old = txn.open_table(RUNS_V1).unwrap();
                let run = WrittenV1 {
                    run_id: RunId(42),
                    app_name: "vector-add",
                    app_version: "1.0.0",
                    config: ConfigRecord::new(),
                    status: RunStatus::Completed,
                    details: "",
                    owner: "local",
                    pending_at_ms: 1,
                    starting_at_ms: Some(2),
                    running_at_ms: Some(3),
                    finished_at_ms: Some(4),
                };
                old.insert(42, postcard::to_stdvec(&run).unwrap().as_slice())
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        let store = Store::open(&path).unwrap();
        let runs = store.list_runs().unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].run_id, RunId(42));
        assert_eq!(runs[0].app_name, "vector-add");
        assert_eq!(runs[0].finished_at_ms, Some(4));
        assert_eq!(runs[0].bundle, None);
        let txn = store.db.begin_read().unwrap();
        assert!(
            !txn.list_tables()
                .unwrap()
                .any(|table| table.name() == RUNS_V1.name())
        );
        let meta = txn.open_table(tables::META).unwrap();
        let schema = meta.get("schema").unwrap().unwrap().value().to_vec();
        assert_eq!(schema, 2u32.to_le_bytes());
    }

    #[test]
    fn a_database_of_a_newer_broker_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        drop(Store::open(&path).unwrap());
        {
            let db = redb::Database::open(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(tables::META)
                .unwrap()
                .insert("schema", 3u32.to_le_bytes().as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let error = Store::open(&path).unwrap_err().to_string();
        assert!(error.contains("schema version 3"), "{error}");
    }
}
