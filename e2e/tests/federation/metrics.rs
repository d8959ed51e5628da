//! The Prometheus endpoint answers a plain HTTP GET with the registry's numbers, in text a
//! Prometheus parser reads.

use broker::config::NodeAuth;
use e2e::{Db, Federation, RunningNode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

async fn get(address: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// The page's samples, parsed by a Prometheus text-format parser.
fn parse(response: &str) -> prometheus_parse::Scrape {
    let (_, body) = response.split_once("\r\n\r\n").expect("a body");
    let lines = body.lines().map(|line| Ok(line.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("Prometheus text")
}

/// The value of `metric` whose labels include `label` (`None`: any), if exactly one sample does.
fn value(scrape: &prometheus_parse::Scrape, metric: &str, label: Option<(&str, &str)>) -> f64 {
    let matching: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "{metric} {label:?}: {:#?}",
        scrape.samples
    );
    match matching[0].value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{metric}: {other:?}"),
    }
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
        response.contains("content-type: application/openmetrics-text"),
        "{response}"
    );
    let scrape = parse(&response);
    let status = |s| Some(("status", s));
    assert_eq!(value(&scrape, "flwr_nodes", status("online")), 1.0);
    assert_eq!(value(&scrape, "flwr_nodes", status("registered")), 1.0);
    assert_eq!(value(&scrape, "flwr_nodes", status("offline")), 0.0);
    assert_eq!(value(&scrape, "flwr_runs", status("running")), 0.0);
    assert_eq!(
        value(
            &scrape,
            "flwr_handshake_failures_total",
            Some(("reason", "tls"))
        ),
        1.0
    );
    assert_eq!(value(&scrape, "flwr_queued_instructions", None), 0.0);
    assert!(value(&scrape, "flwr_bytes_received_total", None) > 0.0);

    // The node goes: the gauges follow without a registry scan.
    node.stop().await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let scrape = parse(&get(address, "/metrics").await);
        if value(&scrape, "flwr_nodes", status("offline")) == 1.0 {
            assert_eq!(value(&scrape, "flwr_nodes", status("online")), 0.0);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the node never went offline"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(get(address, "/other").await.starts_with("HTTP/1.1 404"));
}
