//! The broker's durable state in redb: what a restart reads (the node registry, runs, their logs,
//! artifacts, checkpoints and app bundles), and nothing else; rounds in flight live in memory
//! ([`crate::rounds`]). redb types never leave this module; every logical operation is one short
//! write transaction, committed (durably) before the caller acknowledges anything to a peer.

mod bundles;
#[cfg(test)]
mod fault_tests;
mod migrate;
mod nodes;
mod runs;
mod tables;
pub mod tally;

pub use nodes::NodeRecord;

use redb::{Database, ReadableTable as _};
use serde::Serialize;
use std::path::Path;
use thiserror::Error;
use wire::NodeId;

/// Owner recorded for nodes that registered themselves (automatic mode).
pub const AUTOMATIC_OWNER: &str = "automatic";

/// Schema version written into a new database and checked when an existing one is opened.
/// Version 2 added app bundles (the `runs_v2` and `bundles_v1` tables); a version 1 database is
/// carried over when opened ([`migrate`]), and a newer one is refused, so that an older broker
/// never reads a database it would misunderstand.
const SCHEMA_VERSION: u32 = 2;

/// The oldest schema version this broker carries over.
const OLDEST_READABLE: u32 = 1;

/// A store failure. Storage errors leave the database as it was before the operation.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database file could not be opened, read or written.
    #[error("database error: {0}")]
    Storage(String),
    /// The file is not a broker database, or is damaged.
    #[error("database {path} is unusable: {reason}")]
    Unusable {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The key is registered, or was once.
    #[error("public key already in use")]
    KeyInUse,
    /// No node with this id.
    #[error("node {0} not found")]
    UnknownNode(NodeId),
    /// No such run.
    #[error("run {0} not found")]
    UnknownRun(wire::RunId),
    /// A reply that answers nothing, or answers another node's instruction.
    #[error("invalid reply: {0}")]
    InvalidReply(String),
    /// The node was already unregistered.
    #[error("node {0} is already unregistered")]
    AlreadyUnregistered(NodeId),
}

pub(crate) fn storage(error: impl Into<redb::Error>) -> StoreError {
    StoreError::Storage(error.into().to_string())
}

/// Encodes a stored value.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(value).map_err(|e| StoreError::Storage(e.to_string()))
}

/// Decodes a stored value; a value that does not decode is reported, never guessed at.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    what: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Storage(format!("corrupt {what}: {e}")))
}

/// The broker's database.
pub struct Store {
    /// The redb database (file-backed or in memory).
    db: Database,
    /// Nodes and runs by status, kept in step with every committed change.
    tallies: tally::Tallies,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

impl Store {
    /// Opens the database at `path`, creating it (and its directory) if it does not exist. An
    /// existing file that is not a broker database is refused, never reset.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let unusable = |reason: String| StoreError::Unusable {
            path: path.display().to_string(),
            reason,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir).map_err(|e| unusable(e.to_string()))?;
        }
        let existed = path.exists();
        if !existed {
            // Logs, artifacts and checkpoints are the federation's: the owner's alone. redb
            // initialises an empty file in place.
            create_private_file(path).map_err(|e| unusable(e.to_string()))?;
        }
        let db = if existed {
            Database::open(path)
        } else {
            Database::create(path)
        }
        .map_err(|e| {
            if !existed {
                // Nothing of ours is left half made.
                let _ = std::fs::remove_file(path);
            }
            unusable(redb::Error::from(e).to_string())
        })?;
        Store::with_tallies(db).map_err(|e| unusable(e.to_string()))
    }

    /// An ephemeral database in memory (`--database :flwr-in-memory:`).
    pub fn in_memory() -> Result<Self, StoreError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(storage)?;
        Store::with_tallies(db)
    }

    /// The store over `db`, its schema checked and its statuses counted once.
    fn with_tallies(db: Database) -> Result<Self, StoreError> {
        let mut store = Store {
            db,
            tallies: tally::Tallies {
                nodes: tally::Tally::of([]),
                runs: tally::Tally::of([]),
            },
        };
        store.check_schema()?;
        store.tallies = tally::Tallies {
            nodes: tally::Tally::of(store.list_nodes()?.into_iter().map(|n| n.status)),
            runs: tally::Tally::of(store.list_runs()?.into_iter().map(|r| r.status)),
        };
        Ok(store)
    }

    /// Nodes and runs by status, without reading the database.
    pub fn tallies(&self) -> &tally::Tallies {
        &self.tallies
    }

    /// Creates the tables of a new database, or checks the schema version of an existing one.
    fn check_schema(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut meta = txn.open_table(tables::META).map_err(storage)?;
            let found = meta
                .get("schema")
                .map_err(storage)?
                .map(|v| v.value().to_vec());
            match found {
                Some(bytes) => {
                    let version = <[u8; 4]>::try_from(bytes.as_slice())
                        .map(u32::from_le_bytes)
                        .map_err(|_| StoreError::Storage("malformed schema version".into()))?;
                    if !(OLDEST_READABLE..=SCHEMA_VERSION).contains(&version) {
                        return Err(StoreError::Storage(format!(
                            "schema version {version}, this broker reads versions \
                             {OLDEST_READABLE} to {SCHEMA_VERSION}"
                        )));
                    }
                    if version < SCHEMA_VERSION {
                        meta.insert("schema", SCHEMA_VERSION.to_le_bytes().as_slice())
                            .map_err(storage)?;
                    }
                }
                None => {
                    meta.insert("schema", SCHEMA_VERSION.to_le_bytes().as_slice())
                        .map_err(storage)?;
                }
            }
            txn.open_table(tables::NODES).map_err(storage)?;
            txn.open_table(tables::NODE_KEYS).map_err(storage)?;
            txn.open_table(tables::RUNS).map_err(storage)?;
            txn.open_table(tables::BUNDLES).map_err(storage)?;
            txn.open_table(tables::BUNDLE_SIGNATURES).map_err(storage)?;
            migrate::runs_v1(&txn)?;
            txn.open_table(tables::RUN_LOGS).map_err(storage)?;
            txn.open_table(tables::ARTIFACTS).map_err(storage)?;
            txn.open_table(tables::CHECKPOINTS).map_err(storage)?;
            txn.open_table(tables::SIMULATIONS).map_err(storage)?;
            for retired in tables::RETIRED {
                let table: redb::TableDefinition<u128, &[u8]> = redb::TableDefinition::new(retired);
                txn.delete_table(table).map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)
    }
}

/// Creates `dir` and its missing parents; the directories it creates are private (0700).
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Creates an empty file at `path` that only its owner can read (0600).
fn create_private_file(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path).map(drop)
}
