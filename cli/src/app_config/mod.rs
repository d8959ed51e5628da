//! Where `flwr` finds the app and the federation it talks to. Three files are read, in this
//! order, and the first that names the federation wins:
//!
//! 1. `flwr.toml` in the app directory (this project's own form, [`flwr_toml`]);
//! 2. `pyproject.toml` in the app directory (a Flower app's `[tool.flwr.app]` and its legacy
//!    `[tool.flwr.federations]`, [`pyproject`]);
//! 3. `$FLWR_HOME/config.toml` (`~/.flwr/config.toml` by default; Flower 1.42's
//!    `[superlink.<name>]` connections, [`user_config`]).
//!
//! With no federation named, the default of the first file that has one is used. The app itself
//! (name, version, run config) comes from `flwr.toml`'s `[app]`, else from `pyproject.toml`.
//! Relative paths are relative to the file that holds them.

pub mod flwr_toml;
pub mod pyproject;
pub mod user_config;

use crate::CliError;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use flwr_toml::FILE_NAME;

/// The app a directory describes.
#[derive(Debug, Clone)]
pub struct App {
    /// App name.
    pub name: String,
    /// App version.
    pub version: String,
    /// The run config and its defaults, nested tables flattened to dotted keys as in Flower.
    pub config: toml::Table,
    /// A Python object reference (`package.module:attribute`) among the app's components, if any:
    /// such an app is a Flower Python app rather than a built-in one.
    pub python_component: Option<String>,
    /// Whether `flwr.toml` names the app's components (`[app.components]`): such an app travels
    /// as a bundle of its directory.
    pub bundled: bool,
    /// The file the app was read from.
    pub source: PathBuf,
}

/// A federation, resolved: where its Control API is and how to authenticate to it.
#[derive(Debug, Clone)]
pub struct Federation {
    /// Control API address, `host:port`.
    pub address: String,
    /// CA certificate that the broker's certificate chains to.
    pub root_certificates: Option<PathBuf>,
    /// Operator private key for the Control API.
    pub operator_key: Option<PathBuf>,
    /// Skip verification of the broker's certificate (development only).
    pub insecure: bool,
    /// The file it was read from.
    pub source: PathBuf,
    /// A simulation federation: its runs go to the local simulation SuperLink `flwr` starts
    /// ([`crate::local_superlink`]), on virtual SuperNodes; `address` is the one written.
    pub simulation: Option<LocalSimulation>,
}

/// A simulation federation, as Flower writes one: `options.num-supernodes` without an address
/// (Flower's older form), or the address `:local:` or `:local-in-memory:`.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalSimulation {
    /// Its `options` table as written (`num-supernodes`, `backend.client-resources.num-cpus`,
    /// ...), read by [`crate::simulation`].
    pub options: toml::Table,
    /// `:local-in-memory:`: a SuperLink started for it keeps its state in memory only.
    pub in_memory: bool,
}

/// Flower's address of its local simulation SuperLink.
pub const LOCAL: &str = ":local:";

/// [`LOCAL`], keeping nothing on disk.
pub const LOCAL_IN_MEMORY: &str = ":local-in-memory:";

/// One federation table as written in any of the three files.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct FederationEntry {
    address: Option<String>,
    root_certificates: Option<PathBuf>,
    operator_key: Option<PathBuf>,
    #[serde(default)]
    insecure: bool,
    /// Flower's simulation options (`options.num-supernodes`): a federation without an address.
    options: Option<toml::Table>,
    /// Flower's account authentication (OIDC); operators authenticate with keys here.
    #[serde(default)]
    enable_account_auth: bool,
    /// Anything else: refused in `flwr.toml`, ignored in Flower's files.
    #[serde(flatten)]
    other: toml::Table,
}

/// A table of federations as written: a `default` name beside the named tables.
#[derive(Debug, Deserialize)]
pub(crate) struct FederationTables {
    /// The default federation's name.
    pub default: Option<String>,
    /// The federations by name.
    #[serde(flatten)]
    pub named: BTreeMap<String, FederationEntry>,
}

/// The federations of one file.
#[derive(Debug)]
pub(crate) struct FederationSource {
    /// The file.
    pub path: PathBuf,
    /// What relative paths in it are relative to.
    pub base: PathBuf,
    /// Its default federation.
    pub default: Option<String>,
    /// Its federations by name.
    pub named: BTreeMap<String, FederationEntry>,
    /// Whether keys this project does not know are errors (only in its own `flwr.toml`).
    pub strict: bool,
}

impl FederationSource {
    fn resolve(&self, name: &str, entry: &FederationEntry) -> Result<Federation, CliError> {
        let here = || format!("federation {name:?} in {}", self.path.display());
        if self.strict
            && let Some(key) = entry.other.keys().next()
        {
            return Err(CliError::Config(format!(
                "{}: unknown key {key:?} (known: address, root-certificates, operator-key, insecure)",
                here()
            )));
        }
        if entry.enable_account_auth {
            return Err(CliError::Config(format!(
                "{}: enable-account-auth is Flower's OIDC login, which this SuperLink does not \
                 offer; operators authenticate with a key: set operator-key instead",
                here()
            )));
        }
        let simulation = match entry.address.as_deref() {
            None if entry.options.is_some() => Some(false),
            Some(LOCAL) => Some(false),
            Some(LOCAL_IN_MEMORY) => Some(true),
            _ => None,
        };
        if let Some(in_memory) = simulation {
            return Ok(Federation {
                address: entry.address.clone().unwrap_or_else(|| LOCAL.into()),
                root_certificates: None,
                operator_key: None,
                insecure: false,
                source: self.path.clone(),
                simulation: Some(LocalSimulation {
                    options: entry.options.clone().unwrap_or_default(),
                    in_memory,
                }),
            });
        }
        let Some(address) = entry.address.clone() else {
            return Err(CliError::Config(format!("{} has no address", here())));
        };
        if address.starts_with(':') {
            return Err(CliError::Config(format!(
                "{}: {address} is no address; Flower's local simulation SuperLink is {LOCAL} or \
                 {LOCAL_IN_MEMORY}",
                here()
            )));
        }
        let resolve = |p: &PathBuf| {
            if p.is_absolute() {
                p.clone()
            } else {
                self.base.join(p)
            }
        };
        Ok(Federation {
            address,
            root_certificates: entry.root_certificates.as_ref().map(resolve),
            operator_key: entry.operator_key.as_ref().map(resolve),
            insecure: entry.insecure,
            source: self.path.clone(),
            simulation: None,
        })
    }
}

/// An app directory's configuration, with the user's connections behind it.
#[derive(Debug)]
pub struct AppConfig {
    /// The app directory.
    pub dir: PathBuf,
    /// The app, if the directory describes one.
    pub app: Option<App>,
    /// Federation files in lookup order.
    sources: Vec<FederationSource>,
    /// The files looked at, for errors that say where a federation was looked for.
    looked_at: Vec<PathBuf>,
    /// Why the user's `config.toml` could not be read: an error only when a federation is
    /// looked for there, so a broken file does not stop an app whose own file names it.
    user_config_error: Option<String>,
}

/// Reads `path` if it exists; `Ok(None)` when it does not.
fn read_optional(path: &Path) -> Result<Option<String>, CliError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(CliError::Config(format!(
            "cannot read {}: {error}",
            path.display()
        ))),
    }
}

/// A TOML error as one line: the file, the line and column where it is, and what is wrong.
pub fn toml_error(path: &Path, text: &str, error: &toml::de::Error) -> CliError {
    let at = error
        .span()
        .map(|span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!(":{line}:{column}")
        })
        .unwrap_or_default();
    CliError::Config(format!(
        "{}{at}: {}",
        path.display(),
        error.message().trim_end()
    ))
}

pub use app_bundle::fab::flatten;

impl AppConfig {
    /// Reads `dir`'s `flwr.toml` and `pyproject.toml` (either may be missing) and the user's
    /// `config.toml`.
    pub fn load(dir: &Path) -> Result<Self, CliError> {
        Self::load_with_home(dir, user_config::flwr_home().as_deref())
    }

    /// [`Self::load`] with the user's Flower home given (`None`: no `config.toml`).
    pub fn load_with_home(dir: &Path, flwr_home: Option<&Path>) -> Result<Self, CliError> {
        if !dir.is_dir() {
            return Err(CliError::Config(format!(
                "{} is not a directory (give the app directory, or `.`)",
                dir.display()
            )));
        }
        let mut app = None;
        let mut sources = Vec::new();
        let mut looked_at = Vec::new();
        let own = dir.join(flwr_toml::FILE_NAME);
        looked_at.push(own.clone());
        if let Some(text) = read_optional(&own)? {
            let (own_app, federations) = flwr_toml::parse(&own, dir, &text)?;
            app = own_app;
            sources.extend(federations);
        }
        let flower = dir.join(pyproject::FILE_NAME);
        looked_at.push(flower.clone());
        if let Some(text) = read_optional(&flower)? {
            let (flower_app, federations) = pyproject::parse(&flower, dir, &text)?;
            app = app.or(flower_app);
            sources.extend(federations);
        }
        let mut user_config_error = None;
        if let Some(home) = flwr_home {
            let user = home.join(user_config::FILE_NAME);
            looked_at.push(user.clone());
            let parsed = read_optional(&user).and_then(|text| match text {
                Some(text) => user_config::parse(&user, home, &text),
                None => Ok(None),
            });
            match parsed {
                Ok(source) => sources.extend(source),
                Err(error) => user_config_error = Some(error.to_string()),
            }
        }
        Ok(AppConfig {
            dir: dir.to_path_buf(),
            app,
            sources,
            looked_at,
            user_config_error,
        })
    }

    /// The app, or an error saying which files describe none.
    pub fn app(&self) -> Result<&App, CliError> {
        self.app.as_ref().ok_or_else(|| {
            CliError::Config(format!(
                "{} describes no app: neither {} with an [app] table nor {} with a [project] \
                 table",
                self.dir.display(),
                flwr_toml::FILE_NAME,
                pyproject::FILE_NAME
            ))
        })
    }

    /// The default federation's name: the first file's that has one.
    pub fn default_federation(&self) -> Option<&str> {
        self.sources.iter().find_map(|s| s.default.as_deref())
    }

    /// The files looked at, in lookup order.
    pub fn looked_at(&self) -> &[PathBuf] {
        &self.looked_at
    }

    /// Every federation that a name resolves to, in lookup order: one per name, from the first
    /// file that has it; its address, if it has one; and the file.
    pub fn federations(&self) -> Vec<(String, Option<String>, PathBuf)> {
        let mut seen = std::collections::BTreeSet::new();
        let mut all = Vec::new();
        for source in &self.sources {
            for (name, entry) in &source.named {
                if seen.insert(name.clone()) {
                    all.push((name.clone(), entry.address.clone(), source.path.clone()));
                }
            }
        }
        all
    }

    /// The federation called `name`, or the default one.
    pub fn federation(&self, name: Option<&str>) -> Result<(String, Federation), CliError> {
        let looked_at = || {
            self.looked_at
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let broken_user_config = || self.user_config_error.clone().map(CliError::Config);
        let Some(name) = name.or(self.default_federation()) else {
            if let Some(error) = broken_user_config() {
                return Err(error);
            }
            return Err(CliError::Config(format!(
                "no federation given and no default one in {}",
                looked_at()
            )));
        };
        for source in &self.sources {
            if let Some(entry) = source.named.get(name) {
                return Ok((name.to_string(), source.resolve(name, entry)?));
            }
        }
        if let Some(error) = broken_user_config() {
            return Err(error);
        }
        let known: Vec<&str> = self
            .sources
            .iter()
            .flat_map(|s| s.named.keys().map(String::as_str))
            .collect();
        Err(CliError::Config(format!(
            "no federation {name:?} in {} (known: {})",
            looked_at(),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn default_federation_and_relative_paths_resolve() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            FILE_NAME,
            "[app]\nname='a'\nversion='1'\n[federations]\ndefault='f'\n[federations.f]\naddress='127.0.0.1:9093'\nroot-certificates='c/ca.crt'\n",
        );
        let config = AppConfig::load_with_home(dir.path(), None).unwrap();
        let (name, federation) = config.federation(None).unwrap();
        assert_eq!(name, "f");
        assert_eq!(
            federation.root_certificates.unwrap(),
            dir.path().join("c/ca.crt")
        );
    }

    #[test]
    fn unknown_federation_and_empty_directory_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let config = AppConfig::load_with_home(dir.path(), None).unwrap();
        let no_app = config.app().unwrap_err().to_string();
        assert!(
            no_app.contains("flwr.toml") && no_app.contains("pyproject.toml"),
            "{no_app}"
        );
        let no_default = config.federation(None).unwrap_err().to_string();
        assert!(no_default.contains("no default"), "{no_default}");
        write(dir.path(), FILE_NAME, "[federations.f]\naddress='x:1'\n");
        let error = AppConfig::load_with_home(dir.path(), None)
            .unwrap()
            .federation(Some("g"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("no federation \"g\"") && error.contains("known: f"),
            "{error}"
        );
        let missing = AppConfig::load_with_home(&dir.path().join("nowhere"), None)
            .unwrap_err()
            .to_string();
        assert!(missing.contains("not a directory"), "{missing}");
    }

    #[test]
    fn unknown_keys_are_refused_in_flwr_toml_only() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            FILE_NAME,
            "[federations.f]\naddress='x:1'\nadress='typo'\n",
        );
        let error = AppConfig::load_with_home(dir.path(), None)
            .unwrap()
            .federation(Some("f"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown key \"adress\""), "{error}");
        std::fs::remove_file(dir.path().join(FILE_NAME)).unwrap();
        write(
            dir.path(),
            pyproject::FILE_NAME,
            "[tool.flwr.federations.f]\naddress='x:1'\nsomething-new=1\n",
        );
        let config = AppConfig::load_with_home(dir.path(), None).unwrap();
        assert_eq!(config.federation(Some("f")).unwrap().1.address, "x:1");
    }

    #[test]
    fn the_first_file_naming_a_federation_wins_and_defaults_fall_through() {
        let app = tempfile::tempdir().unwrap();
        let home = tempfile::tempdir().unwrap();
        write(
            app.path(),
            FILE_NAME,
            "[federations.shared]\naddress='own:1'\n",
        );
        write(
            app.path(),
            pyproject::FILE_NAME,
            "[tool.flwr.federations]\ndefault='flower'\n[tool.flwr.federations.shared]\naddress='py:1'\n[tool.flwr.federations.flower]\naddress='py:2'\n",
        );
        write(
            home.path(),
            user_config::FILE_NAME,
            "[superlink]\ndefault='user'\n[superlink.user]\naddress='home:1'\nroot-certificates='ca.crt'\n",
        );
        let config = AppConfig::load_with_home(app.path(), Some(home.path())).unwrap();
        assert_eq!(
            config.federation(Some("shared")).unwrap().1.address,
            "own:1"
        );
        let (name, default) = config.federation(None).unwrap();
        assert_eq!(
            (name.as_str(), default.address.as_str()),
            ("flower", "py:2")
        );
        let user = config.federation(Some("user")).unwrap().1;
        assert_eq!(user.address, "home:1");
        assert_eq!(user.root_certificates.unwrap(), home.path().join("ca.crt"));
    }

    #[test]
    fn simulation_federations_and_account_auth_say_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            pyproject::FILE_NAME,
            "[tool.flwr.federations.local-simulation]\noptions.num-supernodes = 10\n\
             [tool.flwr.federations.cloud]\naddress='x:1'\nenable-account-auth=true\n",
        );
        let config = AppConfig::load_with_home(dir.path(), None).unwrap();
        let simulation = config.federation(Some("local-simulation")).unwrap().1;
        let local = simulation.simulation.unwrap();
        assert_eq!(
            local.options.get("num-supernodes").unwrap().as_integer(),
            Some(10)
        );
        assert!(!local.in_memory);
        let account = config.federation(Some("cloud")).unwrap_err().to_string();
        assert!(account.contains("operator-key"), "{account}");
    }

    #[test]
    fn flowers_local_superlink_and_shadowed_names_are_told_apart() {
        let app = tempfile::tempdir().unwrap();
        let home = tempfile::tempdir().unwrap();
        write(
            app.path(),
            FILE_NAME,
            "[federations.local]\naddress='own:1'\n",
        );
        write(
            home.path(),
            user_config::FILE_NAME,
            "[superlink.local]\naddress=':local:'\n[superlink.sim]\naddress=':local-in-memory:'\n",
        );
        let config = AppConfig::load_with_home(app.path(), Some(home.path())).unwrap();
        let listed: Vec<(String, Option<String>)> = config
            .federations()
            .into_iter()
            .map(|(name, address, _)| (name, address))
            .collect();
        assert_eq!(
            listed,
            [
                ("local".to_string(), Some("own:1".to_string())),
                ("sim".to_string(), Some(":local-in-memory:".to_string()))
            ]
        );
        let sim = config
            .federation(Some("sim"))
            .unwrap()
            .1
            .simulation
            .unwrap();
        assert!(sim.in_memory);
    }

    #[test]
    fn a_broken_user_config_matters_only_when_it_is_needed() {
        let app = tempfile::tempdir().unwrap();
        let home = tempfile::tempdir().unwrap();
        write(
            app.path(),
            FILE_NAME,
            "[federations.own]\naddress='own:1'\n",
        );
        write(home.path(), user_config::FILE_NAME, "[superlink\n");
        let config = AppConfig::load_with_home(app.path(), Some(home.path())).unwrap();
        assert_eq!(config.federation(Some("own")).unwrap().1.address, "own:1");
        let error = config.federation(Some("other")).unwrap_err().to_string();
        assert!(error.contains("config.toml:1:"), "{error}");
    }

    #[test]
    fn nested_config_tables_flatten_to_dotted_keys() {
        let table: toml::Table = toml::from_str("a = 1\n[b]\nc = 'x'\nd.e = true\n").unwrap();
        let flat = flatten(&table);
        let keys: Vec<&str> = flat.keys().map(String::as_str).collect();
        assert_eq!(keys, ["a", "b.c", "b.d.e"]);
    }
}
