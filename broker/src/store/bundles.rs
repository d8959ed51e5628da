//! App bundles, stored once per hash.

use super::{Store, StoreError, storage, tables};
use redb::{ReadableDatabase as _, ReadableTable as _};
use wire::BundleHash;
use wire::bundle::BundleSignature;

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

impl Store {
    /// Keeps `signatures` (checked by the caller) of the bundle `hash`, replacing a publisher's
    /// earlier one.
    pub fn add_bundle_signatures(
        &self,
        hash: BundleHash,
        signatures: &[BundleSignature],
    ) -> Result<(), StoreError> {
        if signatures.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut table = txn.open_table(tables::BUNDLE_SIGNATURES).map_err(storage)?;
            for signature in signatures {
                table
                    .insert(
                        (hash.0.as_slice(), signature.public_key.as_slice()),
                        signature.signature.as_slice(),
                    )
                    .map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)
    }

    /// The publishers' signatures of the bundle `hash`.
    pub fn bundle_signatures(&self, hash: BundleHash) -> Result<Vec<BundleSignature>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(tables::BUNDLE_SIGNATURES).map_err(storage)?;
        let mut signatures = Vec::new();
        let range = table
            .range((hash.0.as_slice(), &[][..])..)
            .map_err(storage)?;
        for entry in range {
            let (key, value) = entry.map_err(storage)?;
            let (bundle, public_key) = key.value();
            if bundle != hash.0.as_slice() {
                break;
            }
            signatures.push(BundleSignature {
                public_key: public_key.to_vec(),
                signature: value.value().to_vec(),
            });
        }
        Ok(signatures)
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

    #[test]
    fn signatures_are_kept_per_bundle_and_publisher() {
        let store = Store::in_memory().unwrap();
        let (a, b) = (BundleHash([1; 32]), BundleHash([2; 32]));
        let signature = |key: u8, sig: u8| BundleSignature {
            public_key: vec![key; 4],
            signature: vec![sig; 8],
        };
        store
            .add_bundle_signatures(a, &[signature(1, 1), signature(2, 2)])
            .unwrap();
        store.add_bundle_signatures(b, &[signature(1, 3)]).unwrap();
        store.add_bundle_signatures(a, &[signature(1, 4)]).unwrap();
        assert_eq!(
            store.bundle_signatures(a).unwrap(),
            [signature(1, 4), signature(2, 2)]
        );
        assert_eq!(store.bundle_signatures(b).unwrap(), [signature(1, 3)]);
        assert!(
            store
                .bundle_signatures(BundleHash([3; 32]))
                .unwrap()
                .is_empty()
        );
    }
}
