//! `flwr app sign`.

use crate::CliError;
use crate::args::AppCommand;
use crate::output::Format;

/// Runs an `app` subcommand.
pub fn run(command: AppCommand) -> Result<(), CliError> {
    match command {
        AppCommand::Sign { app, key, format } => {
            let text = std::fs::read_to_string(&key)
                .map_err(|e| CliError::Io(format!("cannot read {}: {e}", key.display())))?;
            let (identity, comment) = if certs::openssh::is_private_key(&text) {
                certs::openssh::parse_private_key(&text)
                    .map_err(|e| CliError::Config(format!("{}: {e}", key.display())))?
            } else {
                let identity = certs::load::parse_identity_key(&text)
                    .map_err(|e| CliError::Config(format!("{}: {e}", key.display())))?;
                (identity, String::new())
            };
            let packed = crate::bundle::sign(&app, &identity, &comment)?;
            let publisher = identity.public_key().fingerprint();
            let path = crate::bundle::signatures_path(&app);
            match format {
                Format::Json => super::print_json(&serde_json::json!({
                    "success": true,
                    "fab-name": packed.manifest.name,
                    "fab-version": packed.manifest.version,
                    "fab-hash": packed.hash.to_string(),
                    "publisher": publisher,
                    "signatures": path.display().to_string(),
                })),
                Format::Default => println!(
                    "Signed {} {} ({}) as {publisher}; the signature is in {}",
                    packed.manifest.name,
                    packed.manifest.version,
                    packed.hash,
                    path.display()
                ),
            }
            Ok(())
        }
    }
}
