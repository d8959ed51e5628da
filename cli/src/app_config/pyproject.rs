//! A Flower app's `pyproject.toml`: the app from `[project]` and `[tool.flwr.app]`, and the
//! federations of its legacy `[tool.flwr.federations]`.
//!
//! ```toml
//! [project]
//! name = "authexample"
//! version = "1.0.0"
//!
//! [tool.flwr.app]
//! publisher = "flwrlabs"
//!
//! [tool.flwr.app.components]
//! serverapp = "authexample.server_app:app"
//! clientapp = "authexample.client_app:app"
//!
//! [tool.flwr.app.config]
//! num-server-rounds = 3
//!
//! [tool.flwr.federations]
//! default = "my-federation"
//!
//! [tool.flwr.federations.my-federation]
//! address = "127.0.0.1:9093"
//! root-certificates = "./certificates/ca.crt"
//! ```

use super::{App, FederationSource, FederationTables, flatten};
use crate::CliError;
use serde::Deserialize;
use std::path::Path;

/// The file name looked up in the app directory.
pub const FILE_NAME: &str = "pyproject.toml";

#[derive(Debug, Deserialize)]
struct Project {
    name: String,
    version: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Components {
    serverapp: Option<String>,
    clientapp: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct FlowerApp {
    #[serde(default)]
    components: Components,
    #[serde(default)]
    config: toml::Table,
}

#[derive(Debug, Default, Deserialize)]
struct Flwr {
    app: Option<FlowerApp>,
    federations: Option<FederationTables>,
}

#[derive(Debug, Default, Deserialize)]
struct Tool {
    flwr: Option<Flwr>,
}

#[derive(Debug, Deserialize)]
struct File {
    project: Option<Project>,
    #[serde(default)]
    tool: Tool,
}

/// Parses `text`, read from `path` in the app directory `dir`. A `pyproject.toml` without
/// `[tool.flwr]` is not a Flower app and describes nothing.
pub(crate) fn parse(
    path: &Path,
    dir: &Path,
    text: &str,
) -> Result<(Option<App>, Option<FederationSource>), CliError> {
    let file: File = toml::from_str(text).map_err(|e| super::toml_error(path, text, &e))?;
    let Some(flwr) = file.tool.flwr else {
        return Ok((None, None));
    };
    let app = match (file.project, flwr.app) {
        (Some(project), Some(app)) => {
            let python_component = [&app.components.serverapp, &app.components.clientapp]
                .into_iter()
                .flatten()
                .find(|component| component.contains(':'))
                .cloned();
            Some(App {
                name: project.name,
                version: project.version.unwrap_or_else(|| "0.0.0".to_string()),
                config: flatten(&app.config),
                python_component,
                bundled: false,
                source: path.to_path_buf(),
            })
        }
        (None, Some(_)) => {
            return Err(CliError::Config(format!(
                "{}: [tool.flwr.app] needs a [project] table with the app's name and version",
                path.display()
            )));
        }
        _ => None,
    };
    let federations = flwr.federations.map(|f| FederationSource {
        path: path.to_path_buf(),
        base: dir.to_path_buf(),
        default: f.default,
        named: f.named,
        strict: false,
    });
    Ok((app, federations))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flower_app_reads_its_project_components_and_config() {
        let text = "[project]\nname='authexample'\nversion='1.0.0'\n\
                    [tool.flwr.app]\npublisher='flwrlabs'\n\
                    [tool.flwr.app.components]\nserverapp='authexample.server_app:app'\nclientapp='authexample.client_app:app'\n\
                    [tool.flwr.app.config]\nnum-server-rounds=3\nlearning-rate=0.1\n";
        let (app, federations) = parse(Path::new("p"), Path::new("."), text).unwrap();
        let app = app.unwrap();
        assert_eq!(
            (app.name.as_str(), app.version.as_str()),
            ("authexample", "1.0.0")
        );
        assert_eq!(
            app.python_component.as_deref(),
            Some("authexample.server_app:app")
        );
        assert_eq!(app.config.len(), 2);
        assert!(federations.is_none());
    }

    #[test]
    fn a_plain_python_project_is_no_app() {
        let (app, federations) =
            parse(Path::new("p"), Path::new("."), "[project]\nname='lib'\n").unwrap();
        assert!(app.is_none() && federations.is_none());
        let error = parse(
            Path::new("p"),
            Path::new("."),
            "[tool.flwr.app]\npublisher='x'\n",
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("[project]"), "{error}");
    }
}
