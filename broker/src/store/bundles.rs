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
    /// earlier one, unless the bundle would then carry more than `max` publishers' signatures:
    /// `Ok(Err(n))` then, with the `n` it would carry, and nothing is kept. The cap is checked
    /// and the signatures written in one transaction, so concurrent offers cannot pass it
    /// together.
    pub fn add_bundle_signatures(
        &self,
        hash: BundleHash,
        signatures: &[BundleSignature],
        max: usize,
    ) -> Result<Result<(), usize>, StoreError> {
        if signatures.is_empty() {
            return Ok(Ok(()));
        }
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut table = txn.open_table(tables::BUNDLE_SIGNATURES).map_err(storage)?;
            let mut publishers = std::collections::BTreeSet::new();
            for entry in table
                .range((hash.0.as_slice(), &[][..])..)
                .map_err(storage)?
            {
                let (key, _) = entry.map_err(storage)?;
                let (bundle, public_key) = key.value();
                if bundle != hash.0.as_slice() {
                    break;
                }
                publishers.insert(public_key.to_vec());
            }
            publishers.extend(signatures.iter().map(|s| s.public_key.clone()));
            if publishers.len() > max {
                // Dropped without a commit: nothing of this offer is kept.
                return Ok(Err(publishers.len()));
            }
            for signature in signatures {
                table
                    .insert(
                        (hash.0.as_slice(), signature.public_key.as_slice()),
                        signature.signature.as_slice(),
                    )
                    .map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)?;
        Ok(Ok(()))
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
            .add_bundle_signatures(a, &[signature(1, 1), signature(2, 2)], 16)
            .unwrap()
            .unwrap();
        store
            .add_bundle_signatures(b, &[signature(1, 3)], 16)
            .unwrap()
            .unwrap();
        store
            .add_bundle_signatures(a, &[signature(1, 4)], 16)
            .unwrap()
            .unwrap();
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

    #[test]
    fn concurrent_offers_cannot_pass_the_cap_together() {
        let store = std::sync::Arc::new(Store::in_memory().unwrap());
        let hash = BundleHash([5; 32]);
        // Eight offers at once, each of sixteen publishers of its own, under a cap of sixteen.
        let offers: Vec<_> = (0..8u8)
            .map(|offer| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let signatures: Vec<_> = (0..16u8)
                        .map(|key| BundleSignature {
                            public_key: vec![offer, key],
                            signature: vec![0; 8],
                        })
                        .collect();
                    store.add_bundle_signatures(hash, &signatures, 16).unwrap()
                })
            })
            .collect();
        let kept = offers
            .into_iter()
            .map(|offer| offer.join().unwrap())
            .filter(Result::is_ok)
            .count();
        assert_eq!(kept, 1);
        assert_eq!(store.bundle_signatures(hash).unwrap().len(), 16);
        // A publisher already there may sign again; a new one may not.
        let again = BundleSignature {
            public_key: store.bundle_signatures(hash).unwrap()[0].public_key.clone(),
            signature: vec![1; 8],
        };
        assert_eq!(
            store.add_bundle_signatures(hash, &[again], 16).unwrap(),
            Ok(())
        );
        let stranger = BundleSignature {
            public_key: vec![99],
            signature: vec![0; 8],
        };
        assert_eq!(
            store.add_bundle_signatures(hash, &[stranger], 16).unwrap(),
            Err(17)
        );
    }
}
