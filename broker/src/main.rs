//! `flower-superlink`: parse flags, open the database, serve until SIGINT or SIGTERM.

use broker::config::{NodeAuth, OperatorAuth};
use broker::settings::{Args, DatabaseLocation};
use broker::store::Store;
use clap::Parser as _;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(reason) = args.log.install(args.log_format) {
        eprintln!("flower-superlink: {reason}");
        return ExitCode::from(2);
    }
    for notice in args.flower.notices() {
        tracing::warn!("{notice}");
    }
    let health_address = args.health_server_address;
    let settings = match args.resolve() {
        Ok(settings) => settings,
        Err(reason) => {
            eprintln!("flower-superlink: {reason}");
            return ExitCode::from(2);
        }
    };
    let store = match &settings.database {
        DatabaseLocation::InMemory => Store::in_memory(),
        DatabaseLocation::File(path) => Store::open(path),
    };
    let store = match store {
        Ok(store) => store,
        Err(error) => {
            eprintln!("flower-superlink: {error}");
            return ExitCode::FAILURE;
        }
    };
    match store.mark_online_nodes_offline(wire::message::now_ms()) {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            nodes = n,
            "nodes left online by the previous run are offline until they reconnect"
        ),
        Err(error) => {
            eprintln!("flower-superlink: {error}");
            return ExitCode::FAILURE;
        }
    }
    if settings.insecure {
        tracing::warn!(
            "INSECURE MODE: self-signed certificate, no node authentication. Development only."
        );
    }
    if settings.config.node_auth == NodeAuth::Automatic {
        tracing::warn!(
            "SuperNode authentication is off: any node that reaches the Fleet API may join (use --enable-supernode-auth)"
        );
    }
    if matches!(settings.config.operator_auth, OperatorAuth::LoopbackOnly) {
        tracing::warn!(
            "no --control-auth-public-keys: the Control API answers loopback clients only"
        );
    }
    match &settings.database {
        DatabaseLocation::InMemory => tracing::info!("database in memory: state is lost on exit"),
        DatabaseLocation::File(path) => tracing::info!(path = %path.display(), "database"),
    }
    let shutdown = CancellationToken::new();
    let broker = match broker::server::start(
        settings.config,
        store,
        settings.fleet_address,
        settings.control_address,
        shutdown.clone(),
    ) {
        Ok(broker) => broker,
        Err(error) => {
            eprintln!("flower-superlink: {error}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(address = %broker.fleet_addr, "Fleet API listening");
    tracing::info!(address = %broker.control_addr, "Control API listening");
    if let Some(address) = broker.flower_http_addr {
        tracing::info!(%address, "Flower's HTTP API listening (Flower's own flower-supernode, and flwr from loopback)");
    }
    if let Some(address) = broker.dashboard_addr {
        let scheme = if address.ip().is_loopback() {
            "http"
        } else {
            "https"
        };
        tracing::info!(%address, "dashboard at {scheme}://{address}/");
    }
    if let Some(address) = broker.metrics_addr {
        tracing::info!(%address, "Prometheus metrics at http://{address}/metrics");
    }
    if let Some(address) = health_address {
        match ops::http::start_health(address, shutdown.clone()).await {
            Ok(address) => tracing::info!(%address, "health at http://{address}/health"),
            Err(error) => {
                eprintln!("flower-superlink: health endpoint on {address}: {error}");
                broker.shutdown();
                broker.join().await;
                return ExitCode::FAILURE;
            }
        }
    }
    ops::shutdown::requested().await;
    tracing::info!("shutting down");
    broker.shutdown();
    broker.join().await;
    ExitCode::SUCCESS
}
