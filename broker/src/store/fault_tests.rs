//! Storage faults: a full disk in the middle of a commit, a file truncated or damaged between runs,
//! and a reply committed just before a crash. Each must leave the database as it was before the
//! failed operation, or be refused with a clear error, never silently reset.

use super::*;
use certs::IdentityKey;
use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use wire::RunId;

/// A file backend whose disk can be made full: every write then fails as ENOSPC would.
#[derive(Debug)]
struct FillableDisk {
    file: FileBackend,
    full: Arc<AtomicBool>,
}

impl FillableDisk {
    fn check(&self) -> Result<(), std::io::Error> {
        if self.full.load(Ordering::SeqCst) {
            Err(std::io::ErrorKind::StorageFull.into())
        } else {
            Ok(())
        }
    }
}

impl StorageBackend for FillableDisk {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.file.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.file.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        if len > self.file.len()? {
            self.check()?;
        }
        self.file.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.check()?;
        self.file.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.check()?;
        self.file.write(offset, data)
    }
    fn close(&self) -> Result<(), std::io::Error> {
        self.file.close()
    }
    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(start, end)
    }
    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }
    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(start, end)
    }
    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }
    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(start, end)
    }
}

fn open_fillable(path: &Path) -> (Store, Arc<AtomicBool>) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap();
    let full = Arc::new(AtomicBool::new(false));
    let backend = FillableDisk {
        file: FileBackend::new(file).unwrap(),
        full: full.clone(),
    };
    let db = Database::builder().create_with_backend(backend).unwrap();
    (Store::with_tallies(db).unwrap(), full)
}

#[test]
fn a_full_disk_during_a_commit_leaves_the_database_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let kept = IdentityKey::generate().public_key();
    let lost = IdentityKey::generate().public_key();
    let kept_id = {
        let (store, full) = open_fillable(&path);
        let id = store.register_node(&kept, "alice", 1).unwrap().node_id;
        full.store(true, Ordering::SeqCst);
        let error = store.register_node(&lost, "alice", 2).unwrap_err();
        assert!(matches!(error, StoreError::Storage(_)), "{error}");
        let error = store
            .append_log(RunId(1), &"x".repeat(1 << 20), 3)
            .unwrap_err();
        assert!(matches!(error, StoreError::Storage(_)), "{error}");
        id
    };
    // The disk has room again: the last committed state is there, the failed writes are not.
    let store = Store::open(&path).unwrap();
    let nodes = store.list_nodes().unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].node_id, kept_id);
    assert!(store.node_by_key(&lost).unwrap().is_none());
    assert!(store.logs(RunId(1), 0).unwrap().is_empty());
    store.register_node(&lost, "alice", 4).unwrap();
}

fn healthy_database(path: &Path) -> NodeId {
    let store = Store::open(path).unwrap();
    let key = IdentityKey::generate().public_key();
    let id = store.register_node(&key, "alice", 1).unwrap().node_id;
    for i in 0..200 {
        store.append_log(RunId(1), &format!("line {i}"), i).unwrap();
    }
    id
}

#[test]
fn a_truncated_database_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    healthy_database(&path);
    let bytes = std::fs::read(&path).unwrap();
    for keep in [bytes.len() / 2, 100] {
        std::fs::write(&path, &bytes[..keep]).unwrap();
        let error = Store::open(&path).unwrap_err();
        assert!(matches!(error, StoreError::Unusable { .. }), "{error}");
        assert_eq!(std::fs::read(&path).unwrap(), &bytes[..keep], "no reset");
    }
}

#[test]
fn a_damaged_database_is_refused_or_read_back_intact_never_reset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    healthy_database(&path);
    let mut bytes = std::fs::read(&path).unwrap();
    // Overwrite the header: the database's identity.
    bytes[..64].fill(0xA5);
    std::fs::write(&path, &bytes).unwrap();
    let error = Store::open(&path).unwrap_err();
    assert!(matches!(error, StoreError::Unusable { .. }), "{error}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "no reset");

    // Damage in the body is caught by redb's checksums, or the data reads back as written.
    let path = dir.path().join("body.redb");
    let id_body = healthy_database(&path);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    for byte in &mut bytes[middle..middle + 4096] {
        *byte ^= 0xFF;
    }
    std::fs::write(&path, &bytes).unwrap();
    if let Ok(store) = Store::open(&path) {
        match store.list_nodes() {
            Ok(nodes) => assert_eq!(
                nodes.iter().map(|n| n.node_id).collect::<Vec<_>>(),
                [id_body]
            ),
            Err(error) => assert!(matches!(error, StoreError::Storage(_)), "{error}"),
        }
    }
}
