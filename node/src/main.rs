//! `flower-supernode`: parse flags, run the daemon until SIGINT or SIGTERM.

use clap::Parser as _;
use node::daemon::{self, NodeState};
use node::settings::Args;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(reason) = args.log.install(args.runtime.log_format) {
        eprintln!("flower-supernode: {reason}");
        return ExitCode::from(2);
    }
    for notice in args.flower.notices() {
        tracing::warn!("{notice}");
    }
    let health_address = args.health_server_address;
    let insecure = args.insecure;
    let settings = match args.resolve() {
        Ok(settings) => settings,
        Err(reason) => {
            eprintln!("flower-supernode: {reason}");
            return ExitCode::from(2);
        }
    };
    if insecure {
        tracing::warn!(
            "INSECURE MODE: the SuperLink's certificate is not verified. Development only."
        );
    }
    if settings.ephemeral_identity && settings.virtual_nodes.is_none() {
        tracing::warn!(
            "no --auth-supernode-private-key: using an ephemeral key (only a SuperLink without --enable-supernode-auth accepts it)"
        );
    }
    tracing::info!(
        superlink = %settings.superlink,
        key = %settings.identity.public_key().fingerprint(),
        clientappio = %settings.clientappio_address,
        "starting SuperNode"
    );
    let shutdown = CancellationToken::new();
    if let Some(address) = health_address {
        match ops::http::start_health(address, shutdown.clone()).await {
            Ok(address) => tracing::info!(%address, "health at http://{address}/health"),
            Err(error) => {
                eprintln!("flower-supernode: health endpoint on {address}: {error}");
                return ExitCode::FAILURE;
            }
        }
    }
    let (state, _) = tokio::sync::watch::channel(NodeState::Connecting);
    let cnn = std::sync::Arc::new(node::apps::CnnClient::new(settings.backend));
    // In process, the node itself trains: set the device up now, so a missing one stops it here.
    // Virtual SuperNodes set it up when a native app first needs it: most simulations run
    // Flower's apps, which bring their own.
    if matches!(settings.isolation, node::isolation::Isolation::InProcess)
        && settings.virtual_nodes.is_none()
    {
        match cnn.prepare() {
            Ok(device) => tracing::info!(%device, "training device"),
            Err(reason) => {
                eprintln!("flower-supernode: {reason}");
                return ExitCode::FAILURE;
            }
        }
    }
    let apps = node::apps::client_apps(cnn);
    let daemon = tokio::spawn(daemon::run(settings, apps, shutdown.clone(), state));
    tokio::pin!(daemon);
    let result = tokio::select! {
        result = &mut daemon => result,
        _ = ops::shutdown::requested() => {
            tracing::info!("shutting down");
            shutdown.cancel();
            daemon.await
        }
    };
    match result {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(error)) => {
            eprintln!("flower-supernode: {error}");
            ExitCode::FAILURE
        }
        Err(panic) => {
            eprintln!("flower-supernode: internal error: {panic}");
            ExitCode::FAILURE
        }
    }
}
