//! `flwr-clientapp`: one client app instruction in a process of its own, started by
//! `flower-supernode --isolation subprocess`.

use clap::Parser as _;
use node::clientapp::{Args, run};
use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    node::logging::init(args.runtime.log_format);
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("flwr-clientapp: {error}");
            ExitCode::FAILURE
        }
    }
}
