//! `flwr certs generate`.

use crate::CliError;
use crate::args::CertsCommand;
use crate::output::Format;
use serde_json::json;

/// Runs `flwr certs ...`.
pub fn run(command: CertsCommand) -> Result<(), CliError> {
    let CertsCommand::Generate {
        out,
        sans,
        force,
        format,
    } = command;
    let paths = certs::generate::generate_certificates(&out, &sans, force)?;
    let mut names: Vec<String> = certs::generate::DEFAULT_SANS
        .iter()
        .map(|s| s.to_string())
        .collect();
    names.extend(
        sans.into_iter()
            .filter(|s| !certs::generate::DEFAULT_SANS.contains(&s.as_str())),
    );
    match format {
        Format::Json => super::print_json(&json!({
            "success": true,
            "ca-cert": paths.ca_cert,
            "ca-key": paths.ca_key,
            "server-cert": paths.server_cert,
            "server-key": paths.server_key,
            "server-names": names,
        })),
        Format::Default => {
            println!("Generated in {}:", out.display());
            println!(
                "  {}  CA certificate (give to SuperNodes and flwr.toml)",
                paths.ca_cert.display()
            );
            println!(
                "  {}  CA private key (0600; keep it offline)",
                paths.ca_key.display()
            );
            println!(
                "  {}  SuperLink certificate for {}",
                paths.server_cert.display(),
                names.join(", ")
            );
            println!(
                "  {}  SuperLink private key (0600)",
                paths.server_key.display()
            );
        }
    }
    Ok(())
}
