//! `flwr.toml`, the Rust counterpart of the example's `pyproject.toml`:
//!
//! ```toml
//! [app]
//! name = "fedavg-cnn"
//! version = "1.0.0"
//!
//! [app.config]
//! num-server-rounds = 3
//!
//! [federations]
//! default = "my-federation"
//!
//! [federations.my-federation]
//! address = "127.0.0.1:9093"
//! root-certificates = "certificates/ca.crt"
//! operator-key = "keys/operator"   # optional
//! ```
//! Relative paths are relative to the app directory.

use crate::CliError;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The file name looked up in the app directory.
pub const FILE_NAME: &str = "flwr.toml";

/// `[app]`.
#[derive(Debug, Clone, Deserialize)]
pub struct App {
    /// App name.
    pub name: String,
    /// App version.
    pub version: String,
    /// `[app.config]`: the run config and its defaults.
    #[serde(default)]
    pub config: toml::Table,
}

/// One `[federations.NAME]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Federation {
    /// Control API address, `host:port`.
    pub address: String,
    /// CA certificate that the broker's certificate chains to.
    pub root_certificates: Option<PathBuf>,
    /// Operator private key for the Control API.
    pub operator_key: Option<PathBuf>,
    /// Skip verification of the broker's certificate (development only).
    #[serde(default)]
    pub insecure: bool,
}

#[derive(Debug, Deserialize)]
struct Federations {
    default: Option<String>,
    #[serde(flatten)]
    named: BTreeMap<String, Federation>,
}

#[derive(Debug, Deserialize)]
struct File {
    app: Option<App>,
    federations: Option<Federations>,
}

/// A loaded `flwr.toml`.
#[derive(Debug)]
pub struct AppConfig {
    /// The app directory.
    pub dir: PathBuf,
    /// `[app]`, if present.
    pub app: Option<App>,
    /// Default federation name.
    default_federation: Option<String>,
    /// Federations by name.
    federations: BTreeMap<String, Federation>,
}

impl AppConfig {
    /// Reads `dir/flwr.toml`.
    pub fn load(dir: &Path) -> Result<Self, CliError> {
        let path = dir.join(FILE_NAME);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            CliError::Config(format!(
                "cannot read {}: {e} (is {} an app directory?)",
                path.display(),
                dir.display()
            ))
        })?;
        let file: File = toml::from_str(&text)
            .map_err(|e| CliError::Config(format!("{}: {}", path.display(), e.message())))?;
        let (default_federation, federations) = match file.federations {
            Some(f) => (f.default, f.named),
            None => (None, BTreeMap::new()),
        };
        Ok(AppConfig {
            dir: dir.to_path_buf(),
            app: file.app,
            default_federation,
            federations,
        })
    }

    /// The federation called `name`, or the default one; paths made relative to the app directory.
    pub fn federation(&self, name: Option<&str>) -> Result<(String, Federation), CliError> {
        let name = match name.or(self.default_federation.as_deref()) {
            Some(name) => name,
            None => {
                return Err(CliError::Config(format!(
                    "no federation given and no [federations] default in {}",
                    self.dir.join(FILE_NAME).display()
                )));
            }
        };
        let federation = self.federations.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.federations.keys().map(String::as_str).collect();
            CliError::Config(format!(
                "no federation {name:?} in {} (known: {})",
                self.dir.join(FILE_NAME).display(),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ))
        })?;
        let mut federation = federation.clone();
        let resolve = |p: &PathBuf| {
            if p.is_absolute() {
                p.clone()
            } else {
                self.dir.join(p)
            }
        };
        federation.root_certificates = federation.root_certificates.as_ref().map(resolve);
        federation.operator_key = federation.operator_key.as_ref().map(resolve);
        Ok((name.to_string(), federation))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) {
        std::fs::write(dir.join(FILE_NAME), text).unwrap();
    }

    #[test]
    fn default_federation_and_relative_paths_resolve() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "[app]\nname='a'\nversion='1'\n[federations]\ndefault='f'\n[federations.f]\naddress='127.0.0.1:9093'\nroot-certificates='c/ca.crt'\n",
        );
        let config = AppConfig::load(dir.path()).unwrap();
        let (name, federation) = config.federation(None).unwrap();
        assert_eq!(name, "f");
        assert_eq!(
            federation.root_certificates.unwrap(),
            dir.path().join("c/ca.crt")
        );
    }

    #[test]
    fn unknown_federation_and_missing_file_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = AppConfig::load(dir.path()).unwrap_err().to_string();
        assert!(missing.contains("flwr.toml"), "{missing}");
        write(dir.path(), "[federations.f]\naddress='x:1'\n");
        let error = AppConfig::load(dir.path())
            .unwrap()
            .federation(Some("g"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("no federation \"g\"") && error.contains("known: f"),
            "{error}"
        );
    }
}
