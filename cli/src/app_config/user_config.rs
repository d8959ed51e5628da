//! The user's connections, `$FLWR_HOME/config.toml` (`~/.flwr/config.toml` by default), in
//! Flower 1.42's form:
//!
//! ```toml
//! [superlink]
//! default = "my-federation"
//!
//! [superlink.my-federation]
//! address = "127.0.0.1:9093"
//! root-certificates = "certificates/ca.crt"   # relative to FLWR_HOME
//! operator-key = "keys/operator"              # this project's; Flower ignores it
//! ```

use super::{FederationSource, FederationTables};
use crate::CliError;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The file name in the Flower home directory.
pub const FILE_NAME: &str = "config.toml";

/// The Flower home directory: `$FLWR_HOME`, else `~/.flwr`; `None` without either variable.
pub fn flwr_home() -> Option<PathBuf> {
    match std::env::var_os("FLWR_HOME") {
        Some(home) if !home.is_empty() => Some(PathBuf::from(home)),
        _ => std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".flwr")),
    }
}

#[derive(Debug, Deserialize)]
struct File {
    superlink: Option<FederationTables>,
}

/// Parses `text`, read from `path` in the Flower home directory `home`.
pub(crate) fn parse(
    path: &Path,
    home: &Path,
    text: &str,
) -> Result<Option<FederationSource>, CliError> {
    let file: File = toml::from_str(text).map_err(|e| super::toml_error(path, text, &e))?;
    Ok(file.superlink.map(|links| FederationSource {
        path: path.to_path_buf(),
        base: home.to_path_buf(),
        default: links.default,
        named: links.named,
        strict: false,
    }))
}
