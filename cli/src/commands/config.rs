//! `flwr config list`: which federations the three configuration files define, as they resolve.

use crate::CliError;
use crate::app_config::AppConfig;
use crate::args::ConfigCommand;
use crate::output::{self, Format};
use serde_json::json;

/// Runs `flwr config ...`.
pub fn run(command: ConfigCommand) -> Result<(), CliError> {
    match command {
        ConfigCommand::List { app, format } => list(&AppConfig::load(&app)?, format),
    }
}

fn list(config: &AppConfig, format: Format) -> Result<(), CliError> {
    let federations = config.federations();
    let default = config.default_federation();
    match format {
        Format::Json => {
            let names: Vec<&str> = federations.iter().map(|(n, _, _)| n.as_str()).collect();
            let details: Vec<serde_json::Value> = federations
                .iter()
                .map(|(name, address, source)| {
                    json!({
                        "name": name,
                        "address": address,
                        "source": source.display().to_string(),
                        "default": Some(name.as_str()) == default,
                    })
                })
                .collect();
            let files: Vec<String> = config
                .looked_at()
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            super::print_json(&json!({
                "superlink": names,
                "default": default,
                "federations": details,
                "files": files,
            }));
        }
        Format::Default => {
            println!("Files read, first wins:");
            for file in config.looked_at() {
                let state = if file.is_file() { "" } else { " (absent)" };
                println!("  {}{state}", file.display());
            }
            if federations.is_empty() {
                println!("No federations.");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = federations
                .iter()
                .map(|(name, address, source)| {
                    let marker = if Some(name.as_str()) == default {
                        " (default)"
                    } else {
                        ""
                    };
                    // Names and addresses come from files: no terminal control sequences.
                    let name = format!("{}{marker}", wire::text::escape_controls(name));
                    let address = address
                        .as_deref()
                        .map(|a| wire::text::escape_controls(a).to_string())
                        .unwrap_or_else(|| "(none: a simulation federation)".into());
                    vec![name, address, source.display().to_string()]
                })
                .collect();
            print!(
                "{}",
                output::table(&["Federation", "Address", "From"], &rows)
            );
        }
    }
    Ok(())
}
