//! `flwr keys generate`.

use crate::CliError;
use crate::args::KeysCommand;
use crate::output::Format;
use serde_json::json;

/// The operator name when none is given: the login name, else `operator`.
fn default_operator_name() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|name| !name.trim().is_empty() && !name.contains(char::is_whitespace))
        .unwrap_or_else(|| "operator".to_string())
}

/// Runs `flwr keys ...`.
pub fn run(command: KeysCommand) -> Result<(), CliError> {
    let KeysCommand::Generate {
        count,
        out,
        prefix,
        operator_name,
        no_operator,
        force,
        format,
    } = command;
    if prefix.is_empty() || prefix.contains(std::path::is_separator) {
        return Err(CliError::Config(format!(
            "--prefix {prefix:?} must be a plain file name"
        )));
    }
    let operator = (!no_operator).then(|| operator_name.unwrap_or_else(default_operator_name));
    let pairs = certs::generate::generate_federation_keys(
        &out,
        &prefix,
        count,
        operator.as_deref(),
        force,
    )?;
    let (nodes, operator_pair) = pairs.split_at(count);
    match format {
        Format::Json => super::print_json(&json!({
            "success": true,
            "supernode-keys": nodes.iter().map(|p| json!({"private": p.private, "public": p.public})).collect::<Vec<_>>(),
            "operator-key": operator_pair.first().map(|p| json!({"private": p.private, "public": p.public, "name": operator})),
        })),
        Format::Default => {
            for pair in nodes {
                println!(
                    "SuperNode key  {}  (+ {})",
                    pair.private.display(),
                    pair.public.display()
                );
            }
            if let Some(pair) = operator_pair.first() {
                println!(
                    "Operator key   {}  (+ {}, operator {:?})",
                    pair.private.display(),
                    pair.public.display(),
                    operator.as_deref().unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}
