//! Flower App Bundles (FABs), built as Flower 1.42's `flwr build` builds them, byte for byte:
//! the same files ([`select`]), the same rewritten `pyproject.toml` ([`pyproject_writer`]), the
//! same ZIP layout ([`zip`]) and the `.info/CONTENT` manifest, so the SHA-256 that identifies an
//! app is the one Flower computes for the same directory.

pub mod select;

use app_bundle::fab::{Fab, MAX_FAB_NAME_LEN, pyproject_writer, zip};

use crate::CliError;
use sha2::{Digest as _, Sha256};
use std::path::Path;

/// Largest FAB: Flower's limit, which the daemons hold every bundle to.
pub const MAX_FAB_BYTES: usize = app_bundle::MAX_BUNDLE_BYTES as usize;

/// A FAB built here: the FAB as the daemons read it, and what Flower names it by.
#[derive(Debug, Clone)]
pub struct BuiltFab {
    /// Its id, version and archive.
    pub fab: Fab,
    /// SHA-256 of the archive, hex.
    pub hash: String,
    /// The file name Flower gives it: `publisher.name.version.hash8.fab`, dots in the version
    /// turned into dashes.
    pub file_name: String,
}

/// Whether `name` is a valid Flower app name ([`app_bundle::fab::is_fab_name`]).
fn check_name(name: &str, what: &str) -> Result<(), CliError> {
    if app_bundle::fab::is_fab_name(name) {
        Ok(())
    } else {
        Err(CliError::Config(format!(
            "{what} {name:?} is invalid: a valid app name starts with a letter, holds only \
             letters, digits and hyphens, and is at most {MAX_FAB_NAME_LEN} characters long"
        )))
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A string at `keys` in `table`, or a message naming what is missing.
fn string_at<'a>(table: &'a toml::Table, keys: &[&str]) -> Result<&'a str, String> {
    let mut value: Option<&toml::Value> = None;
    let mut current = table;
    for (i, key) in keys.iter().enumerate() {
        let found = current.get(*key);
        if i + 1 < keys.len() {
            current = found
                .and_then(toml::Value::as_table)
                .ok_or_else(|| format!("missing [{}] section", keys[..=i].join(".")))?;
        } else {
            value = found;
        }
    }
    let (section, key) = keys.split_at(keys.len() - 1);
    value
        .and_then(toml::Value::as_str)
        .ok_or_else(|| format!("property {:?} missing in [{}]", key[0], section.join(".")))
}

/// Checks what Flower requires of an app's `pyproject.toml`.
fn check_config(config: &toml::Table) -> Result<(), String> {
    string_at(config, &["project", "name"])?;
    string_at(config, &["project", "version"])?;
    string_at(config, &["tool", "flwr", "app", "publisher"])?;
    let components = ["tool", "flwr", "app", "components"];
    let has = |key: &str| {
        let mut keys = components.to_vec();
        keys.push(key);
        string_at(config, &keys).is_ok()
    };
    if !has("agentapp") {
        for key in ["serverapp", "clientapp"] {
            let mut keys = components.to_vec();
            keys.push(key);
            string_at(config, &keys)?;
        }
    }
    let format = config
        .get("tool")
        .and_then(|t| t.get("flwr"))
        .and_then(|t| t.get("app"))
        .and_then(|t| t.get("fab-format-version"));
    match format {
        None | Some(toml::Value::Integer(0)) => Ok(()),
        Some(other) => Err(format!(
            "fab-format-version = {other}: this flwr builds format 0 FABs only"
        )),
    }
}

/// User patterns at `[tool.flwr.app] key`, if any.
fn user_patterns(config: &toml::Table, key: &str) -> Result<Option<Vec<String>>, String> {
    let Some(value) = config
        .get("tool")
        .and_then(|t| t.get("flwr"))
        .and_then(|t| t.get("app"))
        .and_then(|t| t.get(key))
    else {
        return Ok(None);
    };
    let patterns: Option<Vec<String>> = value.as_array().and_then(|items| {
        items
            .iter()
            .map(|i| i.as_str().filter(|s| !s.is_empty()).map(str::to_string))
            .collect()
    });
    match patterns {
        Some(patterns) if !patterns.is_empty() => Ok(Some(patterns)),
        _ => Err(format!(
            "{key} must be a non-empty list of non-empty strings"
        )),
    }
}

/// Builds the FAB of the app in `dir`.
pub fn build(dir: &Path) -> Result<BuiltFab, CliError> {
    let fail = |reason: String| CliError::Config(format!("{}: {reason}", dir.display()));
    let dir = dir
        .canonicalize()
        .map_err(|e| fail(format!("not a Flower app directory ({e})")))?;
    let dir_name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    check_name(&dir_name, "The Flower App directory name")?;
    let files = select::collect(&dir).map_err(fail)?;
    let gitignore = match files.get(".gitignore") {
        // Unreadable is an error, never "no patterns": what it excludes may be secret.
        Some(path) => {
            std::fs::read_to_string(path).map_err(|e| fail(format!(".gitignore: {e}")))?
        }
        None => String::new(),
    };
    let files = select::publishable(files, &gitignore).map_err(fail)?;
    let Some(pyproject) = files.get("pyproject.toml") else {
        return Err(fail(
            "pyproject.toml not found (or excluded by .gitignore)".to_string(),
        ));
    };
    let text =
        std::fs::read_to_string(pyproject).map_err(|e| fail(format!("pyproject.toml: {e}")))?;
    let mut config: toml::Table =
        toml::from_str(&text).map_err(|e| crate::app_config::toml_error(pyproject, &text, &e))?;
    check_config(&config).map_err(|e| fail(format!("pyproject.toml: {e}")))?;
    let name = string_at(&config, &["project", "name"])
        .unwrap_or_default()
        .to_string();
    check_name(&name, "The Flower App [project].name")?;
    let version = string_at(&config, &["project", "version"])
        .unwrap_or_default()
        .to_string();
    let publisher = string_at(&config, &["tool", "flwr", "app", "publisher"])
        .unwrap_or_default()
        .to_string();
    // The connections are the operator's, not the app's.
    if let Some(flwr) = config
        .get_mut("tool")
        .and_then(|t| t.get_mut("flwr"))
        .and_then(toml::Value::as_table_mut)
    {
        flwr.remove("federations");
    }

    let paths: Vec<&String> = files.keys().collect();
    let user_include = user_patterns(&config, "fab-include").map_err(fail)?;
    let user_exclude = user_patterns(&config, "fab-exclude").map_err(fail)?;
    let mut candidates: Vec<&String> = paths.clone();
    for (key, patterns, keep) in [
        ("fab-include", &user_include, true),
        ("fab-exclude", &user_exclude, false),
    ] {
        let Some(patterns) = patterns else { continue };
        for pattern in patterns {
            let one = select::Patterns::new(std::slice::from_ref(pattern)).map_err(fail)?;
            if !paths.iter().any(|p| one.matches(p)) {
                return Err(fail(format!(
                    "pattern in {key} matched no file: {pattern:?}"
                )));
            }
        }
        let spec = select::Patterns::new(patterns).map_err(fail)?;
        candidates.retain(|p| spec.matches(p) == keep);
    }
    let include = select::Patterns::new(select::FAB_INCLUDE).map_err(fail)?;
    let exclude = select::Patterns::new(select::FAB_EXCLUDE).map_err(fail)?;
    candidates.retain(|p| include.matches(p) && !exclude.matches(p));
    candidates.sort();

    // Sizes first: a huge file is refused before it is read.
    let mut total = 0u64;
    for path in &candidates {
        let size = std::fs::metadata(&files[*path])
            .map_err(|e| fail(format!("{path}: {e}")))?
            .len();
        total = total.saturating_add(size);
        if total > MAX_FAB_BYTES as u64 {
            return Err(fail(format!(
                "the app's files exceed the FAB limit of {MAX_FAB_BYTES} bytes (at {path}): \
                 narrow fab-include or add fab-exclude patterns in [tool.flwr.app]"
            )));
        }
    }
    let mut archive = zip::ZipWriter::default();
    let mut manifest = Vec::new();
    let mut add = |path: &str, bytes: &[u8]| -> Result<(), CliError> {
        archive.add(path, bytes).map_err(|e| fail(e.to_string()))?;
        manifest.push(format!("{path},{},{}", sha256_hex(bytes), bytes.len() * 8));
        Ok(())
    };
    add(
        "pyproject.toml",
        pyproject_writer::dumps(&config).as_bytes(),
    )?;
    for path in candidates {
        let file = &files[path];
        let bytes = std::fs::read(file).map_err(|e| fail(format!("{path}: {e}")))?;
        add(path, &bytes)?;
    }
    let manifest = manifest.join("\n");
    archive
        .add(".info/CONTENT", manifest.as_bytes())
        .map_err(|e| fail(e.to_string()))?;
    let bytes = archive.finish().map_err(|e| fail(e.to_string()))?;
    if bytes.len() > MAX_FAB_BYTES {
        return Err(fail(format!(
            "the FAB would be {} bytes, above the limit of {MAX_FAB_BYTES}: narrow fab-include \
             or add fab-exclude patterns in [tool.flwr.app]",
            bytes.len()
        )));
    }
    // The file name is made of the app's own words: it must stay one name in the current
    // directory.
    let unsafe_part = [&publisher, &version]
        .into_iter()
        .find(|part| part.is_empty() || part.contains(['/', '\\']) || part.starts_with('.'));
    if let Some(part) = unsafe_part {
        return Err(fail(format!(
            "pyproject.toml: {part:?} cannot be part of a file name (publisher and version must \
             not be empty, start with a dot or hold a slash)"
        )));
    }
    let hash = sha256_hex(&bytes);
    let file_name = format!(
        "{publisher}.{name}.{}.{}.fab",
        version.replace('.', "-"),
        &hash[..8]
    );
    Ok(BuiltFab {
        fab: Fab {
            fab_id: format!("{publisher}/{name}"),
            version,
            archive: bytes,
        },
        hash,
        file_name,
    })
}
