//! `flwr.toml`, this project's counterpart of a Flower app's `pyproject.toml`:
//!
//! ```toml
//! [app]
//! name = "fedavg-cnn"
//! version = "1.0.0"
//!
//! [app.config]
//! num-server-rounds = 3
//!
//! [app.components]              # optional: the app's own programs (see `app_bundle`)
//! serverapp = "vector-add"
//! clientapp = "python3 client.py"
//!
//! [app.bundle]                  # optional: more files to pack (gitignore patterns)
//! include = ["src/**"]
//!
//! [federations]
//! default = "my-federation"
//!
//! [federations.my-federation]
//! address = "127.0.0.1:9093"
//! root-certificates = "certificates/ca.crt"
//! operator-key = "keys/operator"   # optional
//! ```

use super::{App, FederationSource, FederationTables, flatten};
use crate::CliError;
use serde::Deserialize;
use std::path::Path;

/// The file name looked up in the app directory.
pub const FILE_NAME: &str = "flwr.toml";

#[derive(Debug, Deserialize)]
struct AppTable {
    name: String,
    version: String,
    #[serde(default)]
    config: toml::Table,
    /// Read in full from the bundle (`app_bundle::Manifest`); here only its presence counts.
    components: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
struct File {
    app: Option<AppTable>,
    federations: Option<FederationTables>,
}

/// Parses `text`, read from `path` in the app directory `dir`.
pub(crate) fn parse(
    path: &Path,
    dir: &Path,
    text: &str,
) -> Result<(Option<App>, Option<FederationSource>), CliError> {
    let file: File = toml::from_str(text).map_err(|e| super::toml_error(path, text, &e))?;
    let app = file.app.map(|app| App {
        name: app.name,
        version: app.version,
        config: flatten(&app.config),
        python_component: None,
        bundled: app.components.is_some(),
        source: path.to_path_buf(),
    });
    let federations = file.federations.map(|f| FederationSource {
        path: path.to_path_buf(),
        base: dir.to_path_buf(),
        default: f.default,
        named: f.named,
        strict: true,
    });
    Ok((app, federations))
}
