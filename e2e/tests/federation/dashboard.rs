//! The operators' dashboard: what a person sees in a real browser (headless Chromium, Debian's
//! `chromium-headless-shell`, installed by `scripts/install-test-deps`) during a live run, and who
//! may look. Set `DASHBOARD_SCREENSHOTS` to a directory (an absolute path) to have the browser
//! test save a screenshot of each page there: `docs/dashboard/` holds the ones it made.

use broker::config::{BrokerConfig, NodeAuth};
use broker::dashboard::DashboardConfig;
use e2e::{Db, Federation, PATIENCE, RunningNode};
use flwr_sdk::strategy::FedAvg;
use flwr_sdk::strategy::start::{Rounds, start};
use flwr_sdk::{
    AppError, ArrayRecord, ClientApp, ClientContext, Grid, Message, MessageBody, MetricRecord,
    MetricValue, Record, RecordDict, ServerApp, ServerContext, config_i64,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use wire::control::{ControlRequest, ControlResponse, RunStatus};
use wire::{Array, RunId};

/// The app the dashboard watches: FedAvg over one small array with Flower's round loop.
const APP: &str = "dashboard-descent";

/// Its server half: `num-server-rounds` rounds of FedAvg on two nodes (or `min-nodes`).
struct Descent;

impl ServerApp for Descent {
    fn run(&self, grid: &dyn Grid, context: &ServerContext) -> Result<(), AppError> {
        let config = &context.run_config;
        let nodes = config_i64(config, "min-nodes", 2)? as usize;
        let rounds = Rounds {
            num_rounds: config_i64(config, "num-server-rounds", 3)? as u64,
            min_train_nodes: nodes,
            min_evaluate_nodes: nodes,
            min_available_nodes: nodes,
            round_timeout: PATIENCE,
            node_wait: Duration::from_millis(500),
            ..Rounds::default()
        };
        let mut initial = ArrayRecord::new();
        initial.insert("w", Array::from_f32(vec![4], &[1.0; 4]).unwrap());
        start(grid, context, &mut FedAvg::default(), initial, &rounds)?;
        grid.save_artifact("<w>.txt", b"halved")?;
        Ok(())
    }
}

/// Its client half: halves the array and reports the mean as its loss; from round 2 on it trains
/// only once the file the run config's `gate` names exists (so a test sees a run mid-way for as
/// long as it needs); a node configured with an `error-reason` fails its training with those words.
struct Halving;

impl ClientApp for Halving {
    fn handle(&self, message: &Message, context: &ClientContext) -> Result<RecordDict, AppError> {
        let MessageBody::Content(content) = &message.body else {
            return Err(AppError::new("no content"));
        };
        let w = content
            .arrays("arrays")
            .and_then(|a| a.get("w"))
            .and_then(Array::to_f32)
            .ok_or_else(|| AppError::new("no w"))?;
        let mean = f64::from(w.iter().sum::<f32>()) / w.len() as f64;
        let examples = ("num-examples", MetricValue::Int(10));
        if message.metadata.message_type.as_str() == "train" {
            if let Some(wire::ConfigValue::Str(reason)) = context.node_config.get("error-reason") {
                return Err(AppError::new(reason.clone()));
            }
            let round = content
                .config("config")
                .map_or(Ok(0), |config| config_i64(config, "server-round", 0))?;
            if let Some(wire::ConfigValue::Str(gate)) = context.run_config.get("gate")
                && round >= 2
            {
                let deadline = Instant::now() + PATIENCE * 2;
                while !std::path::Path::new(gate).exists() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let halved: Vec<f32> = w.iter().map(|v| v / 2.0).collect();
            let mut arrays = ArrayRecord::new();
            arrays.insert("w", Array::from_f32(vec![4], &halved).unwrap());
            let metrics = MetricRecord::new()
                .with("train_loss", MetricValue::Float(mean))
                .with(examples.0, examples.1);
            return Ok(RecordDict::new()
                .with("arrays", Record::Arrays(arrays))
                .with("metrics", Record::Metrics(metrics)));
        }
        let metrics = MetricRecord::new()
            .with("eval_loss", MetricValue::Float(mean))
            .with("eval_acc", MetricValue::Float(1.0 - mean))
            .with(examples.0, examples.1);
        Ok(RecordDict::new().with("metrics", Record::Metrics(metrics)))
    }
}

fn with_dashboard_at(config: &mut BrokerConfig, address: SocketAddr) {
    config.dashboard = Some(DashboardConfig::at(address));
    config.apps.add(APP, Arc::new(Descent));
}

fn on_loopback(config: &mut BrokerConfig) {
    with_dashboard_at(config, SocketAddr::from(([127, 0, 0, 1], 0)));
}

fn on_every_interface(config: &mut BrokerConfig) {
    with_dashboard_at(config, SocketAddr::from(([0, 0, 0, 0], 0)));
}

fn dashboard(federation: &Federation) -> SocketAddr {
    federation.broker().dashboard_addr.expect("dashboard on")
}

async fn halving_nodes(federation: &Federation, count: usize) -> Vec<RunningNode> {
    let mut nodes = Vec::new();
    for _ in 0..count {
        let mut apps = model::apps::ClientApps::builtin();
        apps.add(APP, Arc::new(Halving));
        let mut node = RunningNode::start_with_apps(federation.node_settings(None), apps);
        node.online().await;
        nodes.push(node);
    }
    nodes
}

async fn start_run(federation: &Federation, overrides: &str) -> RunId {
    let request = ControlRequest::StartRun {
        app_name: APP.into(),
        app_version: "1.0.0".into(),
        config: flwr_sdk::config::parse_overrides(overrides).unwrap(),
    };
    match federation.request(request).await {
        ControlResponse::RunStarted { run_id } => run_id,
        other => panic!("run not started: {other:?}"),
    }
}

async fn status_of(federation: &Federation, run_id: RunId) -> RunStatus {
    crate::runs::run_info(federation, run_id).await.status
}

async fn wait_for(federation: &Federation, run_id: RunId, wanted: fn(RunStatus) -> bool) {
    let deadline = Instant::now() + PATIENCE * 2;
    loop {
        let status = status_of(federation, run_id).await;
        if wanted(status) {
            return;
        }
        assert!(Instant::now() < deadline, "run {run_id} stayed {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The headless browser.
fn chromium() -> PathBuf {
    for candidate in ["/usr/bin/chromium-headless-shell", "/usr/bin/chromium"] {
        if std::path::Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    panic!(
        "the dashboard tests need headless Chromium: apt-get install chromium-headless-shell \
         (scripts/install-test-deps does)"
    );
}

/// Runs headless Chromium on `url` with `profile` and the `extra` flags; returns what it printed.
async fn browse(url: &str, profile: &std::path::Path, extra: &[&str]) -> String {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(chromium())
            // The browser runs as root in CI, where Chromium's sandbox cannot start.
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(url)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser finished within a minute")
    .expect("the browser started");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The DOM of `url` once it loaded and its script ran.
async fn dom(url: &str, profile: &std::path::Path) -> String {
    browse(url, profile, &["--dump-dom"]).await
}

/// The DOM of a finished run's page after its event stream has had its say: the browser waits
/// until the page's network is quiet (the stream ends with the run's `end` event), within a few
/// seconds of the page's time.
async fn dom_after_events(url: &str, profile: &std::path::Path) -> String {
    browse(url, profile, &["--virtual-time-budget=3000", "--dump-dom"]).await
}

/// Saves a screenshot of `url` under `$DASHBOARD_SCREENSHOTS/<name>.png`, when that is set.
async fn screenshot(url: &str, profile: &std::path::Path, name: &str) {
    let Some(dir) = std::env::var_os("DASHBOARD_SCREENSHOTS") else {
        return;
    };
    let path = PathBuf::from(dir).join(format!("{name}.png"));
    let arg = format!("--screenshot={}", path.display());
    browse(
        url,
        profile,
        &[&arg, "--window-size=1280,900", "--hide-scrollbars"],
    )
    .await;
}

/// One plain HTTP/1.1 GET with `headers`: the status code, the response head, the body.
pub(crate) async fn get(address: SocketAddr, path: &str, headers: &str) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(PATIENCE, stream.read_to_string(&mut response))
        .await
        .expect("a response within patience")
        .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// Reads an event stream until `until` matches what arrived, or patience runs out.
async fn read_events(address: SocketAddr, path: String, until: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(PATIENCE * 2, async {
        let mut buffer = [0u8; 65536];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buffer[..n]),
            }
            if String::from_utf8_lossy(&seen).contains(until) {
                return;
            }
        }
    })
    .await;
    String::from_utf8_lossy(&seen).into_owned()
}

/// The chart's points of one series, by its colour (the same as in `metrics.svg`).
fn points(dom: &str, colour: &str) -> usize {
    dom.matches("<circle")
        .zip(dom.split("<circle").skip(1))
        .filter(|(_, rest)| {
            let element = rest.split('>').next().unwrap_or("");
            element.to_ascii_uppercase().contains(colour)
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_sees_nodes_a_live_run_its_chart_and_a_failure_in_a_browser() {
    let federation =
        Federation::start_tuned(NodeAuth::Automatic, false, Db::Memory, on_loopback).await;
    let address = dashboard(&federation);
    let base = format!("http://127.0.0.1:{}", address.port());
    let profile = tempfile::tempdir().unwrap();
    let nodes = halving_nodes(&federation, 2).await;
    let node_ids: Vec<String> = federation
        .nodes(false)
        .await
        .iter()
        .map(|n| n.node_id.to_string())
        .collect();

    let page = dom(&format!("{base}/nodes"), profile.path()).await;
    for id in &node_ids {
        assert!(page.contains(id), "node {id} missing: {page}");
    }
    assert_eq!(page.matches(">online<").count(), 2, "{page}");
    // The script ran (it marks the page live): the content security policy lets it.
    assert!(page.contains("class=\"live"), "{page}");

    let gate = profile.path().join("gate");
    let overrides = format!("num-server-rounds=3 gate=\"{}\"", gate.display());
    let run_id = start_run(&federation, &overrides).await;
    let events = tokio::spawn(read_events(
        address,
        format!("/events/runs/{run_id}"),
        "event: end",
    ));
    // Round 1 finishes; round 2 waits at the gate.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, _, json) = get(address, &format!("/runs/{run_id}.json"), "").await;
        let json: serde_json::Value = serde_json::from_str(&json).unwrap();
        if json["rounds"].as_array().is_some_and(|r| r.len() == 1) {
            break;
        }
        assert!(Instant::now() < deadline, "round 1 never finished: {json}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let page = dom(&format!("{base}/runs"), profile.path()).await;
    assert!(page.contains(&run_id.to_string()), "{page}");
    assert!(page.contains(">running<"), "{page}");
    let page = dom(&format!("{base}/"), profile.path()).await;
    assert!(page.contains("<b>1</b> runs going"), "{page}");
    for id in &node_ids {
        assert!(page.contains(id), "node {id} missing: {page}");
    }
    let page = dom(&format!("{base}/runs/{run_id}"), profile.path()).await;
    assert!(page.contains(">running<"), "{page}");
    assert_eq!(points(&page, "#2CA02C"), 1, "one finished round: {page}");
    screenshot(&format!("{base}/runs/{run_id}"), profile.path(), "run-live").await;

    std::fs::write(&gate, b"").unwrap();
    wait_for(&federation, run_id, RunStatus::is_finished).await;
    assert_eq!(status_of(&federation, run_id).await, RunStatus::Completed);
    let page = dom_after_events(&format!("{base}/runs/{run_id}"), profile.path()).await;
    assert!(page.contains(">finished:completed<"), "{page}");
    // One point per finished round on each series the rounds reported.
    assert_eq!(points(&page, "#2CA02C"), 3, "eval_acc points: {page}");
    assert_eq!(points(&page, "#1F77B4"), 3, "train_loss points: {page}");
    assert!(page.contains("[ROUND 3/3]"), "the log: {page}");
    // The artifact's name is shown as text and linked encoded.
    assert!(page.contains("&lt;w&gt;.txt"), "{page}");
    assert!(page.contains("/artifacts/%3Cw%3E.txt"), "{page}");
    // The event stream told the browser the run ended.
    assert!(page.contains(">finished</span>"), "{page}");

    let stream = events.await.unwrap();
    assert!(
        stream.contains("content-type: text/event-stream"),
        "{stream}"
    );
    assert!(stream.contains("finished:completed"), "{stream}");
    assert!(stream.contains("[ROUND 3/3]"), "{stream}");
    assert!(stream.contains("event: end"), "{stream}");

    let (status, head, body) = get(
        address,
        &format!("/runs/{run_id}/artifacts/%3Cw%3E.txt"),
        "",
    )
    .await;
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains("content-type: application/octet-stream"),
        "{head}"
    );
    assert!(
        head.contains("content-disposition: attachment; filename=\"w.txt\""),
        "{head}"
    );
    assert_eq!(body, "halved");

    let (status, _, json) = get(address, &format!("/runs/{run_id}.json"), "").await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["runs"][0]["run-id"], run_id.to_string());
    assert_eq!(json["runs"][0]["status"], "finished:completed");
    assert_eq!(json["rounds"].as_array().unwrap().len(), 3);
    let (_, _, json) = get(address, &format!("/runs/{run_id}/log.json?after=1"), "").await;
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["lines"][0]["index"], 1);
    assert!(
        json["lines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["text"] == "[ROUND 3/3]")
    );
    assert_eq!(json["more"], false);
    let (_, _, json) = get(address, "/nodes.json", "").await;
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["nodes"].as_array().unwrap().len(), 2);
    assert_eq!(json["nodes"][0]["protocol"], "quic");

    // A run that cannot start its rounds fails, and its page says why.
    let failed = start_run(&federation, "min-nodes=3").await;
    wait_for(&federation, failed, RunStatus::is_finished).await;
    let page = dom(&format!("{base}/runs/{failed}"), profile.path()).await;
    assert!(page.contains(">finished:failed<"), "{page}");
    assert!(page.contains("Why it failed"), "{page}");
    assert!(page.contains("2 of the 3"), "{page}");

    screenshot(&format!("{base}/"), profile.path(), "overview").await;
    screenshot(&format!("{base}/nodes"), profile.path(), "nodes").await;
    screenshot(&format!("{base}/runs"), profile.path(), "runs").await;
    screenshot(&format!("{base}/runs/{run_id}"), profile.path(), "run").await;
    for node in nodes {
        node.stop().await.unwrap();
    }
}

async fn login_link(federation: &Federation) -> (String, Option<String>) {
    match federation.request(ControlRequest::DashboardLink).await {
        ControlResponse::DashboardLink { token, tls, .. } => {
            (if tls { "https" } else { "http" }.to_string(), token)
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn with_operator_keys_a_one_time_link_buys_an_http_only_strict_session() {
    let federation =
        Federation::start_tuned(NodeAuth::Automatic, true, Db::Memory, on_loopback).await;
    let address = dashboard(&federation);
    let (status, _, body) = get(address, "/", "").await;
    assert_eq!(status, 401);
    assert!(body.contains("flwr dashboard"), "{body}");
    let (status, _, _) = get(address, "/nodes.json", "").await;
    assert_eq!(status, 401);

    let (scheme, token) = login_link(&federation).await;
    assert_eq!(scheme, "http", "a loopback dashboard is plain HTTP");
    let token = token.expect("a token with operator keys");
    let (status, head, _) = get(address, &format!("/login?token={token}"), "").await;
    assert_eq!(status, 303, "{head}");
    assert!(head.contains("location: /"), "{head}");
    let cookie = head
        .lines()
        .find_map(|line| line.strip_prefix("set-cookie: "))
        .expect("a session cookie");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    let session = cookie.split(';').next().unwrap();

    // The link works once.
    let (status, _, _) = get(address, &format!("/login?token={token}"), "").await;
    assert_eq!(status, 403);
    let (status, _, body) = get(address, "/", &format!("Cookie: {session}\r\n")).await;
    assert_eq!(status, 200);
    assert!(body.contains("nodes online"), "{body}");
    let forged = format!("Cookie: flwr-dashboard={}\r\n", "0".repeat(64));
    let (status, _, _) = get(address, "/", &forged).await;
    assert_eq!(status, 401);
    // A link is not a session.
    let (status, _, _) = get(address, "/", &format!("Cookie: flwr-dashboard={token}\r\n")).await;
    assert_eq!(status, 401);

    // Read-only, and framed by no one.
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 405"), "{response}");
    assert!(response.contains("x-frame-options: DENY"), "{response}");
    assert!(
        response.contains("content-security-policy: default-src 'none'"),
        "{response}"
    );
}

/// This machine's address on its way out (not loopback), if it has one.
fn outward_address() -> std::net::IpAddr {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    socket
        .connect("192.0.2.1:9")
        .expect("a route off this machine (the test needs an address that is not loopback)");
    socket.local_addr().unwrap().ip()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_the_dashboard_speaks_tls_and_a_browser_signs_in_with_the_link() {
    let federation =
        Federation::start_tuned(NodeAuth::Automatic, true, Db::Memory, on_every_interface).await;
    let port = dashboard(&federation).port();
    let profile = tempfile::tempdir().unwrap();
    let (scheme, token) = login_link(&federation).await;
    assert_eq!(scheme, "https");
    let token = token.unwrap();
    // Plain HTTP gets no page.
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut response)).await;
    assert!(!String::from_utf8_lossy(&response).contains("HTTP/1.1 200"));

    let url = format!("https://127.0.0.1:{port}/login?token={token}");
    let page = browse(
        &url,
        profile.path(),
        &["--ignore-certificate-errors", "--dump-dom"],
    )
    .await;
    assert!(page.contains("nodes online"), "signed in: {page}");
    // The cookie came with the redirect, in the same browser: a second use of the link fails.
    let page = browse(
        &url,
        profile.path(),
        &["--ignore-certificate-errors", "--dump-dom"],
    )
    .await;
    assert!(page.contains("This login link does not work"), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_operator_keys_only_this_machine_under_a_loopback_name_may_look() {
    let federation =
        Federation::start_tuned(NodeAuth::Automatic, false, Db::Memory, on_every_interface).await;
    let port = dashboard(&federation).port();
    let profile = tempfile::tempdir().unwrap();
    let flags = ["--ignore-certificate-errors", "--dump-dom"];
    let page = browse(
        &format!("https://127.0.0.1:{port}/"),
        profile.path(),
        &flags,
    )
    .await;
    assert!(page.contains("nodes online"), "{page}");
    let outward = outward_address();
    let page = browse(
        &format!("https://{outward}:{port}/"),
        profile.path(),
        &flags,
    )
    .await;
    assert!(page.contains("Loopback only"), "{outward}: {page}");
    // A name that resolves to loopback but is not a loopback name: a rebinding web page's.
    let page = browse(
        &format!("https://rebound.example:{port}/"),
        profile.path(),
        &[
            "--ignore-certificate-errors",
            "--host-resolver-rules=MAP rebound.example 127.0.0.1",
            "--dump-dom",
        ],
    )
    .await;
    assert!(page.contains("Unexpected host name"), "{page}");
}

#[tokio::test]
async fn event_streams_and_connections_are_bounded_per_source() {
    let federation =
        Federation::start_tuned(NodeAuth::Automatic, false, Db::Memory, on_loopback).await;
    let address = dashboard(&federation);
    let mut streams = Vec::new();
    for _ in 0..broker::dashboard::events::MAX_STREAMS_PER_SOURCE {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"GET /events/nodes HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 64];
        let n = stream.read(&mut head).await.unwrap();
        assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));
        streams.push(stream);
    }
    let (status, _, _) = get(address, "/events/nodes", "").await;
    assert_eq!(status, 429, "one stream too many");
    let (status, _, _) = get(address, "/nodes", "").await;
    assert_eq!(status, 200, "pages still load");
    drop(streams);

    // Connections that send nothing hold their source's allowance until the header timeout;
    // past it, a new connection from that source is closed unanswered.
    let mut idle = Vec::new();
    for _ in 0..broker::dashboard::MAX_CONNECTIONS_PER_SOURCE {
        idle.push(tokio::net::TcpStream::connect(address).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let _ = stream
        .write_all(b"GET /nodes HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut response)).await;
    assert!(
        response.is_empty(),
        "{}",
        String::from_utf8_lossy(&response)
    );
    drop(idle);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _, _) = get(address, "/nodes", "").await;
    assert_eq!(status, 200, "the allowance came back with the connections");
}

#[tokio::test]
async fn flwr_dashboards_link_signs_in_and_a_superlink_without_one_says_how_to_serve_it() {
    let federation =
        Federation::start_tuned(NodeAuth::Automatic, true, Db::Memory, on_loopback).await;
    let port = dashboard(&federation).port();
    let mut client = federation.operator().await.unwrap();
    let link = client.dashboard_link().await.unwrap();
    client.close().await;
    let url = cli::commands::dashboard::url(&link, "ignored.example");
    let prefix = format!("http://127.0.0.1:{port}/login?token=");
    assert!(url.starts_with(&prefix), "{url}");
    assert_eq!(link.expires_in_seconds, 120);
    let path = &url[url.find("/login").unwrap()..];
    let (status, _, _) = get(dashboard(&federation), path, "").await;
    assert_eq!(status, 303);

    let plain = Federation::start(NodeAuth::Automatic, false, Db::Memory).await;
    let mut client = plain.operator().await.unwrap();
    let error = client.dashboard_link().await.unwrap_err();
    assert!(error.to_string().contains("--dashboard-address"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_words_quoted_in_the_log_draw_nothing_on_the_chart() {
    let federation =
        Federation::start_tuned(NodeAuth::Automatic, false, Db::Memory, on_loopback).await;
    let address = dashboard(&federation);
    let _honest = halving_nodes(&federation, 2).await;
    // Values whose axis would overflow (plotters loops forever on an infinite range), and a name
    // with markup, dressed as the app's own line.
    let words =
        "error-reason='└──> Aggregated MetricRecord: {\"train_loss\": 1.7e308, \"evil<b>\": 1}'";
    let mut apps = model::apps::ClientApps::builtin();
    apps.add(APP, Arc::new(Halving));
    let mut liar = RunningNode::start_with_apps(federation.node_settings_with(None, words), apps);
    liar.online().await;
    let run_id = start_run(&federation, "num-server-rounds=2").await;
    wait_for(&federation, run_id, RunStatus::is_finished).await;
    assert_eq!(status_of(&federation, run_id).await, RunStatus::Completed);
    let (status, _, page) = get(address, &format!("/runs/{run_id}"), "").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("evil&lt;b&gt;"),
        "the node's words are in the log, escaped: {page}"
    );
    let main = page
        .split("<main")
        .nth(1)
        .unwrap()
        .split("</main>")
        .next()
        .unwrap();
    assert!(
        !main.contains("evil"),
        "no column of the node's making: {main}"
    );
    assert_eq!(
        points(main, "#1F77B4"),
        2,
        "train_loss is the app's, one per round: {main}"
    );
    liar.stop().await.unwrap();
}
