//! Where a bundle's program runs: a fresh copy of the bundle's files for each execution, in a
//! private directory of its own, removed afterwards. A program cannot change what the next
//! execution runs.

use super::Bundle;
use std::path::{Path, PathBuf};

/// One execution's copy of a bundle's files, removed when dropped.
#[derive(Debug)]
pub struct Workspace {
    /// The directory.
    path: PathBuf,
}

impl Workspace {
    /// Unpacks `bundle` into a new directory under `cache`, a directory the caller has checked
    /// that only this user can change, up to the root (`ops::private_dir`): otherwise another
    /// user could swap the workspace between its unpacking and its use.
    pub fn create(cache: &Path, bundle: &Bundle) -> std::io::Result<Workspace> {
        use std::io::Write as _;
        use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
        let path = cache.join(format!(
            "run-{}-{:016x}",
            bundle.hash.short(),
            rand::random::<u64>()
        ));
        // Not recursive: the directory must be new, made by this call.
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        let workspace = Workspace { path };
        for entry in &bundle.entries {
            // The paths were checked when the bundle was opened: relative, no `..`.
            let file = workspace.path.join(&entry.path);
            if let Some(parent) = file.parent() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)?;
            }
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(if entry.executable { 0o700 } else { 0o600 })
                .open(&file)?
                .write_all(&entry.bytes)?;
        }
        Ok(workspace)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(path = %self.path.display(), %error, "could not remove an app workspace");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Entry, MANIFEST, archive, hash_of};

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
    fn each_execution_gets_a_fresh_copy_that_is_removed_afterwards() {
        use std::os::unix::fs::PermissionsExt as _;
        let cache = tempfile::tempdir().unwrap();
        let bundle = bundle();
        let first = Workspace::create(cache.path(), &bundle).unwrap();
        let program = first.path().join("bin/client");
        let mode = std::fs::metadata(&program).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // What one execution does to its files, the next never sees.
        std::fs::write(&program, b"#!/bin/sh\necho changed\n").unwrap();
        let second = Workspace::create(cache.path(), &bundle).unwrap();
        assert_eq!(
            std::fs::read(second.path().join("bin/client")).unwrap(),
            b"#!/bin/sh\n"
        );
        let (first_path, second_path) = (first.path().to_path_buf(), second.path().to_path_buf());
        drop((first, second));
        assert!(!first_path.exists() && !second_path.exists());
    }
}
