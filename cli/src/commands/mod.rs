//! One module per subcommand; [`run`] dispatches.

pub mod app;
pub mod certs;
pub mod config;
pub mod dashboard;
pub mod dataset;
pub mod demo;
pub mod keys;
pub mod runs;
pub mod supernode;

use crate::CliError;
use crate::args::{
    AppCommand, CertsCommand, Command, ConfigCommand, DatasetCommand, KeysCommand, SupernodeCommand,
};
use crate::output::Format;

/// The output format the command asked for (errors are printed in it too).
pub fn format_of(command: &Command) -> Format {
    match command {
        Command::Certs(CertsCommand::Generate { format, .. }) => *format,
        Command::Keys(KeysCommand::Generate { format, .. }) => *format,
        Command::Config(ConfigCommand::List { format, .. }) => *format,
        Command::Build { format, .. } => *format,
        Command::App(AppCommand::Sign { format, .. }) => *format,
        Command::Supernode(
            SupernodeCommand::Register { target, .. }
            | SupernodeCommand::Unregister { target, .. }
            | SupernodeCommand::List { target, .. },
        ) => target.format,
        Command::Dataset(DatasetCommand::Prepare { format, .. }) => *format,
        Command::Demo(_) => Format::Default,
        Command::Pull { target, .. }
        | Command::Run { target, .. }
        | Command::Ls { target, .. }
        | Command::Log { target, .. }
        | Command::Stop { target, .. }
        | Command::Dashboard { target, .. } => target.format,
    }
}

/// Runs a parsed command.
pub async fn run(command: Command) -> Result<(), CliError> {
    match command {
        Command::Certs(command) => certs::run(command),
        Command::Keys(command) => keys::run(command),
        Command::Config(command) => config::run(command),
        Command::Build { app, format } => build(app, format),
        Command::App(command) => app::run(command),
        Command::Supernode(command) => supernode::run(command).await,
        Command::Run {
            target,
            run_config,
            stream,
        } => runs::start(&target, &run_config, stream).await,
        Command::Dataset(command) => dataset::run(command),
        Command::Demo(args) => demo::run(args).await,
        Command::Pull {
            run_id,
            target,
            out,
        } => runs::pull(&target, run_id, out).await,
        Command::Ls {
            target,
            run_id,
            limit,
            runs: _,
        } => runs::list(&target, run_id, limit).await,
        Command::Log {
            run_id,
            target,
            stream: _,
            show,
        } => runs::log(&target, run_id, !show).await,
        Command::Stop { run_id, target } => runs::stop(&target, run_id).await,
        Command::Dashboard { target, no_open } => dashboard::open(&target, no_open).await,
    }
}

/// `flwr build`: writes the app's FAB into the current directory.
fn build(app: Option<std::path::PathBuf>, format: Format) -> Result<(), CliError> {
    let app = app.unwrap_or_else(|| std::path::PathBuf::from("."));
    let built = crate::fab::build(&app)?;
    std::fs::write(&built.file_name, &built.fab.archive)
        .map_err(|e| CliError::Io(format!("cannot write {}: {e}", built.file_name)))?;
    match format {
        Format::Json => print_json(&serde_json::json!({
            "success": true,
            "fab-filename": built.file_name,
            "fab-id": built.fab.fab_id,
            "fab-version": built.fab.version,
            "fab-hash": built.hash,
            "bytes": built.fab.archive.len(),
        })),
        Format::Default => println!("Successfully built {}", built.file_name),
    }
    Ok(())
}

/// The first `count` keys of a JSON object, in the order they are printed.
#[cfg(test)]
pub fn leading_keys(value: &serde_json::Value, count: usize) -> Vec<&str> {
    value
        .as_object()
        .map(|object| object.keys().take(count).map(String::as_str).collect())
        .unwrap_or_default()
}

/// Prints `value` as one JSON document on one line (an element of a JSON Lines stream).
pub fn print_json_line(value: &serde_json::Value) {
    println!("{value}");
}

/// Prints `value` as one indented JSON document.
pub fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}
