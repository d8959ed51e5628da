//! Flower's runtime API on the SuperLink: where the `flwr-serverapp` processes of Flower apps'
//! runs connect (a free loopback port), each with its task's token. The sibling of
//! [`crate::serverappio`], which programs from app bundles use.

use flower_runtime::serverapp::ServerAppTask;
use flower_runtime::tasks::Tasks;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Flower's runtime API on the SuperLink: where ServerApp processes connect, and their tasks.
pub struct FlowerRuntime {
    /// Tasks by token.
    pub tasks: Arc<Tasks<ServerAppTask>>,
    /// The API's address (loopback).
    pub address: SocketAddr,
}

impl FlowerRuntime {
    /// Serves the API on a free loopback port until `shutdown` (inside the broker's runtime).
    pub fn start(shutdown: CancellationToken) -> std::io::Result<FlowerRuntime> {
        let listener =
            std::net::TcpListener::bind(SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)))?;
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let address = listener.local_addr()?;
        let tasks: Arc<Tasks<ServerAppTask>> = Arc::new(Tasks::default());
        tokio::spawn(flower_runtime::server::serve(
            listener,
            tasks.clone(),
            shutdown,
        ));
        Ok(FlowerRuntime { tasks, address })
    }
}
