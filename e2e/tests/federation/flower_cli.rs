//! Flower 1.42's own `flwr` (from PyPI, in `target/flower-venv`) against flower-superlink's
//! HTTP Control API, unchanged, with Flower's config file: `flwr run`, `ls`, `log`, `stop`, and
//! `supernode register`, `list` and `unregister`.

use crate::runs::{follow, start_run};
use broker::config::{BrokerConfig, NodeAuth};
use broker::flower_http::FlowerHttp;
use e2e::{Db, Federation, PATIENCE, RunningNode, flower_program};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use wire::RunId;
use wire::control::RunStatus;

fn with_flower_http(config: &mut BrokerConfig) {
    config.flower_http = Some(FlowerHttp {
        address: SocketAddr::from(([127, 0, 0, 1], 0)),
        required: true,
        tls: false,
    });
}

/// Flower's `flwr` with a `FLWR_HOME` whose config names this SuperLink as the default.
struct FlowerCli {
    home: tempfile::TempDir,
}

impl FlowerCli {
    fn for_superlink(address: SocketAddr) -> Self {
        let home = tempfile::tempdir().unwrap();
        let config = format!(
            "[superlink]\ndefault = \"flower-rs\"\n\n[superlink.flower-rs]\naddress = \"{address}\"\ninsecure = true\n"
        );
        std::fs::write(home.path().join("config.toml"), config).unwrap();
        FlowerCli { home }
    }

    /// Runs `flwr args...`: its exit status and what it printed (stdout, then stderr).
    async fn run(&self, args: &[&str]) -> (bool, String) {
        let (ok, stdout, stderr) = self.run_apart(args).await;
        (ok, format!("{stdout}{stderr}"))
    }

    /// Runs `flwr args...`: its exit status, its stdout and its stderr.
    async fn run_apart(&self, args: &[&str]) -> (bool, String, String) {
        let output = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::process::Command::new(flower_program("flwr"))
                .args(args)
                .env("FLWR_HOME", self.home.path())
                .current_dir(self.home.path())
                .env("NO_COLOR", "1")
                .env("COLUMNS", "200")
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("flwr finished within a minute")
        .expect("flwr started");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

async fn status_of(federation: &Federation, run_id: RunId) -> RunStatus {
    crate::runs::run_info(federation, run_id).await.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flowers_own_flwr_lists_shows_the_log_of_and_stops_runs() {
    let federation =
        Federation::start_tuned(NodeAuth::Automatic, false, Db::Memory, with_flower_http).await;
    let address = federation.broker().flower_http_addr.expect("served");
    let flwr = FlowerCli::for_superlink(address);
    let mut node = RunningNode::start(federation.node_settings_with(None, "value=1"));
    node.online().await;

    let done = start_run(&federation, "num-server-rounds=2 min-nodes=1").await;
    let (_, status) = follow(&federation, done).await;
    assert_eq!(status, RunStatus::Completed);

    let (ok, out, err) = flwr.run_apart(&["ls", "--format", "json"]).await;
    assert!(ok, "{out}{err}");
    let json: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(json["runs"][0]["run-id"], done.to_string(), "{out}");
    assert_eq!(json["runs"][0]["status"], "finished:completed", "{out}");
    let (ok, out) = flwr.run(&["ls", "--run-id", &done.to_string()]).await;
    assert!(ok && out.contains("finished:completed"), "{out}");

    let (ok, out) = flwr.run(&["log", &done.to_string(), "--show"]).await;
    assert!(ok, "{out}");
    assert!(out.contains("[ROUND 2/2]"), "the run's log: {out}");
    // Streaming a finished run's log ends with its last line.
    let (ok, out) = flwr.run(&["log", &done.to_string()]).await;
    assert!(ok && out.contains("finished: finished:completed"), "{out}");

    // A run that waits for nodes it will never have, stopped by Flower's flwr.
    let waiting = start_run(&federation, "min-nodes=5 node-wait-timeout=60").await;
    let (ok, out) = flwr.run(&["stop", &waiting.to_string()]).await;
    assert!(ok, "{out}");
    let deadline = Instant::now() + PATIENCE;
    while status_of(&federation, waiting).await != RunStatus::Stopped {
        assert!(Instant::now() < deadline, "the run was not stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Flower's errors, as Flower's flwr prints them.
    let (ok, out) = flwr.run(&["stop", &done.to_string()]).await;
    assert!(!ok && out.contains("already finished"), "{out}");
    let (ok, out) = flwr.run(&["ls", "--run-id", "12345"]).await;
    assert!(!ok && out.contains("not found"), "{out}");
    node.stop().await.unwrap();
}

fn on_every_interface(config: &mut BrokerConfig) {
    config.flower_http = Some(FlowerHttp {
        address: SocketAddr::from(([0, 0, 0, 0], 0)),
        required: true,
        tls: false,
    });
}

#[tokio::test]
async fn flowers_http_control_api_answers_loopback_only_and_never_beside_operator_keys() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let federation =
        Federation::start_tuned(NodeAuth::Automatic, false, Db::Memory, on_every_interface).await;
    let port = federation.broker().flower_http_addr.expect("served").port();
    let ask = |ip: std::net::IpAddr, headers: &'static str| async move {
        let mut stream = tokio::net::TcpStream::connect((ip, port)).await.unwrap();
        let request = format!(
            "POST /v1/control/list-runs HTTP/1.1\r\n{headers}Content-Length: 0\r\n\
             Connection: close\r\n\r\n"
        );
        let _ = stream.write_all(request.as_bytes()).await;
        let mut response = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut response)).await;
        String::from_utf8_lossy(&response).into_owned()
    };
    let loopback = std::net::Ipv4Addr::LOCALHOST.into();
    let answer = ask(
        loopback,
        "Host: 127.0.0.1:8000\r\nContent-Type: application/protobuf\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // A web page that rebound its own name to this machine: its host, or its origin, gives it
    // away; a form's content type is not Flower's.
    let answer = ask(
        loopback,
        "Host: rebound.example:8000\r\nContent-Type: application/protobuf\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    let answer = ask(
        loopback,
        "Host: localhost\r\nOrigin: http://rebound.example\r\nContent-Type: application/protobuf\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    let answer = ask(loopback, "Host: localhost\r\nContent-Type: text/plain\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 415"), "{answer}");
    // `flwr login` hears what Flower's own SuperLink says: there are no accounts.
    let mut stream = tokio::net::TcpStream::connect((loopback, port))
        .await
        .unwrap();
    let request = "POST /v1/control/get-login-details HTTP/1.1\r\nHost: localhost\r\n\
                   Content-Type: application/protobuf\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut response)).await;
    let answer = String::from_utf8_lossy(&response);
    assert!(answer.starts_with("HTTP/1.1 501"), "{answer}");
    assert!(answer.contains("\"code\":19"), "{answer}");
    let outward = {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        socket
            .connect("192.0.2.1:9")
            .expect("a route off this machine");
        socket.local_addr().unwrap().ip()
    };
    // The port serves Flower's SuperNodes everywhere; its Control API only to loopback peers.
    let answer = ask(
        outward,
        "Host: localhost\r\nContent-Type: application/protobuf\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{outward}: {answer}");
    assert!(answer.contains("loopback only"), "{answer}");

    // Beside operator keys, the port serves Flower's SuperNodes and no Control API at all.
    let keyed =
        Federation::start_tuned(NodeAuth::Automatic, true, Db::Memory, with_flower_http).await;
    let port = keyed.broker().flower_http_addr.expect("served").port();
    let mut stream = tokio::net::TcpStream::connect((loopback, port))
        .await
        .unwrap();
    let request = "POST /v1/control/list-runs HTTP/1.1\r\nHost: localhost\r\n\
                   Content-Type: application/protobuf\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut response)).await;
    let answer = String::from_utf8_lossy(&response);
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(answer.contains("sign in with keys"), "{answer}");
}

fn with_flower_http_and_serverapp(config: &mut BrokerConfig) {
    with_flower_http(config);
    crate::flower_apps::with_flower_serverapp(config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flowers_own_flwr_runs_a_flower_app_directory_with_its_config_and_overrides() {
    let federation = Federation::start_tuned(
        NodeAuth::Automatic,
        false,
        Db::Memory,
        with_flower_http_and_serverapp,
    )
    .await;
    let flwr = FlowerCli::for_superlink(federation.broker().flower_http_addr.expect("served"));
    let _nodes = crate::flower_apps::flower_nodes(&federation, 2).await;
    let app = crate::flower_apps::echo_app();
    let app = app.to_str().unwrap();

    let (ok, out) = flwr.run(&["run", app, "--run-config", "nope=1"]).await;
    assert!(!ok && out.contains("unknown key \"nope\""), "{out}");

    let (ok, out, err) = flwr
        .run_apart(&["run", app, "--format", "json", "--run-config", "factor=3.0"])
        .await;
    assert!(ok, "{out}{err}");
    let json: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    let run_id = RunId(json["run-id"].as_str().unwrap().parse().unwrap());
    let (lines, status) = crate::flower_apps::follow(&federation, run_id).await;
    assert_eq!(status, RunStatus::Completed, "{lines:#?}");
    // The app's own config (its rounds, its defaults) with factor 3 fused in: 3 times [0, 1, 2, 3].
    assert!(
        lines
            .iter()
            .any(|line| line.contains("final [0.0, 3.0, 6.0, 9.0]")),
        "{lines:#?}"
    );

    // flwr pull answers with a link; the link gives the run's artifacts as a ZIP archive.
    let (ok, out) = flwr.run(&["pull", &run_id.to_string()]).await;
    assert!(ok, "{out}");
    let url = out
        .split_whitespace()
        .find(|word| word.starts_with("http://"))
        .unwrap_or_else(|| panic!("no link in {out}"));
    let path = url.split_once("://").unwrap().1;
    let (authority, path) = path.split_at(path.find('/').unwrap());
    let (status, archive) = http_get(authority, path).await;
    assert_eq!(status, 200);
    let files = app_bundle::fab::unzip(&archive).unwrap();
    assert!(files.contains_key("final.npy"), "{:?}", files.keys());
    // Another token is no link.
    let forged = path.replace(&path[14..20], "000000");
    assert_eq!(http_get(authority, &forged).await.0, 404);
}

/// `GET path` from `authority` (host:port): the status and the body.
async fn http_get(authority: &str, path: &str) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(authority).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    let status = String::from_utf8_lossy(&response[9..12]).parse().unwrap();
    let body = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    (status, response[body..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flowers_own_flwr_registers_lists_and_unregisters_supernodes() {
    use wire::control::NodeStatus;
    let federation =
        Federation::start_tuned(NodeAuth::Registered, false, Db::Memory, with_flower_http).await;
    let flwr = FlowerCli::for_superlink(federation.broker().flower_http_addr.expect("served"));
    let key = federation.path("keys/client_credentials_1.pub");
    let key = key.to_str().unwrap();

    let (ok, out, err) = flwr
        .run_apart(&["supernode", "register", key, "--format", "json"])
        .await;
    assert!(ok, "{out}{err}");
    let json: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    let node_id = wire::NodeId(json["node-id"].as_u64().expect("a node id"));
    // The key Flower's flwr registered is one this SuperLink admits.
    let mut node = RunningNode::start(federation.node_settings(Some("client_credentials_1")));
    assert_eq!(node.online().await, node_id);

    let (ok, out, err) = flwr
        .run_apart(&["supernode", "list", "--format", "json"])
        .await;
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&node_id.to_string()) && out.contains("online"),
        "{out}"
    );

    let (ok, out) = flwr.run(&["supernode", "register", key]).await;
    assert!(!ok && out.contains("already in use"), "{out}");

    let (ok, out) = flwr
        .run(&["supernode", "unregister", &node_id.to_string()])
        .await;
    assert!(ok, "{out}");
    federation
        .wait_for_status(node_id, NodeStatus::Unregistered)
        .await;
    assert!(node.finished().await.is_err(), "the node is cut off");
}
