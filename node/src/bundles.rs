//! The node's cache of app bundles: fetched from the SuperLink on a run's first instruction,
//! checked against the hash the instruction names, and unpacked into a directory of their own
//! named by that hash. A directory appears under its final name only once complete (it is
//! renamed into place), so a crash never leaves a half-written bundle that looks whole, and
//! nodes on one host may share the cache.

use model::bundle::{Bundle, MANIFEST, MAX_BUNDLE_BYTES, Manifest};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wire::BundleHash;
use wire::fleet::{BundleAnswer, NodeStream};
use wire::io::{read_value, write_value};

/// How long the SuperLink has to send a bundle.
const FETCH_TIMEOUT: Duration = Duration::from_secs(120);

/// An unpacked bundle.
#[derive(Debug)]
pub struct Unpacked {
    /// Its directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
}

/// Bundles on disk, by hash.
pub struct BundleCache {
    /// The cache directory (private to the node's user).
    dir: PathBuf,
    /// Bundles read or fetched since the node started.
    known: Mutex<HashMap<BundleHash, Arc<Unpacked>>>,
    /// Held while fetching, so two instructions of one run fetch its bundle once.
    fetching: tokio::sync::Mutex<()>,
}

impl BundleCache {
    /// A cache in `dir` (created on first use).
    pub fn new(dir: PathBuf) -> Self {
        BundleCache {
            dir,
            known: Mutex::default(),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn known(&self, hash: BundleHash) -> Option<Arc<Unpacked>> {
        self.known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&hash)
            .cloned()
    }

    fn remember(&self, hash: BundleHash, unpacked: Unpacked) -> Arc<Unpacked> {
        let unpacked = Arc::new(unpacked);
        self.known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(hash, unpacked.clone());
        unpacked
    }

    /// The bundle `hash`: from memory, from disk, or fetched over `connection`.
    pub async fn get(
        &self,
        connection: &quinn::Connection,
        hash: BundleHash,
    ) -> Result<Arc<Unpacked>, String> {
        if let Some(unpacked) = self.known(hash) {
            return Ok(unpacked);
        }
        let _fetching = self.fetching.lock().await;
        if let Some(unpacked) = self.known(hash) {
            return Ok(unpacked);
        }
        let dir = self.dir.join(hash.to_string());
        if let Some(manifest) = read_manifest(&dir)? {
            return Ok(self.remember(hash, Unpacked { dir, manifest }));
        }
        let bytes = fetch(connection, hash).await?;
        let bundle = Bundle::open(&bytes, hash).map_err(|e| format!("app bundle {hash}: {e}"))?;
        let dir = unpack(&self.dir, &bundle).map_err(|e| {
            format!(
                "cannot unpack app bundle {hash} into {}: {e}",
                self.dir.display()
            )
        })?;
        tracing::info!(%hash, app = %bundle.manifest.name, dir = %dir.display(), "app bundle fetched");
        Ok(self.remember(
            hash,
            Unpacked {
                dir,
                manifest: bundle.manifest,
            },
        ))
    }
}

/// The manifest of a bundle unpacked earlier into `dir`; `None` when there is none.
fn read_manifest(dir: &Path) -> Result<Option<Manifest>, String> {
    let path = dir.join(MANIFEST);
    match std::fs::read_to_string(&path) {
        Ok(text) => Manifest::parse(&text)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(format!("cannot read {}: {error}", path.display())),
    }
}

/// Asks the SuperLink for the bundle `hash`.
async fn fetch(connection: &quinn::Connection, hash: BundleHash) -> Result<Vec<u8>, String> {
    let attempt = async {
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
        write_value(&mut send, &NodeStream::FetchBundle { hash })
            .await
            .map_err(|e| e.to_string())?;
        let _ = send.finish();
        match read_value::<BundleAnswer, _>(&mut recv, 64 * 1024)
            .await
            .map_err(|e| e.to_string())?
        {
            BundleAnswer::Refused(reason) => Err(format!(
                "the SuperLink refused: {}",
                wire::text::sanitize(&reason, 512)
            )),
            BundleAnswer::Found { size } if size > MAX_BUNDLE_BYTES => Err(format!(
                "the SuperLink announced {size} bytes, over the limit of {MAX_BUNDLE_BYTES}"
            )),
            BundleAnswer::Found { size } => {
                let mut bytes = vec![0u8; size as usize];
                recv.read_exact(&mut bytes)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(bytes)
            }
        }
    };
    tokio::time::timeout(FETCH_TIMEOUT, attempt)
        .await
        .map_err(|_| format!("not within {FETCH_TIMEOUT:?}"))?
        .map_err(|e| format!("cannot fetch app bundle {hash}: {e}"))
}

/// Creates `dir` and its missing parents, private to this user.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes `bundle`'s files into a fresh directory under `cache` and renames it into place;
/// returns its final path.
fn unpack(cache: &Path, bundle: &Bundle) -> std::io::Result<PathBuf> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    create_private_dir(cache)?;
    let target = cache.join(bundle.hash.to_string());
    let partial = cache.join(format!(
        ".partial-{}-{:016x}",
        bundle.hash,
        rand::random::<u64>()
    ));
    let written = (|| {
        create_private_dir(&partial)?;
        for entry in &bundle.entries {
            // The paths were checked when the bundle was opened: relative, no `..`.
            let path = partial.join(&entry.path);
            if let Some(parent) = path.parent() {
                create_private_dir(parent)?;
            }
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(if entry.executable { 0o700 } else { 0o600 })
                .open(&path)?;
            file.write_all(&entry.bytes)?;
            file.sync_all()?;
        }
        std::fs::rename(&partial, &target)
    })();
    match written {
        Ok(()) => Ok(target),
        // Another node sharing the cache unpacked it first.
        Err(_) if target.join(MANIFEST).is_file() => {
            let _ = std::fs::remove_dir_all(&partial);
            Ok(target)
        }
        Err(error) => {
            let _ = std::fs::remove_dir_all(&partial);
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::bundle::{Entry, archive, hash_of};

    fn bundle() -> Bundle {
        let manifest = b"[app]\nname = \"a\"\nversion = \"1\"\n[app.components]\nserverapp = \"vector-add\"\nclientapp = \"./bin/client\"\n";
        let bytes = archive::pack(vec![
            Entry {
                path: MANIFEST.into(),
                executable: false,
                bytes: manifest.to_vec(),
            },
            Entry {
                path: "bin/client".into(),
                executable: true,
                bytes: b"#!/bin/sh\n".to_vec(),
            },
        ])
        .unwrap();
        Bundle::open(&bytes, hash_of(&bytes)).unwrap()
    }

    #[test]
    fn an_unpacked_bundle_keeps_its_files_and_modes_and_is_found_again() {
        use std::os::unix::fs::PermissionsExt as _;
        let cache = tempfile::tempdir().unwrap();
        let bundle = bundle();
        let dir = unpack(cache.path(), &bundle).unwrap();
        assert_eq!(dir, cache.path().join(bundle.hash.to_string()));
        let mode = std::fs::metadata(dir.join("bin/client"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(read_manifest(&dir).unwrap(), Some(bundle.manifest.clone()));
        // A second unpack (another node sharing the cache) finds it there and leaves no debris.
        assert_eq!(unpack(cache.path(), &bundle).unwrap(), dir);
        let names: Vec<_> = std::fs::read_dir(cache.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
        assert_eq!(read_manifest(&cache.path().join("missing")).unwrap(), None);
    }
}
