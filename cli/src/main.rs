//! `flwr`: parse, run, and turn any error into one line and a non-zero exit.

use clap::Parser as _;
use cli::args::Cli;
use cli::commands;
use cli::output::Format;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = commands::format_of(&cli.command);
    match commands::run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            if format == Format::Json {
                commands::print_json(
                    &serde_json::json!({"success": false, "error-message": error.to_string()}),
                );
            }
            eprintln!("flwr: {error}");
            ExitCode::FAILURE
        }
    }
}
