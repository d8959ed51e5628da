//! `flwr.toml` inside a bundle: the app's name and version, and its two components.
//!
//! ```toml
//! [app]
//! name = "my-app"
//! version = "1.0.0"
//!
//! [app.components]
//! serverapp = "vector-add"                  # a bare word: a built-in app
//! clientapp = "python3 client.py --fast"    # a command and its arguments
//! # clientapp = "./bin/client"              # a program inside the bundle
//! # clientapp = ["python3", "my client.py"] # arguments with spaces: an array
//! ```
//!
//! A program whose command holds a `/` is a file inside the bundle (it must be there, and
//! executable); any other command is looked up on the host's `PATH`. Programs start in the
//! unpacked bundle's directory, so relative arguments name the bundle's files.

use super::{BundleError, Entry, MANIFEST, archive::check_path};
use serde::Deserialize;

/// Longest app name.
pub const MAX_NAME_LEN: usize = 64;

/// Longest version or argument.
const MAX_FIELD_LEN: usize = 1024;

/// Most arguments of one program.
const MAX_ARGS: usize = 64;

/// One half of an app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Component {
    /// An app compiled into the SuperLink and the SuperNodes, by name.
    Builtin(String),
    /// A program the daemon starts.
    Program(Program),
    /// A Flower app's Python object (`module:attribute`) in a FAB, run by Flower's own
    /// `flwr-serverapp` or `flwr-clientapp`.
    Flower(String),
}

/// A program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// A path inside the bundle (it holds a `/`) or a command on the host's `PATH`.
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
}

impl Program {
    /// The bundle file the command names, without a leading `./`; `None` for a `PATH` command.
    pub fn bundle_path(&self) -> Option<&str> {
        self.command
            .contains('/')
            .then(|| self.command.trim_start_matches("./"))
    }
}

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Component::Builtin(name) => write!(f, "the built-in app {name:?}"),
            Component::Flower(object) => write!(f, "the Flower app object {object}"),
            Component::Program(program) => {
                write!(f, "{}", program.command)?;
                program.args.iter().try_for_each(|arg| write!(f, " {arg}"))
            }
        }
    }
}

/// A bundle's `flwr.toml`, as far as running it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// `[app] name`.
    pub name: String,
    /// `[app] version`.
    pub version: String,
    /// What the SuperLink runs.
    pub serverapp: Component,
    /// What every node runs.
    pub clientapp: Component,
}

#[derive(Deserialize)]
struct Components {
    serverapp: Option<toml::Value>,
    clientapp: Option<toml::Value>,
}

#[derive(Deserialize)]
struct AppTable {
    name: String,
    version: String,
    components: Option<Components>,
}

#[derive(Deserialize)]
struct File {
    app: Option<AppTable>,
}

fn invalid(why: impl Into<String>) -> BundleError {
    BundleError::Manifest(why.into())
}

/// Whether `name` is a valid native bundle's app name: an ASCII letter, then ASCII letters, digits,
/// hyphens and underscores (a FAB's name follows Flower's rule instead:
/// [`crate::fab::is_fab_name`] says why they differ).
pub fn is_app_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.len() <= MAX_NAME_LEN
}

fn check_field(what: &str, text: &str) -> Result<(), BundleError> {
    if text.is_empty() || text.len() > MAX_FIELD_LEN || text.chars().any(char::is_control) {
        return Err(invalid(format!(
            "{what} must be 1 to {MAX_FIELD_LEN} bytes without control characters"
        )));
    }
    Ok(())
}

impl Component {
    fn parse(key: &str, value: Option<toml::Value>) -> Result<Component, BundleError> {
        let not_text = || {
            invalid(format!(
                "{key} must be a string (a built-in app's name, or a command line) or an array \
                 of strings (a command and its arguments)"
            ))
        };
        let words: Vec<String> = match value {
            None => return Err(invalid(format!("[app.components] has no {key}"))),
            Some(toml::Value::String(line)) => {
                let words: Vec<String> = line.split_whitespace().map(String::from).collect();
                if let [word] = words.as_slice()
                    && !word.contains('/')
                {
                    if !is_app_name(word) {
                        return Err(invalid(format!(
                            "{key} = {word:?} is neither a built-in app's name nor a program \
                             (write a program inside the bundle as \"./{word}\")"
                        )));
                    }
                    return Ok(Component::Builtin(word.clone()));
                }
                words
            }
            Some(toml::Value::Array(items)) => items
                .into_iter()
                .map(|item| match item {
                    toml::Value::String(word) => Ok(word),
                    _ => Err(not_text()),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(not_text()),
        };
        let Some((command, args)) = words.split_first() else {
            return Err(invalid(format!("{key} is empty")));
        };
        if args.len() > MAX_ARGS {
            return Err(invalid(format!("{key} has more than {MAX_ARGS} arguments")));
        }
        check_field(key, command)?;
        for arg in args {
            check_field(&format!("an argument of {key}"), arg)?;
        }
        let program = Program {
            command: command.clone(),
            args: args.to_vec(),
        };
        if let Some(path) = program.bundle_path() {
            check_path(path).map_err(|e| invalid(format!("{key}: {e}")))?;
        }
        Ok(Component::Program(program))
    }
}

impl Manifest {
    /// Parses a manifest's text.
    pub fn parse(text: &str) -> Result<Manifest, BundleError> {
        let file: File = toml::from_str(text).map_err(|e| invalid(e.message().to_string()))?;
        let app = file.app.ok_or_else(|| invalid("it has no [app] table"))?;
        if !is_app_name(&app.name) {
            return Err(invalid(format!(
                "[app] name {:?} is invalid: it starts with a letter, holds only letters, digits, \
                 hyphens and underscores, and is at most {MAX_NAME_LEN} characters long",
                app.name
            )));
        }
        check_field("[app] version", &app.version)?;
        let components = app.components.ok_or_else(|| {
            invalid("it has no [app.components] table naming the serverapp and the clientapp")
        })?;
        Ok(Manifest {
            name: app.name,
            version: app.version,
            serverapp: Component::parse("serverapp", components.serverapp)?,
            clientapp: Component::parse("clientapp", components.clientapp)?,
        })
    }

    /// The manifest of a bundle's files, checked against them: every program inside the bundle
    /// is one of its files, and executable.
    pub fn from_entries(entries: &[Entry]) -> Result<Manifest, BundleError> {
        let file = entries
            .iter()
            .find(|entry| entry.path == MANIFEST)
            .ok_or_else(|| invalid("the bundle has none at its root"))?;
        let text = std::str::from_utf8(&file.bytes).map_err(|_| invalid("it is not UTF-8"))?;
        let manifest = Manifest::parse(text)?;
        for (key, component) in [
            ("serverapp", &manifest.serverapp),
            ("clientapp", &manifest.clientapp),
        ] {
            let Component::Program(program) = component else {
                continue;
            };
            let Some(path) = program.bundle_path() else {
                continue;
            };
            match entries.iter().find(|entry| entry.path == path) {
                None => {
                    return Err(invalid(format!(
                        "{key}: the program {path:?} is not in the bundle"
                    )));
                }
                Some(entry) if !entry.executable => {
                    return Err(invalid(format!(
                        "{key}: the program {path:?} is not executable (chmod +x {path})"
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(components: &str) -> Result<Manifest, BundleError> {
        Manifest::parse(&format!(
            "[app]\nname = \"my-app\"\nversion = \"1.0.0\"\n\n[app.components]\n{components}\n"
        ))
    }

    #[test]
    fn bare_words_are_built_in_apps_and_anything_else_is_a_program() {
        let parsed =
            manifest("serverapp = \"vector-add\"\nclientapp = \"python3 client.py --fast\"")
                .unwrap();
        assert_eq!(parsed.serverapp, Component::Builtin("vector-add".into()));
        assert_eq!(
            parsed.clientapp,
            Component::Program(Program {
                command: "python3".into(),
                args: vec!["client.py".into(), "--fast".into()],
            })
        );
        let parsed =
            manifest("serverapp = \"./bin/server\"\nclientapp = [\"python3\", \"my client.py\"]")
                .unwrap();
        let Component::Program(server) = &parsed.serverapp else {
            panic!("{parsed:?}");
        };
        assert_eq!(server.bundle_path(), Some("bin/server"));
        let Component::Program(client) = &parsed.clientapp else {
            panic!("{parsed:?}");
        };
        assert_eq!(client.bundle_path(), None);
        assert_eq!(client.args, ["my client.py"]);
    }

    #[test]
    fn a_manifest_that_cannot_run_says_why() {
        let cases = [
            ("clientapp = \"x\"", "no serverapp"),
            ("serverapp = \"x\"\nclientapp = []", "is empty"),
            (
                "serverapp = \"x\"\nclientapp = \"../escape\"",
                "leaves its directory",
            ),
            (
                "serverapp = \"x\"\nclientapp = \"no.such\"",
                "neither a built-in",
            ),
            ("serverapp = 3\nclientapp = \"x\"", "serverapp"),
        ];
        for (components, expected) in cases {
            let error = manifest(components).unwrap_err().to_string();
            assert!(error.contains(expected), "{components}: {error}");
        }
        let error = Manifest::parse("[app]\nname = \"1x\"\nversion = \"1\"").unwrap_err();
        assert!(error.to_string().contains("name"), "{error}");
        let error = Manifest::parse("[app]\nname = \"x\"\nversion = \"1\"").unwrap_err();
        assert!(error.to_string().contains("[app.components]"), "{error}");
    }

    #[test]
    fn programs_inside_the_bundle_must_be_there_and_executable() {
        let toml = b"[app]\nname = \"a\"\nversion = \"1\"\n[app.components]\nserverapp = \"vector-add\"\nclientapp = \"./client\"\n";
        let file = |path: &str, executable: bool, bytes: &[u8]| Entry {
            path: path.into(),
            executable,
            bytes: bytes.to_vec(),
        };
        let missing = [file(MANIFEST, false, toml)];
        assert!(
            Manifest::from_entries(&missing)
                .unwrap_err()
                .to_string()
                .contains("not in the bundle")
        );
        let plain = [file(MANIFEST, false, toml), file("client", false, b"")];
        assert!(
            Manifest::from_entries(&plain)
                .unwrap_err()
                .to_string()
                .contains("chmod +x")
        );
        let good = [file(MANIFEST, false, toml), file("client", true, b"")];
        assert!(Manifest::from_entries(&good).is_ok());
        assert!(Manifest::from_entries(&[]).is_err());
    }
}
