//! Flower App Bundles (FABs) as the SuperLink and the nodes receive them: a ZIP archive with a
//! `pyproject.toml` naming the app and its two Python components, and `.info/CONTENT` listing
//! the SHA-256 of every other file. Flower's own `flwr-serverapp` and `flwr-clientapp` install
//! and run a FAB; the daemons only check it, as Flower checks it when installing, and read what
//! they need to describe the run: the app's id, version and components.
//!
//! The reader accepts what ZIP writers produce for a FAB (stored or deflated entries, with or
//! without data descriptors) and refuses everything else with a typed error: ZIP64, encryption,
//! multi-disk archives, entries whose sizes disagree, and paths that would leave the app's
//! directory. Sizes are bounded by the archive's (at most [`super::MAX_BUNDLE_BYTES`]) before
//! anything is inflated.

pub mod pyproject_writer;
pub mod zip;

use super::archive::check_path;
use super::{BundleError, Component, MAX_BUNDLE_BYTES, MAX_FILES, Manifest, is_app_name};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;

/// The first bytes of a ZIP archive (a local file header).
pub const ZIP_MAGIC: &[u8] = b"PK\x03\x04";

/// The content list Flower writes and checks.
pub const CONTENT: &str = ".info/CONTENT";

/// The app's configuration file.
pub const PYPROJECT: &str = "pyproject.toml";

/// Most bytes all of a FAB's files may hold once inflated (a deflated FAB cannot hide more).
const MAX_INFLATED_BYTES: u64 = 4 * MAX_BUNDLE_BYTES;

/// A checked FAB: what it says about itself beyond its components, and the archive itself,
/// which Flower's programs install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fab {
    /// `<[tool.flwr.app] publisher>/<[project] name>`, Flower's `fab_id`.
    pub fab_id: String,
    /// `[project] version`.
    pub version: String,
    /// The archive.
    pub archive: Vec<u8>,
}

/// Longest name of a Flower app, in characters (Flower's limit).
pub const MAX_FAB_NAME_LEN: usize = 32;

/// Whether `name` is a valid Flower app name, as Flower's `flwr build` checks it: a letter, then
/// letters, digits and hyphens, at most [`MAX_FAB_NAME_LEN`] characters, where a letter is any
/// Unicode letter (Python's `isalpha`).
///
/// Not the rule of a native bundle's name ([`crate::manifest::is_app_name`]), and rightly so:
/// a FAB's name is Flower's to define and is refused where Flower refuses it, while a native
/// bundle's name becomes a directory name on every node, so it is held to ASCII (with `_`, which
/// Rust and Python package names use).
pub fn is_fab_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(char::is_alphabetic)
        && chars.all(|c| c.is_alphanumeric() || c == '-')
        && name.chars().count() <= MAX_FAB_NAME_LEN
}

/// Whether `bytes` look like a ZIP archive rather than a bundle's tar.
pub fn is_fab(bytes: &[u8]) -> bool {
    bytes.starts_with(ZIP_MAGIC)
}

fn malformed(why: impl Into<String>) -> BundleError {
    BundleError::Malformed(format!("the FAB {}", why.into()))
}

fn invalid(why: impl Into<String>) -> BundleError {
    BundleError::Manifest(format!("{PYPROJECT}: {}", why.into()))
}

/// Little-endian reads at fixed offsets of a record that has been checked to be long enough.
struct Record<'a>(&'a [u8]);

impl Record<'_> {
    fn u16(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.0[at], self.0[at + 1]])
    }

    fn u32(&self, at: usize) -> u32 {
        u32::from_le_bytes([self.0[at], self.0[at + 1], self.0[at + 2], self.0[at + 3]])
    }
}

/// `len` bytes of `bytes` from `start`, or an error naming `what` when they are not all there.
fn span<'a>(
    bytes: &'a [u8],
    start: usize,
    len: usize,
    what: &str,
) -> Result<&'a [u8], BundleError> {
    start
        .checked_add(len)
        .and_then(|end| bytes.get(start..end))
        .ok_or_else(|| malformed(format!("is truncated: its {what} runs past its end")))
}

const END_SIGNATURE: u32 = 0x0605_4b50;
const CENTRAL_SIGNATURE: u32 = 0x0201_4b50;
const LOCAL_SIGNATURE: u32 = 0x0403_4b50;
const END_LEN: usize = 22;
const CENTRAL_LEN: usize = 46;
const LOCAL_LEN: usize = 30;
const ZIP64_LOCATOR: u32 = 0x0706_4b50;
const ZIP64_LOCATOR_LEN: usize = 20;

/// The extra field giving an entry a second, Unicode name (Info-ZIP's), which Python's
/// `zipfile` prefers to the entry's own name.
const UNICODE_PATH_FIELD: u16 = 0x7075;

/// Checks an entry's extra fields: well formed, and none that would rename it for some readers.
fn check_extra(extra: &[u8], path: &str) -> Result<(), BundleError> {
    let mut at = 0;
    while at < extra.len() {
        let header = span(extra, at, 4, "extra field")?;
        let id = u16::from_le_bytes([header[0], header[1]]);
        let len = usize::from(u16::from_le_bytes([header[2], header[3]]));
        span(extra, at + 4, len, "extra field")?;
        if id == UNICODE_PATH_FIELD {
            return Err(malformed(format!(
                "gives {path:?} a second, Unicode name: readers differ on which is its name"
            )));
        }
        at += 4 + len;
    }
    Ok(())
}

/// The general-purpose flag saying a name is UTF-8 (otherwise readers take it as code page 437).
const UTF8_NAMES: u16 = 0x800;

/// The end-of-central-directory record: where the directory is and how many entries it has.
fn end_record(bytes: &[u8]) -> Result<(usize, usize, usize), BundleError> {
    if bytes.len() < END_LEN {
        return Err(malformed("is not a ZIP archive: it is too short"));
    }
    let lowest = bytes.len().saturating_sub(END_LEN + usize::from(u16::MAX));
    let at = (lowest..=bytes.len().saturating_sub(END_LEN))
        .rev()
        .find(|&at| bytes[at..].starts_with(&END_SIGNATURE.to_le_bytes()))
        .ok_or_else(|| malformed("is not a ZIP archive: it has no end-of-directory record"))?;
    let end = Record(&bytes[at..]);
    let (disk, directory_disk) = (end.u16(4), end.u16(6));
    let (on_disk, entries) = (end.u16(8), end.u16(10));
    if disk != 0 || directory_disk != 0 || on_disk != entries {
        return Err(malformed("spans several disks"));
    }
    let size = end.u32(12);
    let offset = end.u32(16);
    let zip64_locator = at
        .checked_sub(ZIP64_LOCATOR_LEN)
        .is_some_and(|locator| bytes[locator..].starts_with(&ZIP64_LOCATOR.to_le_bytes()));
    if entries == u16::MAX || size == u32::MAX || offset == u32::MAX || zip64_locator {
        return Err(malformed("is a ZIP64 archive, which no FAB needs"));
    }
    let (size, offset) = (size as usize, offset as usize);
    // Readers that find the directory by its size rather than its offset (Python's zipfile,
    // which Flower installs with) must find the same one.
    if offset.checked_add(size) != Some(at) {
        return Err(malformed(
            "has a central directory that does not end where its end record starts",
        ));
    }
    Ok((usize::from(entries), size, offset))
}

/// One file's place in the archive, from the central directory.
struct Located {
    path: String,
    method: u16,
    crc: u32,
    compressed: usize,
    size: usize,
    local_offset: usize,
}

/// Reads every file of the ZIP archive `bytes`, checked: paths, sizes, checksums.
pub fn unzip(bytes: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, BundleError> {
    if bytes.len() as u64 > MAX_BUNDLE_BYTES {
        return Err(BundleError::TooLarge {
            size: bytes.len() as u64,
        });
    }
    let (count, size, offset) = end_record(bytes)?;
    if count > MAX_FILES {
        return Err(malformed(format!(
            "holds {count} entries, over the limit of {MAX_FILES}"
        )));
    }
    let directory = span(bytes, offset, size, "central directory")?;
    let mut located = Vec::with_capacity(count);
    let mut at = 0;
    for _ in 0..count {
        let fixed = Record(span(directory, at, CENTRAL_LEN, "central directory")?);
        if fixed.u32(0) != CENTRAL_SIGNATURE {
            return Err(malformed("has a damaged central directory"));
        }
        let name_len = usize::from(fixed.u16(28));
        let extra_len = usize::from(fixed.u16(30));
        let comment_len = usize::from(fixed.u16(32));
        let name = span(directory, at + CENTRAL_LEN, name_len, "central directory")?;
        let path = String::from_utf8(name.to_vec()).map_err(|e| BundleError::UnsafePath {
            path: String::from_utf8_lossy(e.as_bytes()).into_owned(),
            why: "it is not UTF-8",
        })?;
        if !path.is_ascii() && fixed.u16(8) & UTF8_NAMES == 0 {
            return Err(BundleError::UnsafePath {
                path,
                why: "it is not ASCII and not marked UTF-8, so readers differ on what it is",
            });
        }
        check_extra(
            span(
                directory,
                at + CENTRAL_LEN + name_len,
                extra_len,
                "central directory",
            )?,
            &path,
        )?;
        if fixed.u16(8) & 1 != 0 {
            return Err(malformed(format!("encrypts {path:?}")));
        }
        located.push(Located {
            method: fixed.u16(10),
            crc: fixed.u32(16),
            compressed: fixed.u32(20) as usize,
            size: fixed.u32(24) as usize,
            local_offset: fixed.u32(42) as usize,
            path,
        });
        at += CENTRAL_LEN + name_len + extra_len + comment_len;
    }
    if at != directory.len() {
        return Err(malformed(
            "has a central directory whose size does not match its entries",
        ));
    }
    let mut files = BTreeMap::new();
    let mut inflated_total: u64 = 0;
    for entry in located {
        if entry.path.ends_with('/') {
            // A directory entry: the files inside it say all there is to say.
            check_path(entry.path.trim_end_matches('/'))?;
            continue;
        }
        check_path(&entry.path)?;
        inflated_total += entry.size as u64;
        if inflated_total > MAX_INFLATED_BYTES {
            return Err(malformed(format!(
                "inflates to more than {MAX_INFLATED_BYTES} bytes"
            )));
        }
        let local = Record(span(bytes, entry.local_offset, LOCAL_LEN, "file header")?);
        if local.u32(0) != LOCAL_SIGNATURE {
            return Err(malformed(format!(
                "has no file header where {:?} should start",
                entry.path
            )));
        }
        let local_name_len = usize::from(local.u16(26));
        let local_name = span(
            bytes,
            entry.local_offset + LOCAL_LEN,
            local_name_len,
            "file header",
        )?;
        if local_name != entry.path.as_bytes() {
            return Err(malformed(format!(
                "names {:?} differently in its file header",
                entry.path
            )));
        }
        let local_extra_len = usize::from(local.u16(28));
        check_extra(
            span(
                bytes,
                entry.local_offset + LOCAL_LEN + local_name_len,
                local_extra_len,
                "file header",
            )?,
            &entry.path,
        )?;
        let data_start =
            entry.local_offset + LOCAL_LEN + local_name_len + usize::from(local.u16(28));
        let data = span(bytes, data_start, entry.compressed, "file data")?;
        let contents = match entry.method {
            0 if entry.compressed == entry.size => data.to_vec(),
            0 => return Err(malformed(format!("gives {:?} two sizes", entry.path))),
            8 => {
                let mut contents = Vec::with_capacity(entry.size);
                flate2::read::DeflateDecoder::new(data)
                    .take(entry.size as u64 + 1)
                    .read_to_end(&mut contents)
                    .map_err(|e| malformed(format!("has a damaged {:?}: {e}", entry.path)))?;
                if contents.len() != entry.size {
                    return Err(malformed(format!("gives {:?} two sizes", entry.path)));
                }
                contents
            }
            method => {
                return Err(malformed(format!(
                    "compresses {:?} with method {method}; FABs are stored or deflated",
                    entry.path
                )));
            }
        };
        if crc32fast::hash(&contents) != entry.crc {
            return Err(malformed(format!("has a damaged {:?}", entry.path)));
        }
        if files.insert(entry.path.clone(), contents).is_some() {
            return Err(malformed(format!("holds {:?} twice", entry.path)));
        }
    }
    Ok(files)
}

/// Checks `.info/CONTENT` against the files, as Flower's install does: every file it lists is
/// there with that SHA-256, and it lists every file.
fn check_content(files: &BTreeMap<String, Vec<u8>>) -> Result<(), BundleError> {
    let content = files
        .get(CONTENT)
        .ok_or_else(|| malformed(format!("has no {CONTENT}")))?;
    let content = std::str::from_utf8(content)
        .map_err(|_| malformed(format!("has a {CONTENT} that is not UTF-8")))?;
    let mut listed = BTreeSet::new();
    // As Flower reads it: the text stripped, then one `path,sha256,bits` per line.
    for line in content.trim().split('\n') {
        let fields: Vec<&str> = line.split(',').collect();
        let [path, hash, _bits] = fields.as_slice() else {
            return Err(malformed(format!("has a damaged {CONTENT} line {line:?}")));
        };
        if !listed.insert(*path) {
            return Err(malformed(format!("lists {path:?} twice in {CONTENT}")));
        }
        let bytes = files
            .get(*path)
            .ok_or_else(|| malformed(format!("lists {path:?} in {CONTENT} but lacks it")))?;
        let actual: String = Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if actual != *hash {
            return Err(malformed(format!(
                "holds a {path:?} whose SHA-256 is not the one {CONTENT} lists"
            )));
        }
    }
    match files
        .keys()
        .find(|path| *path != CONTENT && !listed.contains(path.as_str()))
    {
        Some(path) => Err(malformed(format!("holds {path:?}, which {CONTENT} omits"))),
        None => Ok(()),
    }
}

/// A string at `keys` in `table`.
fn text_at<'a>(table: &'a toml::Table, keys: &[&str]) -> Result<&'a str, BundleError> {
    let (last, sections) = keys.split_last().unwrap_or((&"", &[]));
    let mut current = table;
    for (i, key) in sections.iter().enumerate() {
        current = current
            .get(*key)
            .and_then(toml::Value::as_table)
            .ok_or_else(|| invalid(format!("it has no [{}] table", keys[..=i].join("."))))?;
    }
    current
        .get(*last)
        .and_then(toml::Value::as_str)
        .ok_or_else(|| invalid(format!("[{}] has no {last} string", sections.join("."))))
}

/// A component: a Python object reference, `module:attribute`.
fn component(table: &toml::Table, key: &str) -> Result<Component, BundleError> {
    let reference = text_at(table, &["tool", "flwr", "app", "components", key])?;
    let parts: Vec<&str> = reference.split(':').collect();
    let python_name = |part: &str| {
        !part.is_empty()
            && part.split('.').all(|word| {
                word.chars()
                    .next()
                    .is_some_and(|c| c.is_alphabetic() || c == '_')
                    && word.chars().all(|c| c.is_alphanumeric() || c == '_')
            })
    };
    match parts.as_slice() {
        [module, attribute] if python_name(module) && python_name(attribute) => {
            Ok(Component::Flower(reference.to_string()))
        }
        _ => Err(invalid(format!(
            "[tool.flwr.app.components] {key} = {reference:?} is not a Python object reference \
             such as \"my_app.server_app:app\""
        ))),
    }
}

/// A FAB's run config defaults, `[tool.flwr.app.config]` of its `pyproject.toml`, with nested
/// tables flattened into dotted keys as Flower flattens them (`a.b = 1` is `{"a.b": 1}`).
pub fn app_config(bytes: &[u8]) -> Result<toml::Table, BundleError> {
    let files = unzip(bytes)?;
    let pyproject = files
        .get(PYPROJECT)
        .ok_or_else(|| malformed(format!("has no {PYPROJECT} at its root")))?;
    let text = std::str::from_utf8(pyproject).map_err(|_| invalid("it is not UTF-8"))?;
    let table: toml::Table = toml::from_str(text).map_err(|e| invalid(e.message()))?;
    let config = ["tool", "flwr", "app", "config"]
        .iter()
        .try_fold(&table, |table, key| table.get(*key)?.as_table());
    Ok(config.map(flatten).unwrap_or_default())
}

/// A TOML table with its nested tables flattened into dotted keys (`[a] b = 1` is `{"a.b": 1}`),
/// as Flower flattens a run config.
pub fn flatten(table: &toml::Table) -> toml::Table {
    fn walk(prefix: &str, table: &toml::Table, out: &mut toml::Table) {
        for (key, value) in table {
            let key = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                toml::Value::Table(inner) => walk(&key, inner, out),
                other => {
                    out.insert(key, other.clone());
                }
            }
        }
    }
    let mut flat = toml::Table::new();
    walk("", table, &mut flat);
    flat
}

/// Opens a FAB: its files checked against `.info/CONTENT`, and its `pyproject.toml` read.
pub fn open(bytes: &[u8]) -> Result<(Manifest, Fab), BundleError> {
    let files = unzip(bytes)?;
    check_content(&files)?;
    let pyproject = files
        .get(PYPROJECT)
        .ok_or_else(|| malformed(format!("has no {PYPROJECT} at its root")))?;
    let text = std::str::from_utf8(pyproject).map_err(|_| invalid("it is not UTF-8"))?;
    let table: toml::Table = toml::from_str(text).map_err(|e| invalid(e.message()))?;
    let name = text_at(&table, &["project", "name"])?;
    let version = text_at(&table, &["project", "version"])?;
    let publisher = text_at(&table, &["tool", "flwr", "app", "publisher"])?;
    if !is_app_name(name) {
        return Err(invalid(format!(
            "[project] name {name:?} is not a valid app name"
        )));
    }
    // Flower names the app's install directory after it: no separators, nothing but a
    // version's characters (PEP 440's, with a local label).
    let version_chars =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '!' | '-' | '_');
    if version.is_empty() || version.len() > 128 || !version.chars().all(version_chars) {
        return Err(invalid(format!(
            "[project] version {version:?} is not a version: 1 to 128 letters, digits and . + ! - _"
        )));
    }
    if !is_app_name(publisher) {
        return Err(invalid(format!(
            "[tool.flwr.app] publisher {publisher:?} is not a valid publisher name"
        )));
    }
    let manifest = Manifest {
        name: name.to_string(),
        version: version.to_string(),
        serverapp: component(&table, "serverapp")?,
        clientapp: component(&table, "clientapp")?,
    };
    let info = Fab {
        fab_id: format!("{publisher}/{name}"),
        version: version.to_string(),
        archive: bytes.to_vec(),
    };
    Ok((manifest, info))
}
