//! App bundles, stored once per hash.

use super::{Store, StoreError, storage, tables};
use redb::{ReadableDatabase as _, ReadableTable as _};
use wire::BundleHash;

impl Store {
    /// Stores `bytes` as the bundle `hash` (which the caller checked); storing it again changes
    /// nothing.
    pub fn put_bundle(&self, hash: BundleHash, bytes: &[u8]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut bundles = txn.open_table(tables::BUNDLES).map_err(storage)?;
            if bundles.get(hash.0.as_slice()).map_err(storage)?.is_none() {
                bundles.insert(hash.0.as_slice(), bytes).map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)
    }

    /// The bundle `hash`, if stored.
    pub fn bundle(&self, hash: BundleHash) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let bundles = txn.open_table(tables::BUNDLES).map_err(storage)?;
        let value = bundles.get(hash.0.as_slice()).map_err(storage)?;
        Ok(value.map(|bytes| bytes.value().to_vec()))
    }

    /// Whether the bundle `hash` is stored.
    pub fn has_bundle(&self, hash: BundleHash) -> Result<bool, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let bundles = txn.open_table(tables::BUNDLES).map_err(storage)?;
        Ok(bundles.get(hash.0.as_slice()).map_err(storage)?.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_is_stored_once_and_read_back() {
        let store = Store::in_memory().unwrap();
        let hash = BundleHash([7; 32]);
        assert!(!store.has_bundle(hash).unwrap());
        assert_eq!(store.bundle(hash).unwrap(), None);
        store.put_bundle(hash, b"first").unwrap();
        store.put_bundle(hash, b"second").unwrap();
        assert!(store.has_bundle(hash).unwrap());
        assert_eq!(store.bundle(hash).unwrap().as_deref(), Some(&b"first"[..]));
    }
}
