//! FABs as the daemons read them: the one Flower's `flwr build` made for the echo app opens to
//! its components, and every way a FAB can be broken is refused with its reason.

#![allow(clippy::unwrap_used)]

use app_bundle::fab::{self, CONTENT, PYPROJECT};
use app_bundle::{Bundle, BundleError, Component, hash_of};
use sha2::{Digest as _, Sha256};

/// Built by Flower 1.42's `flwr build` from `flower-runtime/tests/fixtures/echo-app`.
const FLOWER_FAB: &[u8] = include_bytes!("../../../flower-runtime/tests/fixtures/echo-app.fab");

const PYPROJECT_TEXT: &str = r#"[project]
name = "echo-app"
version = "1.0.0"

[tool.flwr.app]
publisher = "flower-rs"

[tool.flwr.app.components]
serverapp = "echo_app.server_app:app"
clientapp = "echo_app.client_app:app"
"#;

/// One entry of a hand-made ZIP: its path, its contents, how they are stored and the stored
/// bytes.
struct ZipEntry<'a> {
    path: &'a str,
    contents: &'a [u8],
    method: u16,
    stored: &'a [u8],
}

/// A ZIP archive of `entries`, as Flower writes a FAB: local headers and data in order, then the
/// central directory.
fn zip_entries(entries: &[ZipEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for entry in entries {
        let offset = out.len() as u32;
        for is_central in [false, true] {
            let signature: u32 = if is_central { 0x0201_4b50 } else { 0x0403_4b50 };
            let mut h = signature.to_le_bytes().to_vec();
            if is_central {
                h.extend(20u16.to_le_bytes()); // version made by
            }
            h.extend(20u16.to_le_bytes()); // version needed
            h.extend(0u16.to_le_bytes()); // flags
            h.extend(entry.method.to_le_bytes());
            h.extend([0; 4]); // time and date
            h.extend(crc32fast::hash(entry.contents).to_le_bytes());
            h.extend((entry.stored.len() as u32).to_le_bytes());
            h.extend((entry.contents.len() as u32).to_le_bytes());
            h.extend((entry.path.len() as u16).to_le_bytes());
            h.extend(0u16.to_le_bytes()); // extra
            if is_central {
                h.extend([0; 10]); // comment length, disk, internal and external attributes
                h.extend(offset.to_le_bytes());
            }
            h.extend(entry.path.as_bytes());
            if is_central {
                central.extend(h);
            } else {
                out.extend(h);
                out.extend(entry.stored);
            }
        }
    }
    let directory_offset = out.len() as u32;
    let count = entries.len() as u16;
    out.extend(&central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0; 4]);
    out.extend(count.to_le_bytes());
    out.extend(count.to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(directory_offset.to_le_bytes());
    out.extend([0; 2]);
    out
}

/// A ZIP of `files`, stored.
fn zip(files: &[(&str, &[u8])]) -> Vec<u8> {
    let entries: Vec<ZipEntry> = files
        .iter()
        .map(|(path, bytes)| ZipEntry {
            path,
            contents: bytes,
            method: 0,
            stored: bytes,
        })
        .collect();
    zip_entries(&entries)
}

fn content_of(files: &[(&str, &[u8])]) -> String {
    files
        .iter()
        .map(|(path, bytes)| {
            let hash: String = Sha256::digest(bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("{path},{hash},{}", bytes.len() * 8)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A FAB of `files` with a correct `.info/CONTENT`.
fn fab_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let content = content_of(files);
    let mut all = files.to_vec();
    all.push((CONTENT, content.as_bytes()));
    zip(&all)
}

fn open(bytes: &[u8]) -> Result<Bundle, BundleError> {
    Bundle::open(bytes, hash_of(bytes))
}

#[test]
fn flowers_own_fab_opens_to_its_components() {
    let bundle = open(FLOWER_FAB).unwrap();
    assert_eq!(bundle.manifest.name, "echo-app");
    assert_eq!(bundle.manifest.version, "1.0.0");
    assert_eq!(
        bundle.manifest.clientapp,
        Component::Flower("echo_app.client_app:app".into())
    );
    assert_eq!(
        bundle.manifest.serverapp,
        Component::Flower("echo_app.server_app:app".into())
    );
    let info = bundle.fab.unwrap();
    assert_eq!(info.fab_id, "flower-rs/echo-app");
    assert_eq!(info.version, "1.0.0");
}

#[test]
fn a_written_fab_opens() {
    let bytes = fab_of(&[
        (PYPROJECT, PYPROJECT_TEXT.as_bytes()),
        ("echo_app/x.py", b""),
    ]);
    assert!(fab::is_fab(&bytes));
    open(&bytes).unwrap();
}

#[test]
fn a_fabs_config_defaults_come_flattened_into_dotted_keys() {
    let pyproject = format!("{PYPROJECT_TEXT}\n[tool.flwr.app.config.optimizer]\nlr = 0.1\n");
    let bytes = fab_of(&[(PYPROJECT, pyproject.as_bytes()), ("echo_app/x.py", b"")]);
    let config = fab::app_config(&bytes).unwrap();
    assert_eq!(
        config.get("optimizer.lr").and_then(toml::Value::as_float),
        Some(0.1)
    );
    let flowers = fab::app_config(FLOWER_FAB).unwrap();
    assert!(flowers.contains_key("factor"), "{flowers:?}");
}

fn refusal(bytes: &[u8]) -> String {
    open(bytes).unwrap_err().to_string()
}

#[test]
fn a_path_that_leaves_the_app_is_refused() {
    for path in [
        "../evil.py",
        "/etc/evil.py",
        "a/../../evil.py",
        "a\\..\\evil.py",
    ] {
        let bytes = fab_of(&[(PYPROJECT, PYPROJECT_TEXT.as_bytes()), (path, b"x")]);
        let why = refusal(&bytes);
        assert!(why.contains("unsafe path"), "{path}: {why}");
    }
}

#[test]
fn what_is_not_a_zip_or_is_cut_short_is_refused() {
    let mut not_zip = b"PK\x03\x04".to_vec();
    not_zip.extend([7; 100]);
    assert!(refusal(&not_zip).contains("no end-of-directory record"));
    for cut in [FLOWER_FAB.len() / 2, FLOWER_FAB.len() - 30, 40] {
        let why = refusal(&FLOWER_FAB[..cut]);
        assert!(why.contains("FAB"), "cut at {cut}: {why}");
    }
}

#[test]
fn a_file_changed_after_building_is_refused() {
    let mut bytes = FLOWER_FAB.to_vec();
    let at = bytes
        .windows(b"echo_app".len())
        .rposition(|w| w == b"echo_app")
        .unwrap();
    // A byte of some file's data, well inside the archive.
    let data = 200.min(at);
    bytes[data] ^= 1;
    assert!(open(&bytes).is_err());
    // A file whose checksums are right but which .info/CONTENT does not list with that hash.
    let mut content = content_of(&[(PYPROJECT, PYPROJECT_TEXT.as_bytes()), ("a.py", b"1")]);
    content = content.replace(
        &format!("{:x}", Sha256::digest(b"1")),
        &format!("{:x}", Sha256::digest(b"2")),
    );
    let bytes = zip(&[
        (PYPROJECT, PYPROJECT_TEXT.as_bytes()),
        ("a.py", b"1"),
        (CONTENT, content.as_bytes()),
    ]);
    assert!(refusal(&bytes).contains("SHA-256"));
    let unlisted = zip(&[
        (PYPROJECT, PYPROJECT_TEXT.as_bytes()),
        ("a.py", b"1"),
        (
            CONTENT,
            content_of(&[(PYPROJECT, PYPROJECT_TEXT.as_bytes())]).as_bytes(),
        ),
    ]);
    assert!(refusal(&unlisted).contains("omits"));
    let without_content = zip(&[(PYPROJECT, PYPROJECT_TEXT.as_bytes())]);
    assert!(refusal(&without_content).contains(CONTENT));
}

#[test]
fn a_pyproject_without_components_is_refused() {
    let without = PYPROJECT_TEXT
        .split("[tool.flwr.app.components]")
        .next()
        .unwrap();
    let why = refusal(&fab_of(&[(PYPROJECT, without.as_bytes())]));
    assert!(why.contains("[tool.flwr.app.components]"), "{why}");
    let not_python = PYPROJECT_TEXT.replace("echo_app.client_app:app", "python3 client.py");
    let why = refusal(&fab_of(&[(PYPROJECT, not_python.as_bytes())]));
    assert!(why.contains("Python object reference"), "{why}");
    let without_pyproject = fab_of(&[("a.py", b"")]);
    assert!(refusal(&without_pyproject).contains(PYPROJECT));
}

#[test]
fn deflated_entries_are_read_and_bounded() {
    use flate2::Compression;
    use flate2::write::DeflateEncoder;
    use std::io::Write as _;
    // Flower's install reads any compression, so a deflated FAB must open too; the test
    // deflates one entry by rewriting a stored archive's method and data.
    let plain = b"print('hello')\n".repeat(100);
    let mut encoder = DeflateEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(&plain).unwrap();
    let deflated = encoder.finish().unwrap();
    let stored = fab_of(&[(PYPROJECT, PYPROJECT_TEXT.as_bytes()), ("a.py", &plain)]);
    let rewritten = rewrite_entry(&stored, "a.py", &deflated);
    open(&rewritten).unwrap();
}

/// `archive` (a pyproject, `path` and the content list) with `path` stored as `deflated`.
fn rewrite_entry(archive: &[u8], path: &str, deflated: &[u8]) -> Vec<u8> {
    let files = fab::unzip(archive).unwrap();
    let entries: Vec<ZipEntry> = [PYPROJECT, path, CONTENT]
        .into_iter()
        .map(|name| {
            let contents = files[name].as_slice();
            let (method, stored) = if name == path {
                (8, deflated)
            } else {
                (0, contents)
            };
            ZipEntry {
                path: name,
                contents,
                method,
                stored,
            }
        })
        .collect();
    zip_entries(&entries)
}

#[test]
fn a_deflated_entry_that_inflates_past_its_size_is_refused() {
    let plain = vec![0u8; 1 << 20];
    let mut encoder =
        flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut encoder, &plain).unwrap();
    let bomb = encoder.finish().unwrap();
    // The entry claims the size of a short file but inflates to a megabyte.
    let stored = fab_of(&[(PYPROJECT, PYPROJECT_TEXT.as_bytes()), ("a.py", b"short")]);
    let rewritten = rewrite_entry(&stored, "a.py", &bomb);
    assert!(refusal(&rewritten).contains("two sizes"));
}

#[test]
fn a_content_list_naming_a_file_twice_is_refused_before_hashing_it_again() {
    let files: [(&str, &[u8]); 2] = [
        (PYPROJECT, PYPROJECT_TEXT.as_bytes()),
        ("big.py", &[0; 4096]),
    ];
    let once = content_of(&files);
    let big_line = once.lines().nth(1).unwrap();
    let repeated = format!("{once}\n{}", [big_line; 1000].join("\n"));
    let bytes = zip(&[files[0], files[1], (CONTENT, repeated.as_bytes())]);
    assert!(refusal(&bytes).contains("twice"), "{}", refusal(&bytes));
    // Flower's own reading: exactly three fields a line.
    let two_fields = content_of(&files)
        .lines()
        .map(|line| line.rsplit_once(',').unwrap().0)
        .collect::<Vec<_>>()
        .join("\n");
    let bytes = zip(&[files[0], files[1], (CONTENT, two_fields.as_bytes())]);
    assert!(refusal(&bytes).contains("damaged"), "{}", refusal(&bytes));
}

#[test]
fn a_version_that_would_steer_flowers_install_directory_is_refused() {
    let text = PYPROJECT_TEXT.replace("1.0.0", "1/../../../../tmp/x");
    let why = refusal(&fab_of(&[(PYPROJECT, text.as_bytes())]));
    assert!(why.contains("is not a version"), "{why}");
}

#[test]
fn archives_that_readers_could_see_differently_are_refused() {
    let good = fab_of(&[(PYPROJECT, PYPROJECT_TEXT.as_bytes()), ("a.py", b"1")]);
    // The local header names another file than the directory does.
    let mut renamed = good.clone();
    let at = renamed.windows(4).position(|w| w == b"a.py").unwrap();
    renamed[at] = b'b';
    assert!(
        refusal(&renamed).contains("differently"),
        "{}",
        refusal(&renamed)
    );
    // Bytes between the directory and its end record.
    let end = good.len() - 22;
    let mut gap = good[..end].to_vec();
    gap.extend([0; 7]);
    gap.extend(&good[end..]);
    assert!(refusal(&gap).contains("end record"), "{}", refusal(&gap));
    // Too short to hold an end record at all.
    assert!(fab::unzip(b"PK\x05\x06").is_err());
}

#[test]
fn an_entry_with_a_second_unicode_name_is_refused() {
    let good = fab_of(&[(PYPROJECT, PYPROJECT_TEXT.as_bytes()), ("x.py", b"1")]);
    // Rebuild the archive with an Info-ZIP Unicode Path field on x.py's directory entry, naming
    // it pyproject.toml for the readers that prefer that field.
    let files = fab::unzip(&good).unwrap();
    let mut extra = 0x7075u16.to_le_bytes().to_vec();
    let name = b"pyproject.toml";
    extra.extend(((5 + name.len()) as u16).to_le_bytes());
    extra.push(1);
    extra.extend(crc32fast::hash(b"x.py").to_le_bytes());
    extra.extend(name);
    let mut out = Vec::new();
    let mut central = Vec::new();
    for path in [PYPROJECT, "x.py", CONTENT] {
        let contents = &files[path];
        let offset = out.len() as u32;
        let with_extra: &[u8] = if path == "x.py" { &extra } else { &[] };
        for is_central in [false, true] {
            let signature: u32 = if is_central { 0x0201_4b50 } else { 0x0403_4b50 };
            let mut h = signature.to_le_bytes().to_vec();
            if is_central {
                h.extend(20u16.to_le_bytes());
            }
            h.extend([20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            h.extend(crc32fast::hash(contents).to_le_bytes());
            h.extend((contents.len() as u32).to_le_bytes());
            h.extend((contents.len() as u32).to_le_bytes());
            h.extend((path.len() as u16).to_le_bytes());
            let extra_len = if is_central { with_extra.len() } else { 0 };
            h.extend((extra_len as u16).to_le_bytes());
            if is_central {
                h.extend([0; 10]);
                h.extend(offset.to_le_bytes());
            }
            h.extend(path.as_bytes());
            if is_central {
                h.extend(with_extra);
                central.extend(h);
            } else {
                out.extend(h);
                out.extend(contents);
            }
        }
    }
    let directory_offset = out.len() as u32;
    out.extend(&central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0; 4]);
    out.extend(3u16.to_le_bytes());
    out.extend(3u16.to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(directory_offset.to_le_bytes());
    out.extend([0; 2]);
    let why = refusal(&out);
    assert!(why.contains("second, Unicode name"), "{why}");
}
