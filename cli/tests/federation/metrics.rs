//! The Prometheus endpoint answers a plain HTTP GET with the registry's numbers.

use crate::harness::{Db, Federation, RunningNode};
use broker::config::NodeAuth;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

async fn get(address: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn the_metrics_endpoint_reports_nodes_runs_and_refusals() {
    let federation = Federation::start(NodeAuth::Registered, false, Db::Memory).await;
    let address = federation.broker().metrics_addr.expect("metrics enabled");
    federation.register("client_credentials_1").await;
    federation.register("client_credentials_2").await;
    let mut node = RunningNode::start(federation.node_settings(Some("client_credentials_1")));
    node.online().await;
    // An unregistered key is refused and counted.
    let stranger = RunningNode::start(federation.node_settings(Some("client_credentials_3")));
    assert!(stranger.finished().await.is_err());

    let response = get(address, "/metrics").await;
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(
        response.contains("Content-Type: text/plain; version=0.0.4"),
        "{response}"
    );
    assert!(
        response.contains("flwr_nodes{status=\"online\"} 1"),
        "{response}"
    );
    assert!(
        response.contains("flwr_nodes{status=\"registered\"} 1"),
        "{response}"
    );
    assert!(
        response.contains("flwr_runs{status=\"running\"} 0"),
        "{response}"
    );
    assert!(
        response.contains("flwr_handshake_failures_total{reason=\"tls\"} 1"),
        "{response}"
    );
    assert!(
        response.contains("flwr_queued_instructions 0"),
        "{response}"
    );
    let bytes_in = response
        .lines()
        .find_map(|l| l.strip_prefix("flwr_bytes_received_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap();
    assert!(bytes_in > 0, "{response}");
    assert!(get(address, "/other").await.starts_with("HTTP/1.1 404"));
    node.stop().await.unwrap();
}
