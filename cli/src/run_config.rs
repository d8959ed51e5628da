//! The run config a run starts with: the app's config with `--run-config` (`-c`) values fused
//! in, as Flower takes them: `-c "a=1 b='x'"`, repeated `-c a=1 -c b=2`, or one TOML file
//! `-c overrides.toml` (whose nested tables become dotted keys).

use crate::CliError;
use crate::app_config::{App, flatten};
use std::path::Path;
use wire::ConfigRecord;

/// The overrides given on the command line, read and typed.
pub fn overrides(values: &[String]) -> Result<ConfigRecord, CliError> {
    let is_file = |value: &String| value.trim_end().ends_with(".toml");
    match values {
        [file] if is_file(file) => from_file(Path::new(file.trim())),
        _ => {
            if let Some(file) = values.iter().find(|v| is_file(v)) {
                return Err(CliError::Config(format!(
                    "--run-config: a TOML file ({file}) cannot be given together with other \
                     values: give either the file or key=value pairs"
                )));
            }
            let mut record = ConfigRecord::new();
            for value in values {
                let pairs = flwr_sdk::config::parse_overrides(value)
                    .map_err(|e| CliError::Config(format!("--run-config: {e}")))?;
                for (key, value) in pairs.iter() {
                    record.insert(key, value.clone());
                }
            }
            Ok(record)
        }
    }
}

fn from_file(path: &Path) -> Result<ConfigRecord, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CliError::Config(format!("--run-config: cannot read {}: {e}", path.display()))
    })?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| crate::app_config::toml_error(path, &text, &e))?;
    flwr_sdk::config::from_table(&flatten(&table))
        .map_err(|e| CliError::Config(format!("{}: {e}", path.display())))
}

/// The app's config with `values` fused in; a key the app does not have is refused, so that a
/// typo does not silently leave the default in place.
pub fn fuse(app: &App, values: &[String]) -> Result<ConfigRecord, CliError> {
    let mut config = flwr_sdk::config::from_table(&app.config)
        .map_err(|e| CliError::Config(format!("{}: app config: {e}", app.source.display())))?;
    for (key, value) in overrides(values)?.iter() {
        let Some(slot) = config.get_mut(key) else {
            let known: Vec<&str> = config.names().collect();
            return Err(CliError::Config(format!(
                "--run-config: unknown key {key:?}; the app's config has: {}",
                known.join(", ")
            )));
        };
        *slot = value.clone();
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::ConfigValue;

    fn app(config: &str) -> App {
        App {
            name: "a".into(),
            version: "1".into(),
            config: flatten(&toml::from_str(config).unwrap()),
            python_component: None,
            bundled: false,
            source: "flwr.toml".into(),
        }
    }

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| v.to_string()).collect()
    }

    #[test]
    fn one_string_repeated_flags_and_a_file_give_the_same_config() {
        let app = app("num-server-rounds = 3\nlearning-rate = 0.1\n[opt]\nname = 'sgd'\n");
        let one = fuse(&app, &strings(&["num-server-rounds=5 opt.name='adam'"])).unwrap();
        let repeated = fuse(
            &app,
            &strings(&["num-server-rounds=5", "opt.name=\"adam\""]),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("o.toml");
        std::fs::write(&file, "num-server-rounds = 5\n[opt]\nname = 'adam'\n").unwrap();
        let from_file = fuse(&app, &[file.display().to_string()]).unwrap();
        for config in [&one, &repeated, &from_file] {
            assert_eq!(config.get("num-server-rounds"), Some(&ConfigValue::Int(5)));
            assert_eq!(
                config.get("opt.name"),
                Some(&ConfigValue::Str("adam".into()))
            );
            assert_eq!(config.get("learning-rate"), Some(&ConfigValue::Float(0.1)));
        }
    }

    #[test]
    fn later_values_win_and_mistakes_are_named() {
        let app = app("a = 1\n");
        let config = fuse(&app, &strings(&["a=2", "a=3"])).unwrap();
        assert_eq!(config.get("a"), Some(&ConfigValue::Int(3)));
        let unknown = fuse(&app, &strings(&["b=1"])).unwrap_err().to_string();
        assert!(unknown.contains("unknown key \"b\""), "{unknown}");
        let mixed = fuse(&app, &strings(&["a=2", "x.toml"]))
            .unwrap_err()
            .to_string();
        assert!(mixed.contains("cannot be given together"), "{mixed}");
        let missing = fuse(&app, &strings(&["/nonexistent/x.toml"]))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("cannot read"), "{missing}");
    }
}
