//! One module per subcommand; [`run`] dispatches.

pub mod certs;
pub mod keys;
pub mod supernode;

use crate::CliError;
use crate::args::{CertsCommand, Command, KeysCommand, SupernodeCommand};
use crate::output::Format;

/// The output format the command asked for (errors are printed in it too).
pub fn format_of(command: &Command) -> Format {
    match command {
        Command::Certs(CertsCommand::Generate { format, .. }) => *format,
        Command::Keys(KeysCommand::Generate { format, .. }) => *format,
        Command::Supernode(
            SupernodeCommand::Register { target, .. }
            | SupernodeCommand::Unregister { target, .. }
            | SupernodeCommand::List { target, .. },
        ) => target.format,
    }
}

/// Runs a parsed command.
pub async fn run(command: Command) -> Result<(), CliError> {
    match command {
        Command::Certs(command) => certs::run(command),
        Command::Keys(command) => keys::run(command),
        Command::Supernode(command) => supernode::run(command).await,
    }
}

/// Prints a JSON document on stdout.
pub fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}
