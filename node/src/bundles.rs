//! The node's app bundles: fetched from the SuperLink on a run's first instruction, checked
//! against the hash the instruction names, and kept as archives in `--apps-dir`
//! (`<hash>.bundle`), checked again whenever one is read back. Every execution of a bundle's
//! program gets a fresh copy of its files in a directory of its own, removed afterwards: a
//! program cannot change what the next execution runs, and files changed on disk never run
//! unless they hash to what was trusted.

use app_bundle::workspace::Workspace;
use app_bundle::{Bundle, MAX_BUNDLE_BYTES};
use ops::private_dir::create_private_dir;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wire::BundleHash;
use wire::bundle::{BundleSignature, MAX_SIGNATURES};
use wire::fleet::{BundleAnswer, NodeStream};
use wire::io::{read_value, write_value};

/// How long the SuperLink has to send a bundle.
const FETCH_TIMEOUT: Duration = Duration::from_secs(120);

/// Most bundles kept in memory; older ones are read back from disk (and checked) when needed.
const KEPT_IN_MEMORY: usize = 8;

/// A checked bundle and its publishers' signatures (as the SuperLink gave them: each is checked
/// against a trusted publisher's key when it matters).
#[derive(Debug)]
pub struct Fetched {
    /// The bundle.
    pub bundle: Arc<Bundle>,
    /// Its signatures.
    pub signatures: Vec<BundleSignature>,
}

/// Bundles in memory and on disk, by hash.
pub struct BundleCache {
    /// The cache directory (private to the node's user).
    dir: PathBuf,
    /// Checked bundles, by hash.
    known: Mutex<HashMap<BundleHash, Arc<Fetched>>>,
    /// One lock per bundle being fetched, so one run's instructions fetch its bundle once and
    /// a slow fetch holds up no other bundle.
    fetching: Mutex<HashMap<BundleHash, Arc<tokio::sync::Mutex<()>>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Inserts and removes only: a poisoned map is still consistent.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl BundleCache {
    /// A cache in `dir` (created on first use).
    pub fn new(dir: PathBuf) -> Self {
        BundleCache {
            dir,
            known: Mutex::default(),
            fetching: Mutex::default(),
        }
    }

    fn known(&self, hash: BundleHash) -> Option<Arc<Fetched>> {
        lock(&self.known).get(&hash).cloned()
    }

    fn remember(&self, fetched: Fetched) -> Arc<Fetched> {
        let fetched = Arc::new(fetched);
        let mut known = lock(&self.known);
        if known.len() >= KEPT_IN_MEMORY {
            known.clear();
        }
        known.insert(fetched.bundle.hash, fetched.clone());
        fetched
    }

    /// The checked bundle `hash`: from memory, from disk, or fetched over `connection`.
    pub async fn get(
        &self,
        connection: &quinn::Connection,
        hash: BundleHash,
    ) -> Result<Arc<Fetched>, String> {
        if let Some(fetched) = self.known(hash) {
            return Ok(fetched);
        }
        let fetching = lock(&self.fetching).entry(hash).or_default().clone();
        let _fetching = fetching.lock().await;
        let outcome = self.load_or_fetch(connection, hash).await;
        lock(&self.fetching).remove(&hash);
        outcome
    }

    /// Whether the checked bundle `hash` is in memory (no fetch needed to use it).
    pub fn is_known(&self, hash: BundleHash) -> bool {
        self.known(hash).is_some()
    }

    /// The signatures the SuperLink has of the bundle `hash`, without its bytes: a node that
    /// trusts publishers asks for these first and never downloads a bundle none of them signed.
    pub async fn signatures(
        &self,
        connection: &quinn::Connection,
        hash: BundleHash,
    ) -> Result<Vec<BundleSignature>, String> {
        fetch_signatures(connection, hash).await
    }

    /// The bundle `hash` with the signatures the SuperLink has now: a publisher may have signed
    /// it since the node kept it. Only the signatures travel.
    pub async fn refresh_signatures(
        &self,
        connection: &quinn::Connection,
        hash: BundleHash,
        kept: Arc<Fetched>,
    ) -> Result<Arc<Fetched>, String> {
        let signatures = fetch_signatures(connection, hash).await?;
        let dir = self.dir.clone();
        let to_keep = signatures.clone();
        tokio::task::spawn_blocking(move || {
            let encoded = wire::frame::encode(&to_keep).map_err(std::io::Error::other)?;
            write_whole(&dir, &signatures_path(&dir, hash), &encoded)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot keep the signatures of app bundle {hash}: {e}"))?;
        Ok(self.remember(Fetched {
            bundle: kept.bundle.clone(),
            signatures,
        }))
    }

    async fn load_or_fetch(
        &self,
        connection: &quinn::Connection,
        hash: BundleHash,
    ) -> Result<Arc<Fetched>, String> {
        if let Some(fetched) = self.known(hash) {
            return Ok(fetched);
        }
        let dir = self.dir.clone();
        let stored = tokio::task::spawn_blocking(move || read_stored(&dir, hash))
            .await
            .map_err(|e| e.to_string())??;
        if let Some(fetched) = stored {
            return Ok(self.remember(fetched));
        }
        let (bytes, signatures) = fetch(connection, hash).await?;
        let dir = self.dir.clone();
        let fetched = tokio::task::spawn_blocking(move || {
            let bundle =
                Bundle::open(&bytes, hash).map_err(|e| format!("app bundle {hash}: {e}"))?;
            store(&dir, hash, &bytes, &signatures)
                .map_err(|e| format!("cannot keep app bundle {hash} in {}: {e}", dir.display()))?;
            Ok::<_, String>(Fetched {
                bundle: Arc::new(bundle),
                signatures,
            })
        })
        .await
        .map_err(|e| e.to_string())??;
        tracing::info!(%hash, app = %fetched.bundle.manifest.name, "app bundle fetched");
        Ok(self.remember(fetched))
    }

    /// A fresh copy of `bundle`'s files for one execution of its program.
    pub async fn workspace(&self, fetched: Arc<Fetched>) -> Result<Workspace, String> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            create_private_dir(&dir)?;
            Workspace::create(&dir, &fetched.bundle)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot unpack the app bundle: {e}"))
    }
}

/// The archive file of bundle `hash` in `dir`.
fn archive_path(dir: &Path, hash: BundleHash) -> PathBuf {
    dir.join(format!("{hash}.bundle"))
}

/// The file of bundle `hash`'s signatures in `dir`.
fn signatures_path(dir: &Path, hash: BundleHash) -> PathBuf {
    dir.join(format!("{hash}.signatures"))
}

/// The signatures kept beside bundle `hash`: none when there is no such file or it is damaged
/// (signatures only ever add trust after they verify, so losing them is safe).
fn read_signatures(dir: &Path, hash: BundleHash) -> Vec<BundleSignature> {
    std::fs::read(signatures_path(dir, hash))
        .ok()
        .and_then(|bytes| wire::frame::decode(bytes.get(wire::frame::PREFIX_LEN..)?).ok())
        .unwrap_or_default()
}

/// The bundle `hash` kept in `dir`, checked; `None` when there is none, or when what is there
/// does not hash to `hash` (it is removed, to be fetched again).
fn read_stored(dir: &Path, hash: BundleHash) -> Result<Option<Fetched>, String> {
    let path = archive_path(dir, hash);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
    };
    match Bundle::open(&bytes, hash) {
        Ok(bundle) => Ok(Some(Fetched {
            bundle: Arc::new(bundle),
            signatures: read_signatures(dir, hash),
        })),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "a kept app bundle is damaged; fetching it again");
            let _ = std::fs::remove_file(&path);
            Ok(None)
        }
    }
}

/// Opens a stream of kind `request` and reads the SuperLink's answer; the stream's receiving
/// half stays open for what follows the answer. A refusal is an error quoting the SuperLink.
async fn ask(
    connection: &quinn::Connection,
    request: &NodeStream,
) -> Result<(BundleAnswer, quinn::RecvStream), String> {
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
    write_value(&mut send, request)
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
        answer => Ok((answer, recv)),
    }
}

/// Asks the SuperLink for the bundle `hash` and its signatures.
async fn fetch(
    connection: &quinn::Connection,
    hash: BundleHash,
) -> Result<(Vec<u8>, Vec<BundleSignature>), String> {
    let attempt = async {
        match ask(connection, &NodeStream::FetchBundle { hash }).await? {
            (BundleAnswer::Found { size, .. }, _) if size > MAX_BUNDLE_BYTES => Err(format!(
                "the SuperLink announced {size} bytes, over the limit of {MAX_BUNDLE_BYTES}"
            )),
            (
                BundleAnswer::Found {
                    size,
                    mut signatures,
                },
                mut recv,
            ) => {
                // More than any bundle carries: the first ones are as good as any.
                signatures.truncate(MAX_SIGNATURES);
                let mut bytes = vec![0u8; size as usize];
                recv.read_exact(&mut bytes)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok((bytes, signatures))
            }
            _ => Err("the SuperLink answered something else than the bundle".to_string()),
        }
    };
    tokio::time::timeout(FETCH_TIMEOUT, attempt)
        .await
        .map_err(|_| format!("not within {FETCH_TIMEOUT:?}"))?
        .map_err(|e| format!("cannot fetch app bundle {hash}: {e}"))
}

/// Asks the SuperLink for the signatures of the bundle `hash`.
async fn fetch_signatures(
    connection: &quinn::Connection,
    hash: BundleHash,
) -> Result<Vec<BundleSignature>, String> {
    let attempt = async {
        match ask(connection, &NodeStream::FetchSignatures { hash }).await? {
            (BundleAnswer::Signatures(mut signatures), _) => {
                signatures.truncate(MAX_SIGNATURES);
                Ok(signatures)
            }
            _ => Err("the SuperLink answered something else than signatures".to_string()),
        }
    };
    tokio::time::timeout(FETCH_TIMEOUT, attempt)
        .await
        .map_err(|_| format!("not within {FETCH_TIMEOUT:?}"))?
        .map_err(|e| format!("cannot fetch the signatures of app bundle {hash}: {e}"))
}

/// Keeps `bytes` as the archive of `hash` in `dir`, and its signatures beside it, each file
/// written whole or not at all.
fn store(
    dir: &Path,
    hash: BundleHash,
    bytes: &[u8],
    signatures: &[BundleSignature],
) -> std::io::Result<()> {
    create_private_dir(dir)?;
    let encoded = wire::frame::encode(&signatures.to_vec()).map_err(std::io::Error::other)?;
    write_whole(dir, &signatures_path(dir, hash), &encoded)?;
    write_whole(dir, &archive_path(dir, hash), bytes)
}

/// Writes `bytes` to `path` through a fresh file in `dir` renamed into place.
fn write_whole(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let partial = dir.join(format!(".partial.{:016x}", rand::random::<u64>()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&partial, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use app_bundle::{Entry, MANIFEST, archive, hash_of};

    fn packed() -> Vec<u8> {
        let manifest = b"[app]\nname = \"a\"\nversion = \"1\"\n[app.components]\nserverapp = \"vector-add\"\nclientapp = \"./bin/client\"\n";
        archive::pack(vec![
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
        .unwrap()
    }

    #[test]
    fn a_kept_bundle_is_read_back_only_while_it_hashes_to_its_name() {
        let cache = tempfile::tempdir().unwrap();
        let bytes = packed();
        let hash = hash_of(&bytes);
        assert!(read_stored(cache.path(), hash).unwrap().is_none());
        let signature = BundleSignature {
            public_key: vec![1; 4],
            signature: vec![2; 8],
        };
        store(cache.path(), hash, &bytes, std::slice::from_ref(&signature)).unwrap();
        let fetched = read_stored(cache.path(), hash).unwrap().unwrap();
        assert_eq!(fetched.bundle.hash, hash);
        assert_eq!(fetched.signatures, [signature]);
        // Changed on disk: not run, removed, fetched again.
        let mut tampered = bytes.clone();
        tampered[600] ^= 1;
        std::fs::write(archive_path(cache.path(), hash), &tampered).unwrap();
        assert!(read_stored(cache.path(), hash).unwrap().is_none());
        assert!(!archive_path(cache.path(), hash).exists());
    }
}
