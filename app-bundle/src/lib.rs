//! App bundles: an app directory packed into a deterministic archive whose SHA-256 is the app's
//! identity. `flwr run` packs one ([`archive::pack`]), the SuperLink stores it once per hash and
//! reads its manifest, and a node fetches it on its run's first instruction, checks the hash,
//! and unpacks it ([`Bundle::open`]) to start the app's programs inside it.
//!
//! - [`archive`]: the archive format (a tar of regular files, fixed metadata) and its checks.
//! - [`manifest`]: `flwr.toml` inside a bundle: name, version and the two components.
//! - [`workspace`]: a fresh, private copy of a bundle's files for one execution of a program.
//! - [`fab`]: Flower App Bundles, which travel the same way and are run by Flower's own
//!   `flwr-serverapp` and `flwr-clientapp`: read here, and written ([`fab::zip`],
//!   [`fab::pyproject_writer`]) byte for byte as Flower's `flwr build` writes them.

#![forbid(unsafe_code)]

pub mod archive;
pub mod fab;
pub mod manifest;
pub mod workspace;

pub use archive::Entry;
pub use fab::Fab;
pub use manifest::{Component, Manifest, Program, is_app_name};

use sha2::{Digest as _, Sha256};
use thiserror::Error;
use wire::BundleHash;

/// Largest bundle, in bytes (Flower's limit for a FAB).
pub const MAX_BUNDLE_BYTES: u64 = 10 * 1024 * 1024;

/// Most files in one bundle.
pub const MAX_FILES: usize = 4096;

/// Longest path inside a bundle, in bytes.
pub const MAX_PATH_BYTES: usize = 255;

/// Deepest directory nesting inside a bundle.
pub const MAX_DEPTH: usize = 16;

/// The manifest's file name, at the bundle's root.
pub const MANIFEST: &str = "flwr.toml";

/// Why a bundle cannot be packed, read or run.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BundleError {
    /// Over [`MAX_BUNDLE_BYTES`].
    #[error("the bundle is {size} bytes, over the limit of {MAX_BUNDLE_BYTES} bytes")]
    TooLarge {
        /// Its size.
        size: u64,
    },
    /// Its bytes do not have the hash they were announced with.
    #[error("the bundle's SHA-256 is {actual}, not {expected}")]
    WrongHash {
        /// The hash announced.
        expected: BundleHash,
        /// The hash of the bytes.
        actual: BundleHash,
    },
    /// The archive is damaged or not an archive.
    #[error("the bundle is not a valid archive: {0}")]
    Malformed(String),
    /// A path that is absolute, leaves the bundle, or is otherwise unusable.
    #[error("the bundle holds an unsafe path {path:?}: {why}")]
    UnsafePath {
        /// The path, as the archive spells it (escaped).
        path: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Something other than a regular file (a link, a device, a directory entry).
    #[error("the bundle holds {path:?}, which is not a regular file")]
    NotAFile {
        /// The path.
        path: String,
    },
    /// The manifest is missing or wrong.
    #[error("{MANIFEST}: {0}")]
    Manifest(String),
}

/// The SHA-256 of `bytes`.
pub fn hash_of(bytes: &[u8]) -> BundleHash {
    BundleHash(Sha256::digest(bytes).into())
}

/// A checked bundle: its hash, its manifest and its files.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The SHA-256 of the archive.
    pub hash: BundleHash,
    /// Its `flwr.toml`.
    pub manifest: Manifest,
    /// Its files, sorted by path (none for a FAB, which Flower's programs unpack themselves).
    pub entries: Vec<Entry>,
    /// What a FAB says about itself; `None` for a bundle of this project's form.
    pub fab: Option<Fab>,
}

impl Bundle {
    /// Reads and checks the archive `bytes`, which must have the hash `expected`: its size, its
    /// paths, its manifest, and that every program it names inside itself is there and
    /// executable. A ZIP archive is a FAB, checked as Flower checks one ([`fab::open`]).
    pub fn open(bytes: &[u8], expected: BundleHash) -> Result<Bundle, BundleError> {
        let actual = hash_of(bytes);
        if actual != expected {
            return Err(BundleError::WrongHash { expected, actual });
        }
        if fab::is_fab(bytes) {
            let (manifest, info) = fab::open(bytes)?;
            return Ok(Bundle {
                hash: actual,
                manifest,
                entries: Vec::new(),
                fab: Some(info),
            });
        }
        let entries = archive::unpack(bytes)?;
        let manifest = Manifest::from_entries(&entries)?;
        Ok(Bundle {
            hash: actual,
            manifest,
            entries,
            fab: None,
        })
    }
}
