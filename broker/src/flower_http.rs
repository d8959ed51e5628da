//! Flower's HTTP port (`--host`, `--port`; 127.0.0.1:8000 as Flower's SuperLink), served by
//! `flower_runtime::link`: Flower's Fleet API for Flower's own SuperNodes ([`crate::flower_fleet`])
//! and, unless operators sign in with keys, Flower's Control API for Flower's own `flwr`
//! ([`crate::flower_control`]). HTTPS with the SuperLink's certificate, plain HTTP under
//! `--insecure`, as Flower's SuperLink.

use crate::config::OperatorAuth;
use crate::state::Shared;
use flower_runtime::control::Control;
use flower_runtime::fleet::Fleet;
use flower_runtime::link::Link;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Where Flower's HTTP API listens, whether failing to bind it fails the start, and whether it
/// speaks TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowerHttp {
    /// The address.
    pub address: SocketAddr,
    /// Given on the command line: a bind failure is an error, not a warning.
    pub required: bool,
    /// HTTPS with the SuperLink's certificate; plain HTTP under `--insecure`.
    pub tls: bool,
}

/// Binds Flower's HTTP API; `None` (with a warning) when an address nobody asked for is taken.
pub fn bind(http: FlowerHttp) -> Result<Option<std::net::TcpListener>, std::io::Error> {
    match std::net::TcpListener::bind(http.address) {
        Ok(listener) => {
            listener.set_nonblocking(true)?;
            Ok(Some(listener))
        }
        Err(error) if !http.required => {
            tracing::warn!(
                address = %http.address,
                %error,
                "Flower's HTTP API is off (Flower's own flwr and SuperNodes cannot reach this SuperLink): give --port"
            );
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

/// Serves Flower's HTTP API on `listener` until `shutdown`, with the sweep of Flower
/// SuperNodes' liveness beside it.
pub fn spawn(
    listener: std::net::TcpListener,
    shared: &Arc<Shared>,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let control = match shared.config.operator_auth {
        OperatorAuth::LoopbackOnly => Some(Control::new(
            Arc::new(crate::flower_control::Host(Arc::downgrade(shared))),
            shared.config.flower_http.is_some_and(|http| http.tls),
        )),
        OperatorAuth::Keys(_) => {
            tracing::info!(
                "Flower's HTTP Control API is off: operators sign in with keys, with flower-rs's flwr"
            );
            None
        }
    };
    let fleet = Fleet::new(Arc::new(crate::flower_fleet::Host::new(shared)));
    let tls = match shared.config.flower_http.is_some_and(|http| http.tls) {
        true => {
            let config = certs::tls::https_server_config(
                shared.config.chain.clone(),
                shared.config.key.clone_key(),
            )
            .map_err(std::io::Error::other)?;
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
        }
        false => None,
    };
    let link = Link {
        control,
        fleet: Some(fleet.clone()),
        tls,
    };
    let sweep = tokio::spawn(crate::flower_fleet::sweep(
        Arc::downgrade(shared),
        fleet,
        shutdown.clone(),
    ));
    Ok(tokio::spawn(async move {
        flower_runtime::link::serve(listener, link, shutdown).await;
        let _ = sweep.await;
    }))
}
