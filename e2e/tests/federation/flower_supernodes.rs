//! Flower 1.42's own `flower-supernode` (from PyPI, in `target/flower-venv`), unchanged, against
//! flower-superlink's HTTP Fleet API: registered keys over TLS, runs of Flower's SuperNodes alone
//! and beside this project's, and an unregistered key cut off.

use crate::flower_apps::{echo_app, flower_nodes, follow, start_flower_app, with_flower_serverapp};
use crate::handmade_supernode::{HandmadeSuperNode, node};
use broker::config::{BrokerConfig, NodeAuth};
use broker::flower_http::FlowerHttp;
use e2e::{Db, Federation, PATIENCE, flower_program};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use wire::NodeId;
use wire::control::{NodeStatus, RunStatus};

fn with_flower_https(config: &mut BrokerConfig) {
    with_flower_serverapp(config);
    config.dashboard = Some(broker::dashboard::DashboardConfig::at(SocketAddr::from((
        [127, 0, 0, 1],
        0,
    ))));
    config.flower_http = Some(FlowerHttp {
        address: SocketAddr::from(([127, 0, 0, 1], 0)),
        required: true,
        tls: true,
    });
}

/// A free loopback port (for a SuperNode's own runtime API).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `flower-supernode` process, its group killed when dropped.
pub(crate) struct FlowerSuperNode {
    child: tokio::process::Child,
    log: PathBuf,
}

impl FlowerSuperNode {
    /// Starts Flower's SuperNode against the federation's SuperLink over TLS, trusting its CA,
    /// signing with `keys/<key>`.
    pub(crate) fn start(federation: &Federation, key: &str) -> Self {
        let address = federation.broker().flower_http_addr.expect("served");
        let log = federation.path(&format!("flower-supernode-{key}.log"));
        let output = std::fs::File::create(&log).unwrap();
        let bin = flower_program("flower-supernode");
        let path = format!(
            "{}:{}",
            bin.parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let child = tokio::process::Command::new(&bin)
            .arg("--superlink")
            .arg(address.to_string())
            .arg("--root-certificates")
            .arg(federation.path("certificates/ca.crt"))
            .arg("--auth-supernode-private-key")
            .arg(federation.path(&format!("keys/{key}")))
            .arg("--port")
            .arg(free_port().to_string())
            .current_dir(federation.path(""))
            .env("PATH", path)
            .env("FLWR_HOME", federation.path(&format!("flwr-home-{key}")))
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("flower-supernode started");
        FlowerSuperNode { child, log }
    }

    /// What it printed so far.
    pub(crate) fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until it exited on its own, within `patience`; whether it did.
    async fn exits_within(&mut self, patience: Duration) -> bool {
        tokio::time::timeout(patience, self.child.wait())
            .await
            .is_ok()
    }
}

impl Drop for FlowerSuperNode {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            let group = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Registers `keys/<key>.pub` and waits until Flower's SuperNode with that key is online.
async fn registered_flower_supernode(
    federation: &Federation,
    key: &str,
) -> (NodeId, FlowerSuperNode) {
    let node_id = federation.register(key).await;
    let supernode = FlowerSuperNode::start(federation, key);
    let deadline = tokio::time::Instant::now() + PATIENCE * 4;
    while federation.status_of(node_id).await != Some(NodeStatus::Online) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "Flower's SuperNode never came online:\n{}",
            supernode.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (node_id, supernode)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flowers_own_supernodes_join_with_registered_keys_over_tls_and_complete_a_run() {
    let federation =
        Federation::start_tuned(NodeAuth::Registered, false, Db::Memory, with_flower_https).await;
    let (first, one) = registered_flower_supernode(&federation, "client_credentials_1").await;
    let (_, two) = registered_flower_supernode(&federation, "client_credentials_2").await;

    let run_id = start_flower_app(&federation, &echo_app(), &["factor=3.0".into()]).await;
    let (lines, status) = follow(&federation, run_id).await;
    assert_eq!(
        status,
        RunStatus::Completed,
        "{lines:#?}\n{}\n{}",
        one.output(),
        two.output()
    );
    assert!(
        lines
            .iter()
            .any(|line| line.contains("final [0.0, 3.0, 6.0, 9.0]")),
        "{lines:#?}"
    );

    // Unregistering a key cuts its SuperNode off: refused at its next call, it stops.
    let mut one = one;
    federation
        .request(wire::control::ControlRequest::UnregisterNode { node_id: first })
        .await;
    assert!(
        one.exits_within(Duration::from_secs(90)).await,
        "an unregistered SuperNode kept going:\n{}",
        one.output()
    );
    assert_eq!(
        federation.status_of(first).await,
        Some(NodeStatus::Unregistered)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_mixes_flowers_own_supernodes_and_a_flower_rs_supernode() {
    let federation =
        Federation::start_tuned(NodeAuth::Automatic, false, Db::Memory, with_flower_https).await;
    let (_, one) = registered_flower_supernode(&federation, "client_credentials_1").await;
    let (_, two) = registered_flower_supernode(&federation, "client_credentials_2").await;
    let _ours = flower_nodes(&federation, 1).await;
    // The dashboard tells them apart.
    let dashboard = federation.broker().dashboard_addr.expect("dashboard on");
    let (status, _, body) = crate::dashboard::get(dashboard, "/nodes.json", "").await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut protocols: Vec<&str> = json["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|node| node["protocol"].as_str().unwrap_or("-"))
        .collect();
    protocols.sort();
    assert_eq!(protocols, ["flower-http", "flower-http", "quic"], "{body}");
    // And so does the Control API `flwr supernode list` asks.
    let wire::control::ControlResponse::OnlineProtocols(online) = federation
        .request(wire::control::ControlRequest::OnlineProtocols)
        .await
    else {
        panic!("no protocols");
    };
    let mut online: Vec<&str> = online.iter().map(|(_, p)| p.as_str()).collect();
    online.sort();
    assert_eq!(online, ["flower-http", "flower-http", "quic"]);

    let run_id = start_flower_app(&federation, &echo_app(), &[]).await;
    let (lines, status) = follow(&federation, run_id).await;
    assert_eq!(
        status,
        RunStatus::Completed,
        "{lines:#?}\n{}\n{}",
        one.output(),
        two.output()
    );
    // Three nodes answered, two of them Flower's, and all doubled [0, 1, 2, 3].
    assert!(
        lines.iter().any(|line| line.contains("Received 3 results")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|line| line.contains("final [0.0, 2.0, 4.0, 6.0]")),
        "{lines:#?}"
    );
}

fn with_flower_http(config: &mut BrokerConfig) {
    with_flower_serverapp(config);
    config.flower_http = Some(FlowerHttp {
        address: SocketAddr::from(([127, 0, 0, 1], 0)),
        required: true,
        tls: false,
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_api_refuses_forged_stale_replayed_and_foreign_requests_and_bad_objects() {
    use flower_runtime::proto;
    use prost::Message as _;
    let federation =
        Federation::start_tuned(NodeAuth::Registered, false, Db::Memory, with_flower_http).await;
    let first_id = federation.register("client_credentials_1").await;
    let second_id = federation.register("client_credentials_2").await;
    let first = HandmadeSuperNode::new(&federation, "client_credentials_1");
    let second = HandmadeSuperNode::new(&federation, "client_credentials_2");
    let stranger = HandmadeSuperNode::new(&federation, "client_credentials_3");
    let activate = |who: &HandmadeSuperNode| proto::ActivateNodeRequest {
        public_key: who.pem(),
        heartbeat_interval: 30.0,
    };

    // A signed activation, then the same bytes again: a replay.
    let headers = first.headers();
    let body = activate(&first).encode_to_vec();
    let answer = first.send("activate-node", &headers, &body).await;
    let activated: proto::ActivateNodeResponse = answer.decode();
    assert_eq!(activated.node_id, first_id.0);
    assert_eq!(
        first.send("activate-node", &headers, &body).await.status,
        401
    );
    // Signed too long ago, or ahead of the clock, or by another key.
    let now = wire::message::now_ms();
    let stale = first.headers_at(now - 400_000, &first.key);
    assert_eq!(first.send("activate-node", &stale, &body).await.status, 401);
    let ahead = first.headers_at(now + 60_000, &first.key);
    assert_eq!(first.send("activate-node", &ahead, &body).await.status, 401);
    let forged = first.headers_at(now, &second.key);
    assert_eq!(
        first.send("activate-node", &forged, &body).await.status,
        401
    );
    // Another key in the body than the one that signed.
    let answer = first.call("activate-node", &activate(&second)).await;
    assert_eq!(answer.status, 401);
    // A key nobody registered may neither register itself nor come online.
    let answer = stranger
        .call(
            "register-node",
            &proto::RegisterNodeFleetRequest {
                public_key: stranger.pem(),
            },
        )
        .await;
    assert_eq!((answer.status, answer.code()), (412, 2001));
    let answer = stranger.call("activate-node", &activate(&stranger)).await;
    assert_eq!((answer.status, answer.code()), (412, 2004));
    // Nothing of its body is waited for: a stranger announcing a body and sending none is
    // answered at once, not when the body's time runs out.
    let started = std::time::Instant::now();
    let answer = stranger
        .send(
            "push-messages",
            &format!("{}Content-Length: 1000\r\n", stranger.headers()),
            b"",
        )
        .await;
    assert_eq!(answer.status, 401);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // A registered node speaking for another one.
    second
        .call("activate-node", &activate(&second))
        .await
        .decode::<proto::ActivateNodeResponse>();
    let answer = second
        .call(
            "pull-messages",
            &proto::PullMessagesRequest {
                node: node(first_id),
                message_ids: Vec::new(),
            },
        )
        .await;
    assert_eq!(answer.status, 401);
    // Heartbeats outside Flower's bounds; a run the node holds nothing of.
    let answer = first
        .call(
            "send-node-heartbeat",
            &proto::SendNodeHeartbeatRequest {
                node: node(first_id),
                heartbeat_interval: 1.0,
            },
        )
        .await;
    assert_eq!((answer.status, answer.code()), (400, 2003));
    let answer = first
        .call(
            "get-run",
            &proto::GetRunRequest {
                node: node(first_id),
                run_id: 12345,
            },
        )
        .await;
    assert_eq!((answer.status, answer.code()), (403, 2008));
    // A body over its bound is refused before it is read.
    let answer = first
        .send(
            "push-messages",
            &format!("{}Content-Length: 2097152\r\n", first.headers()),
            b"",
        )
        .await;
    assert_eq!(answer.status, 413);

    // A run for both: each pulls its instruction.
    let run_id = start_flower_app(&federation, &echo_app(), &[]).await;
    // Before it holds one of its instructions, a node may not read the run.
    let answer = first
        .call(
            "get-run",
            &proto::GetRunRequest {
                node: node(first_id),
                run_id: run_id.0,
            },
        )
        .await;
    assert_eq!((answer.status, answer.code()), (403, 2008));
    let pull = |who: &'static str, id: NodeId| {
        let supernode = if who == "first" { &first } else { &second };
        async move {
            let deadline = tokio::time::Instant::now() + PATIENCE * 4;
            loop {
                let pulled: proto::PullMessagesResponse = supernode
                    .call(
                        "pull-messages",
                        &proto::PullMessagesRequest {
                            node: node(id),
                            message_ids: Vec::new(),
                        },
                    )
                    .await
                    .decode();
                if let (Some(message), Some(tree)) = (
                    pulled.messages_list.first(),
                    pulled.message_object_trees.first(),
                ) {
                    return (message.metadata.clone().unwrap(), tree.clone());
                }
                assert!(tokio::time::Instant::now() < deadline, "no instruction");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let (instruction, _) = pull("first", first_id).await;
    let (_, _) = pull("second", second_id).await;
    assert_eq!(instruction.run_id, run_id.0);
    // The run, but not another: and objects only of what it holds.
    let run: proto::GetRunResponse = first
        .call(
            "get-run",
            &proto::GetRunRequest {
                node: node(first_id),
                run_id: run_id.0,
            },
        )
        .await
        .decode();
    assert_eq!(run.run.unwrap().run_id, run_id.0);
    let answer = first
        .call(
            "pull-object",
            &proto::PullObjectRequest {
                node: node(first_id),
                run_id: run_id.0,
                object_id: "0".repeat(64),
            },
        )
        .await;
    let missing: proto::PullObjectResponse = answer.decode();
    assert!(!missing.object_found);

    // A reply whose object does not hash to its id is not stored; the right bytes are.
    let mut metadata = proto::Metadata {
        run_id: run_id.0,
        message_id: String::new(),
        src_node_id: first_id.0,
        dst_node_id: instruction.src_node_id,
        reply_to_message_id: instruction.message_id.clone(),
        group_id: instruction.group_id.clone(),
        ttl: instruction.ttl,
        message_type: instruction.message_type.clone(),
        created_at: wire::message::now_ms() as f64 / 1000.0,
        src_task_id: None,
        dst_task_id: None,
    };
    let deflated = flower_runtime::objects::deflate(
        &metadata,
        &flower_runtime::objects::Body::Content(wire::RecordDict::default()),
    )
    .unwrap();
    metadata.message_id = deflated.tree.object_id.clone();
    let pushed: proto::PushMessagesResponse = first
        .call(
            "push-messages",
            &proto::PushMessagesRequest {
                node: node(first_id),
                messages_list: vec![proto::Message {
                    metadata: Some(metadata),
                    content: None,
                    error: None,
                }],
                message_object_trees: vec![deflated.tree.clone()],
                clientapp_runtime_list: vec![0.1],
            },
        )
        .await
        .decode();
    assert_eq!(pushed.objects_to_push.len(), deflated.objects.len());
    let push_object = |id: String, content: Vec<u8>| proto::PushObjectRequest {
        node: node(first_id),
        run_id: run_id.0,
        object_id: id,
        object_content: content,
        session_id: pushed.session_id.clone(),
    };
    let root = deflated.objects.last().unwrap();
    let tampered: proto::PushObjectResponse = first
        .call(
            "push-object",
            &push_object(root.id.clone(), b"not the object".to_vec()),
        )
        .await
        .decode();
    assert!(!tampered.stored);
    for object in &deflated.objects {
        let stored: proto::PushObjectResponse = first
            .call(
                "push-object",
                &push_object(object.id.clone(), object.bytes.clone()),
            )
            .await
            .decode();
        assert!(stored.stored, "object {}", object.id);
    }

    // The second never replies; the run is stopped, and what it would push now is refused.
    federation
        .request(wire::control::ControlRequest::StopRun { run_id })
        .await;
    let answer = second
        .call(
            "push-object",
            &proto::PushObjectRequest {
                node: node(second_id),
                run_id: run_id.0,
                object_id: root.id.clone(),
                object_content: root.bytes.clone(),
                session_id: String::new(),
            },
        )
        .await;
    assert_eq!((answer.status, answer.code()), (403, 2007));
}
