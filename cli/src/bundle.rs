//! Packing an app directory into a bundle for `flwr run`: `flwr.toml`, every file a component
//! names (a program inside the app, or an argument that is one of its files), and the files
//! matching `[app.bundle] include` (gitignore patterns), minus what the directory's `.gitignore`
//! excludes. Nothing else: the certificates, keys and datasets that often sit beside an app
//! never travel. A file that holds a private key is refused outright.

use crate::CliError;
use crate::fab::select::{Patterns, collect};
use app_bundle::{Bundle, Component, Entry, MANIFEST, Manifest, archive, hash_of};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use wire::BundleHash;
use wire::bundle::{BundleSignature, MAX_SIGNATURES, signing_message};

/// A packed bundle, checked as the SuperLink will check it.
#[derive(Debug)]
pub struct Packed {
    /// The archive.
    pub bytes: Vec<u8>,
    /// Its SHA-256.
    pub hash: BundleHash,
    /// Its manifest.
    pub manifest: Manifest,
    /// The paths packed, sorted.
    pub paths: Vec<String>,
}

fn config_error(dir: &Path, why: impl std::fmt::Display) -> CliError {
    CliError::Config(format!("{}: {why}", dir.join(MANIFEST).display()))
}

/// `[app.bundle] include` of the manifest's text.
fn include_patterns(text: &str) -> Result<Vec<String>, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| e.message().to_string())?;
    let Some(include) = table
        .get("app")
        .and_then(|app| app.get("bundle"))
        .and_then(|bundle| bundle.get("include"))
    else {
        return Ok(Vec::new());
    };
    include
        .as_array()
        .and_then(|items| {
            items
                .iter()
                .map(|item| item.as_str().map(String::from))
                .collect()
        })
        .ok_or_else(|| "[app.bundle] include must be an array of strings".to_string())
}

/// The files a component names: a program inside the app, and arguments that are its files.
fn named_files(component: &Component) -> Vec<String> {
    let Component::Program(program) = component else {
        return Vec::new();
    };
    program
        .bundle_path()
        .map(String::from)
        .into_iter()
        .chain(
            program
                .args
                .iter()
                .map(|arg| arg.trim_start_matches("./").to_string()),
        )
        .collect()
}

/// Whether `bytes` hold a private key (PEM or OpenSSH).
fn holds_private_key(bytes: &[u8]) -> bool {
    bytes
        .windows(b"PRIVATE KEY-----".len())
        .any(|window| window == b"PRIVATE KEY-----")
}

/// Packs the app directory `dir`.
pub fn pack(dir: &Path) -> Result<Packed, CliError> {
    let manifest_path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&manifest_path)
        .map_err(|e| CliError::Config(format!("cannot read {}: {e}", manifest_path.display())))?;
    let manifest = Manifest::parse(&text).map_err(|e| config_error(dir, e))?;
    let include = include_patterns(&text).map_err(|e| config_error(dir, e))?;
    let include = Patterns::new(&include).map_err(|e| config_error(dir, e))?;
    let gitignore = std::fs::read_to_string(dir.join(".gitignore")).unwrap_or_default();
    let ignored: Vec<&str> = gitignore
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    let ignored =
        Patterns::new(&ignored).map_err(|e| CliError::Config(format!(".gitignore: {e}")))?;
    let files = collect(dir).map_err(CliError::Config)?;
    let named: BTreeSet<String> = named_files(&manifest.serverapp)
        .into_iter()
        .chain(named_files(&manifest.clientapp))
        .collect();
    let mut entries = Vec::new();
    for (path, file) in &files {
        let wanted = path == MANIFEST
            || named.contains(path)
            || (include.matches(path) && !ignored.matches(path));
        if !wanted {
            continue;
        }
        let bytes = std::fs::read(file)
            .map_err(|e| CliError::Config(format!("cannot read {}: {e}", file.display())))?;
        if holds_private_key(&bytes) {
            return Err(CliError::Config(format!(
                "{} holds a private key: it is not packed into an app bundle, which the \
                 SuperLink and every node receive (exclude it from [app.bundle] include)",
                file.display()
            )));
        }
        let executable = {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::metadata(file)
                .map(|meta| meta.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        };
        entries.push(Entry {
            path: path.clone(),
            executable,
            bytes,
        });
    }
    let paths: Vec<String> = entries.iter().map(|entry| entry.path.clone()).collect();
    let bytes = archive::pack(entries).map_err(|e| config_error(dir, e))?;
    let hash = hash_of(&bytes);
    // The SuperLink's own checks, here first: a bundle that cannot run never leaves.
    let bundle = Bundle::open(&bytes, hash).map_err(|e| config_error(dir, e))?;
    Ok(Packed {
        bytes,
        hash,
        manifest: bundle.manifest,
        paths,
    })
}

/// Where `flwr app sign` keeps an app's signatures: outside what any bundle packs.
pub fn signatures_path(dir: &Path) -> PathBuf {
    dir.join(".flwr").join("signatures.json")
}

/// One stored signature: the bundle's hash, the publisher's OpenSSH public key line, and the
/// DER signature in hex.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct StoredSignature {
    bundle: String,
    publisher: String,
    signature: String,
}

fn read_stored(dir: &Path) -> Result<Vec<StoredSignature>, CliError> {
    let path = signatures_path(dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| CliError::Config(format!("{}: {e}", path.display()))),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(error) => Err(CliError::Io(format!(
            "cannot read {}: {error}",
            path.display()
        ))),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// The signatures `flwr app sign` stored for the bundle `hash` of the app in `dir`.
pub fn signatures_for(dir: &Path, hash: BundleHash) -> Result<Vec<BundleSignature>, CliError> {
    let path = signatures_path(dir);
    let mut signatures = Vec::new();
    for stored in read_stored(dir)? {
        if BundleHash::from_hex(&stored.bundle) != Some(hash) {
            continue;
        }
        let malformed = |why: String| CliError::Config(format!("{}: {why}", path.display()));
        let publisher = certs::openssh::parse_public_line(&stored.publisher).map_err(&malformed)?;
        let signature =
            unhex(&stored.signature).ok_or_else(|| malformed("a signature is not hex".into()))?;
        if !publisher.key.verify(&signing_message(hash), &signature) {
            return Err(malformed(format!(
                "the signature by {} is not a signature of this bundle: sign it again",
                publisher.key.fingerprint()
            )));
        }
        signatures.push(BundleSignature {
            public_key: publisher.key.to_spki_der(),
            signature,
        });
    }
    if signatures.len() > MAX_SIGNATURES {
        return Err(CliError::Config(format!(
            "{}: {} signatures of this bundle, at most {MAX_SIGNATURES}",
            path.display(),
            signatures.len()
        )));
    }
    Ok(signatures)
}

/// Signs the bundle of the app in `dir` with `key` and keeps the signature in the app's
/// [`signatures_path`], replacing this publisher's earlier signature of the same bundle.
pub fn sign(dir: &Path, key: &certs::IdentityKey, comment: &str) -> Result<Packed, CliError> {
    let packed = pack(dir)?;
    let public = key.public_key();
    let entry = StoredSignature {
        bundle: packed.hash.to_string(),
        publisher: certs::openssh::format_public_line(&public, comment),
        signature: hex(&key.sign(&signing_message(packed.hash))),
    };
    let mut stored = read_stored(dir)?;
    stored.retain(|old| {
        old.bundle != entry.bundle
            || certs::openssh::parse_public_line(&old.publisher).map(|line| line.key) != Ok(public)
    });
    stored.push(entry);
    let path = signatures_path(dir);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| CliError::Io(format!("cannot create {}: {e}", parent.display())))?;
    }
    let text = serde_json::to_string_pretty(&stored)
        .map_err(|e| CliError::Io(format!("cannot encode the signatures: {e}")))?;
    std::fs::write(&path, text + "\n")
        .map_err(|e| CliError::Io(format!("cannot write {}: {e}", path.display())))?;
    Ok(packed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, path: &str, text: &str, executable: bool) {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        let mode = if executable { 0o755 } else { 0o644 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    const MANIFEST_TEXT: &str = "[app]\nname = \"my-app\"\nversion = \"1.0.0\"\n\n[app.components]\nserverapp = \"vector-add\"\nclientapp = \"python3 client.py\"\n\n[app.bundle]\ninclude = [\"lib/**\"]\n";

    #[test]
    fn only_the_manifest_named_and_included_files_are_packed_and_the_hash_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), MANIFEST, MANIFEST_TEXT, false);
        write(dir.path(), "client.py", "print(1)\n", false);
        write(dir.path(), "lib/util.py", "x = 1\n", false);
        write(dir.path(), "lib/cache.bin", "junk", false);
        write(dir.path(), ".gitignore", "*.bin\n", false);
        write(dir.path(), "datasets/part_1/train.bin", "data", false);
        write(dir.path(), "certificates/ca.crt", "cert", false);
        let packed = pack(dir.path()).unwrap();
        assert_eq!(packed.paths, ["client.py", MANIFEST, "lib/util.py"]);
        assert_eq!(packed.manifest.name, "my-app");
        assert_eq!(pack(dir.path()).unwrap().hash, packed.hash);
        write(dir.path(), "client.py", "print(2)\n", false);
        assert_ne!(pack(dir.path()).unwrap().hash, packed.hash);
    }

    #[test]
    fn a_signature_is_kept_outside_the_bundle_and_found_for_its_hash_only() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), MANIFEST, MANIFEST_TEXT, false);
        write(dir.path(), "client.py", "print(1)\n", false);
        let key = certs::IdentityKey::generate();
        let packed = sign(dir.path(), &key, "alice").unwrap();
        // Signing again replaces, and the signature file never changes the bundle.
        assert_eq!(sign(dir.path(), &key, "alice").unwrap().hash, packed.hash);
        let signatures = signatures_for(dir.path(), packed.hash).unwrap();
        assert_eq!(signatures.len(), 1);
        assert_eq!(signatures[0].public_key, key.public_key().to_spki_der());
        assert!(
            key.public_key()
                .verify(&signing_message(packed.hash), &signatures[0].signature)
        );
        assert!(
            signatures_for(dir.path(), BundleHash([0; 32]))
                .unwrap()
                .is_empty()
        );
        write(dir.path(), "client.py", "print(2)\n", false);
        let changed = pack(dir.path()).unwrap();
        assert!(signatures_for(dir.path(), changed.hash).unwrap().is_empty());
    }

    #[test]
    fn a_private_key_is_never_packed() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), MANIFEST, MANIFEST_TEXT, false);
        write(dir.path(), "client.py", "print(1)\n", false);
        write(
            dir.path(),
            "lib/key",
            "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n",
            false,
        );
        let error = pack(dir.path()).unwrap_err().to_string();
        assert!(error.contains("private key"), "{error}");
    }

    #[test]
    fn a_program_that_is_missing_or_not_executable_is_refused_before_anything_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let text = MANIFEST_TEXT.replace("python3 client.py", "./client");
        write(dir.path(), MANIFEST, &text, false);
        let error = pack(dir.path()).unwrap_err().to_string();
        assert!(error.contains("not in the bundle"), "{error}");
        write(dir.path(), "client", "#!/bin/sh\n", false);
        let error = pack(dir.path()).unwrap_err().to_string();
        assert!(error.contains("chmod +x"), "{error}");
        write(dir.path(), "client", "#!/bin/sh\n", true);
        assert!(pack(dir.path()).is_ok());
    }
}
