//! The bundle archive: a tar (GNU format, so long paths need no special casing) of regular files
//! only, sorted by path, each with mode 0644 or 0755 and every other field fixed (mtime 0, owner
//! 0, no user or group names), so the same files always give the same bytes and the same hash.
//!
//! Reading trusts nothing: sizes, counts and paths are bounded, a path must be relative and stay
//! inside the bundle, and only regular files are accepted.

use super::{BundleError, MAX_BUNDLE_BYTES, MAX_DEPTH, MAX_FILES, MAX_PATH_BYTES};
use std::collections::BTreeSet;
use std::io::Read as _;
use std::path::Component;

/// One file of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative, `/`-separated path.
    pub path: String,
    /// Whether it is executable (mode 0755 rather than 0644).
    pub executable: bool,
    /// Contents.
    pub bytes: Vec<u8>,
}

/// Checks a relative `/`-separated path: normal components only, bounded length and depth.
pub fn check_path(path: &str) -> Result<(), BundleError> {
    let unsafe_path = |why| {
        Err(BundleError::UnsafePath {
            path: wire::text::sanitize(path, 300),
            why,
        })
    };
    if path.is_empty() {
        return unsafe_path("it is empty");
    }
    if path.len() > MAX_PATH_BYTES {
        return unsafe_path("it is too long");
    }
    if path.starts_with('/') {
        return unsafe_path("it is absolute");
    }
    if path.chars().any(|c| c.is_control() || c == '\\') {
        return unsafe_path("it holds a control character or a backslash");
    }
    let parts: Vec<&str> = path.split('/').collect();
    if parts.len() > MAX_DEPTH + 1 {
        return unsafe_path("it is nested too deep");
    }
    for part in parts {
        match part {
            "" => return unsafe_path("it has an empty component"),
            "." | ".." => return unsafe_path("it leaves its directory"),
            _ => {}
        }
    }
    Ok(())
}

/// Packs `entries` into an archive (sorted by path; duplicates and unsafe paths refused).
pub fn pack(mut entries: Vec<Entry>) -> Result<Vec<u8>, BundleError> {
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    if entries.len() > MAX_FILES {
        return Err(BundleError::Malformed(format!(
            "{} files, over the limit of {MAX_FILES}",
            entries.len()
        )));
    }
    let mut builder = tar::Builder::new(Vec::new());
    let mut previous: Option<&str> = None;
    for entry in &entries {
        check_path(&entry.path)?;
        if previous == Some(entry.path.as_str()) {
            return Err(BundleError::Malformed(format!(
                "{:?} is in it twice",
                entry.path
            )));
        }
        previous = Some(&entry.path);
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(if entry.executable { 0o755 } else { 0o644 });
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_size(entry.bytes.len() as u64);
        builder
            .append_data(&mut header, &entry.path, entry.bytes.as_slice())
            .map_err(|e| BundleError::Malformed(format!("{}: {e}", entry.path)))?;
    }
    let bytes = builder
        .into_inner()
        .map_err(|e| BundleError::Malformed(e.to_string()))?;
    if bytes.len() as u64 > MAX_BUNDLE_BYTES {
        return Err(BundleError::TooLarge {
            size: bytes.len() as u64,
        });
    }
    Ok(bytes)
}

/// Reads and checks an archive; returns its files sorted by path.
pub fn unpack(bytes: &[u8]) -> Result<Vec<Entry>, BundleError> {
    if bytes.len() as u64 > MAX_BUNDLE_BYTES {
        return Err(BundleError::TooLarge {
            size: bytes.len() as u64,
        });
    }
    let malformed = |e: std::io::Error| BundleError::Malformed(e.to_string());
    let mut archive = tar::Archive::new(bytes);
    let mut entries = Vec::new();
    let mut seen = BTreeSet::new();
    for entry in archive.entries().map_err(malformed)? {
        let mut entry = entry.map_err(malformed)?;
        let raw_path = entry.path_bytes().into_owned();
        let path = String::from_utf8(raw_path).map_err(|e| BundleError::UnsafePath {
            path: String::from_utf8_lossy(e.as_bytes()).into_owned(),
            why: "it is not UTF-8",
        })?;
        check_path(&path)?;
        // The tar crate's own reading of the path must agree: no component it would treat
        // differently (a prefix, a root) slips past the check above.
        let parsed = entry.path().map_err(malformed)?;
        if !parsed
            .components()
            .all(|part| matches!(part, Component::Normal(_)))
        {
            return Err(BundleError::UnsafePath {
                path,
                why: "it leaves its directory",
            });
        }
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(BundleError::NotAFile { path });
        }
        if !seen.insert(path.clone()) {
            return Err(BundleError::Malformed(format!("{path:?} is in it twice")));
        }
        if seen.len() > MAX_FILES {
            return Err(BundleError::Malformed(format!(
                "over the limit of {MAX_FILES} files"
            )));
        }
        let mode = entry.header().mode().map_err(malformed)?;
        // The size was checked against the archive's own length by the reader; bound it anyway.
        let size = entry.size().min(MAX_BUNDLE_BYTES);
        let mut contents = Vec::with_capacity(size as usize);
        entry
            .by_ref()
            .take(MAX_BUNDLE_BYTES)
            .read_to_end(&mut contents)
            .map_err(malformed)?;
        entries.push(Entry {
            path,
            executable: mode & 0o111 != 0,
            bytes: contents,
        });
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, executable: bool, bytes: &[u8]) -> Entry {
        Entry {
            path: path.into(),
            executable,
            bytes: bytes.to_vec(),
        }
    }

    #[test]
    fn the_same_files_in_any_order_pack_to_the_same_bytes_and_unpack_unchanged() {
        let long = format!("{}/deep.py", "d".repeat(150));
        let files = vec![
            entry("flwr.toml", false, b"[app]\n"),
            entry("bin/client", true, b"#!/bin/sh\n"),
            entry(&long, false, b"print(1)\n"),
        ];
        let mut reversed = files.clone();
        reversed.reverse();
        let packed = pack(files.clone()).unwrap();
        assert_eq!(packed, pack(reversed).unwrap());
        let mut sorted = files;
        sorted.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(unpack(&packed).unwrap(), sorted);
    }

    #[test]
    fn paths_that_leave_the_bundle_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a\\b",
            "a\nb",
        ] {
            assert!(
                matches!(check_path(bad), Err(BundleError::UnsafePath { .. })),
                "{bad:?}"
            );
        }
        let deep = vec!["d"; MAX_DEPTH + 2].join("/");
        assert!(check_path(&deep).is_err());
        assert!(check_path("a/b/c.py").is_ok());
        assert!(pack(vec![entry("../x", false, b"")]).is_err());
    }

    /// A tar written by hand (as an attacker would), with a path `pack` would never write.
    fn raw_tar(path: &[u8], kind: tar::EntryType) -> Vec<u8> {
        let mut header = tar::Header::new_gnu();
        header.as_old_mut().name[..path.len()].copy_from_slice(path);
        header.set_entry_type(kind);
        header.set_mode(0o644);
        header.set_size(1);
        header.set_cksum();
        let mut bytes = header.as_bytes().to_vec();
        bytes.extend_from_slice(b"x");
        bytes.resize(bytes.len() + 511, 0);
        bytes.resize(bytes.len() + 1024, 0);
        bytes
    }

    #[test]
    fn hostile_archives_get_typed_errors() {
        assert!(matches!(
            unpack(&raw_tar(b"../escape", tar::EntryType::Regular)),
            Err(BundleError::UnsafePath { .. })
        ));
        assert!(matches!(
            unpack(&raw_tar(b"/etc/cron.d/x", tar::EntryType::Regular)),
            Err(BundleError::UnsafePath { .. })
        ));
        assert!(matches!(
            unpack(&raw_tar(b"link", tar::EntryType::Symlink)),
            Err(BundleError::NotAFile { .. })
        ));
        assert!(matches!(
            unpack(&raw_tar(b"\xff\xfe", tar::EntryType::Regular)),
            Err(BundleError::UnsafePath { .. })
        ));
        let good = pack(vec![entry("a", false, b"hello")]).unwrap();
        let whole = unpack(&good).unwrap();
        for cut in [1, 100, 512, 514] {
            assert_ne!(unpack(&good[..cut]).ok(), Some(whole.clone()), "cut {cut}");
        }
        assert!(matches!(
            unpack(&vec![0u8; (MAX_BUNDLE_BYTES + 1) as usize]),
            Err(BundleError::TooLarge { .. })
        ));
    }

    #[test]
    fn an_archive_over_the_limit_is_refused_when_packed() {
        let big = vec![0u8; MAX_BUNDLE_BYTES as usize];
        assert!(matches!(
            pack(vec![entry("big", false, &big)]),
            Err(BundleError::TooLarge { .. })
        ));
    }
}
