//! A thousand nodes on one broker: light in-process clients (one UDP socket, one QUIC connection
//! each, the real handshake, heartbeats and the real vector-add client app) against a broker in a
//! process of its own, so its memory and CPU can be read from /proc; and a thousand Flower
//! SuperNodes polling Flower's HTTP Fleet API as Flower's own does (a signed pull every 3 s, a
//! heartbeat every 30 s, one connection kept open each). Ignored in `cargo test` (each holds its
//! nodes for a minute); `scripts/load-test` runs them and prints the figures.
//!
//! `FLWR_LOAD_NODES` (1000) and `FLWR_LOAD_HOLD_SECS` (60) change the size; with
//! `FLWR_LOAD_REPORT=path` the figures are also written there as JSON.

use crate::crash::BrokerProcess;
use crate::refusals::authenticate;
use crate::runs::{follow, start_run};
use broker::config::NodeAuth;
use certs::IdentityKey;
use e2e::{Db, Federation};
use flwr_sdk::app::{ClientApp as _, ClientContext};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use wire::control::{NodeStatus, RunStatus};
use wire::fleet::{BrokerFrame, InstructionAck, InstructionHeader, NodeFrame, ReplyOutcome};
use wire::io::{read_message, read_value, write_message, write_value};
use wire::message::now_ms;
use wire::stream::{DEFAULT_CHUNK, Limits};
use wire::{ConfigRecord, MessageBody, NodeId};

/// The broker's default heartbeat, as in production.
const HEARTBEAT: Duration = Duration::from_secs(2);

/// Handshakes in flight at once while the nodes connect.
const CONNECTING_AT_ONCE: usize = 32;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What /proc says about a process: resident memory (bytes) and CPU time used (seconds).
fn process_usage(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // utime and stime, fields 14 and 15 of stat, in USER_HZ (100 per second on Linux).
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    (rss_kib * 1024, ticks as f64 / 100.0)
}

/// Answers one instruction stream with the real vector-add client app.
async fn answer(
    connection: quinn::Connection,
    node_id: NodeId,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Option<()> {
    let header: InstructionHeader = read_value(&mut recv, 1 << 20).await.ok()?;
    let instruction = read_message(&mut recv, Limits::default()).await.ok()?;
    let ack = InstructionAck {
        message_id: instruction.metadata.message_id,
    };
    write_value(&mut send, &ack).await.ok()?;
    send.finish().ok()?;
    let context = ClientContext {
        node_id,
        node_config: ConfigRecord::new(),
        run_config: header.run_config,
        cancelled: Arc::new(AtomicBool::new(false)),
    };
    let content = model::apps::vector_add::Client
        .handle(&instruction, &context)
        .ok()?;
    let reply = instruction.reply(MessageBody::Content(content), now_ms());
    let (mut send, mut recv) = connection.open_bi().await.ok()?;
    write_value(&mut send, &wire::fleet::NodeStream::Reply)
        .await
        .ok()?;
    write_message(&mut send, &reply, DEFAULT_CHUNK).await.ok()?;
    send.finish().ok()?;
    match read_value::<ReplyOutcome, _>(&mut recv, 1 << 16)
        .await
        .ok()?
    {
        ReplyOutcome::Accepted => Some(()),
        ReplyOutcome::Rejected(_) => None,
    }
}

/// One light node: connects, authenticates, heartbeats, answers instructions, until its session
/// ends (counted in `lost`) or `stop`.
#[allow(clippy::too_many_arguments)]
async fn light_node(
    key: IdentityKey,
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    address: SocketAddr,
    connecting: Arc<tokio::sync::Semaphore>,
    online: Arc<AtomicU64>,
    lost: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    let session = {
        let _slot = connecting.acquire().await.unwrap();
        loop {
            let attempt = async {
                let connection = endpoint
                    .connect_with(config.clone(), address, "localhost")
                    .ok()?
                    .await
                    .ok()?;
                let (send, recv, node_id) = authenticate(&connection, &key).await;
                Some((connection, send, recv, node_id))
            };
            if let Some(session) = attempt.await {
                break session;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let (connection, mut send, mut recv, node_id) = session;
    online.fetch_add(1, Ordering::Relaxed);
    let reader = tokio::spawn(async move {
        while read_value::<BrokerFrame, _>(&mut recv, 1 << 16)
            .await
            .is_ok()
        {}
    });
    let mut beat = tokio::time::interval(HEARTBEAT);
    let mut seq = 0;
    loop {
        tokio::select! {
            _ = beat.tick() => {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                seq += 1;
                if write_value(&mut send, &NodeFrame::Heartbeat { seq }).await.is_err() {
                    lost.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
            incoming = connection.accept_bi() => match incoming {
                Ok((s, r)) => {
                    tokio::spawn(answer(connection.clone(), node_id, s, r));
                }
                Err(_) => {
                    lost.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
    reader.abort();
    connection.close(0u32.into(), b"done");
}

/// Holds the nodes for `hold`, listing them every 5 s as `flwr supernode list` does (connect,
/// authenticate, list every node, close) and failing with `lost_why` if one is lost: the fewest
/// listed online, and each listing's time in seconds.
async fn hold_nodes(
    federation: &Federation,
    hold: Duration,
    lost: &AtomicU64,
    lost_why: &str,
) -> (usize, Vec<f64>) {
    let started = Instant::now();
    let mut lowest_online = usize::MAX;
    let mut listing_times = Vec::new();
    while started.elapsed() < hold {
        tokio::time::sleep(Duration::from_secs(5).min(hold)).await;
        let listing = Instant::now();
        let listed = federation.nodes(false).await;
        listing_times.push(listing.elapsed().as_secs_f64());
        let online_now = listed
            .iter()
            .filter(|n| n.status == NodeStatus::Online)
            .count();
        lowest_online = lowest_online.min(online_now);
        assert_eq!(lost.load(Ordering::Relaxed), 0, "{lost_why}");
    }
    (lowest_online, listing_times)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "holds 1,000 nodes for a minute: run by scripts/load-test"]
async fn a_thousand_nodes_stay_online_and_finish_a_round() {
    let nodes = env_or("FLWR_LOAD_NODES", 1000) as usize;
    let hold = Duration::from_secs(env_or("FLWR_LOAD_HOLD_SECS", 60));
    let federation = Federation::prepare(NodeAuth::Automatic, false, Db::File);
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let broker = BrokerProcess::spawn_with(federation.dir.path(), any, any, Some(HEARTBEAT), false);
    federation.write_flwr_toml(broker.control, None);
    let pid = broker.child.id();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (idle_rss, _) = process_usage(pid);

    let endpoint = certs::quic::client_endpoint(broker.fleet).unwrap();
    let roots = certs::load::load_certificates(&federation.certs.ca_cert).unwrap();
    let online = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let connecting = Arc::new(tokio::sync::Semaphore::new(CONNECTING_AT_ONCE));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..nodes {
        // Each node has its own key, hence its own TLS client configuration.
        let key = IdentityKey::generate();
        let tls = certs::tls::client_config(&roots, Some(&key), wire::alpn::FLEET).unwrap();
        let transport = certs::quic::transport(HEARTBEAT * 5, None);
        let config = certs::quic::client_config(tls, transport).unwrap();
        tasks.spawn(light_node(
            key,
            endpoint.clone(),
            config,
            broker.fleet,
            connecting.clone(),
            online.clone(),
            lost.clone(),
            stop.clone(),
        ));
    }
    while online.load(Ordering::Relaxed) < nodes as u64 {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "only {} nodes connected",
            online.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connect_time = started.elapsed();
    let (connected_rss, cpu_before) = process_usage(pid);

    let hold_started = Instant::now();
    let (lowest_online, mut listing_times) =
        hold_nodes(&federation, hold, &lost, "a session ended during the hold").await;
    let (held_rss, cpu_after) = process_usage(pid);
    let cpu_share = (cpu_after - cpu_before) / hold_started.elapsed().as_secs_f64();
    assert_eq!(lowest_online, nodes, "every node listed online throughout");

    let round_started = Instant::now();
    let (_, cpu_before_round) = process_usage(pid);
    let run_id = start_run(
        &federation,
        &format!("num-server-rounds=1 min-nodes={nodes} round-timeout=120.0"),
    )
    .await;
    let (lines, status) = follow(&federation, run_id).await;
    let round_time = round_started.elapsed();
    let (_, cpu_after_round) = process_usage(pid);
    assert_eq!(status, RunStatus::Completed, "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("received {nodes} results and 0 failures"))),
        "{lines:#?}"
    );
    let listed = federation.nodes(true).await;
    assert_eq!(listed.len(), nodes);
    assert!(
        listed.iter().all(|n| n.offline_at_ms.is_none()),
        "no spurious offline"
    );

    let per_node = connected_rss.saturating_sub(idle_rss) as f64 / nodes as f64;
    listing_times.sort_by(f64::total_cmp);
    let median_listing = listing_times
        .get(listing_times.len() / 2)
        .copied()
        .unwrap_or(f64::NAN);
    let report = serde_json::json!({
        "nodes": nodes,
        "connect_seconds": connect_time.as_secs_f64(),
        "hold_seconds": hold_started.elapsed().as_secs_f64(),
        "broker_idle_rss_mib": idle_rss as f64 / 1048576.0,
        "broker_connected_rss_mib": connected_rss as f64 / 1048576.0,
        "broker_held_rss_mib": held_rss as f64 / 1048576.0,
        "broker_kib_per_node": per_node / 1024.0,
        "broker_cpu_share_during_hold": cpu_share,
        "round_seconds": round_time.as_secs_f64(),
        "broker_cpu_seconds_in_round": cpu_after_round - cpu_before_round,
        "node_list_ms_median": median_listing * 1e3,
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    if let Ok(path) = std::env::var("FLWR_LOAD_REPORT") {
        std::fs::write(path, report.to_string()).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    tasks.abort_all();
    drop(broker);
}

/// How often Flower's SuperNode polls for instructions, and its heartbeat interval (Flower 1.42's
/// defaults).
const FLOWER_POLL: Duration = Duration::from_secs(3);
const FLOWER_HEARTBEAT: Duration = Duration::from_secs(30);

/// One polling Flower SuperNode: registers its key (automatic mode), activates, then (after
/// `phase` of an interval, so that polls spread) pulls every [`FLOWER_POLL`] and sends a heartbeat every [`FLOWER_HEARTBEAT`] until `stop`; a refused or
/// failed call is counted in `lost` and ends it.
async fn polling_node(
    supernode: crate::handmade_supernode::HandmadeSuperNode,
    phase: f64,
    connecting: Arc<tokio::sync::Semaphore>,
    online: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
    lost: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    use crate::handmade_supernode::node;
    use flower_runtime::proto;
    let node_id = {
        let _slot = connecting.acquire().await.unwrap();
        let register = proto::RegisterNodeFleetRequest {
            public_key: supernode.pem(),
        };
        let activate = proto::ActivateNodeRequest {
            public_key: supernode.pem(),
            heartbeat_interval: FLOWER_HEARTBEAT.as_secs_f64(),
        };
        let registered = supernode.call_kept("register-node", &register).await;
        assert_eq!(registered.map(|a| a.status), Some(200));
        let activated = supernode
            .call_kept("activate-node", &activate)
            .await
            .unwrap();
        NodeId(activated.decode::<proto::ActivateNodeResponse>().node_id)
    };
    online.fetch_add(1, Ordering::Relaxed);
    // Polls spread over the interval, as SuperNodes started at different times are.
    tokio::time::sleep(FLOWER_POLL.mul_f64(phase)).await;
    let mut poll = tokio::time::interval(FLOWER_POLL);
    let mut beat = tokio::time::interval(FLOWER_HEARTBEAT);
    while !stop.load(Ordering::Relaxed) {
        let answer = tokio::select! {
            _ = poll.tick() => {
                let pull = proto::PullMessagesRequest { node: node(node_id), message_ids: Vec::new() };
                supernode.call_kept("pull-messages", &pull).await
            }
            _ = beat.tick() => {
                let heartbeat = proto::SendNodeHeartbeatRequest {
                    node: node(node_id),
                    heartbeat_interval: FLOWER_HEARTBEAT.as_secs_f64(),
                };
                supernode.call_kept("send-node-heartbeat", &heartbeat).await
            }
        };
        requests.fetch_add(1, Ordering::Relaxed);
        if answer.is_none_or(|answer| answer.status != 200) {
            lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "holds 1,000 polling Flower SuperNodes for a minute: run by scripts/load-test"]
async fn a_thousand_polling_flower_supernodes_stay_online() {
    let nodes = env_or("FLWR_LOAD_NODES", 1000) as usize;
    let hold = Duration::from_secs(env_or("FLWR_LOAD_HOLD_SECS", 60));
    let federation = Federation::prepare(NodeAuth::Automatic, false, Db::File);
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let broker = BrokerProcess::spawn_with(federation.dir.path(), any, any, None, true);
    federation.write_flwr_toml(broker.control, None);
    let address = broker.flower_http.expect("Flower's port served");
    let pid = broker.child.id();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (idle_rss, _) = process_usage(pid);

    let online = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let connecting = Arc::new(tokio::sync::Semaphore::new(CONNECTING_AT_ONCE));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..nodes {
        // Each from an address of its own, as SuperNodes at separate sites are: the port holds
        // one source to 64 connections.
        let source = std::net::Ipv4Addr::new(127, 1, (index / 250) as u8, (index % 250 + 1) as u8);
        let supernode = crate::handmade_supernode::HandmadeSuperNode::with_key(
            IdentityKey::generate(),
            address,
        )
        .with_source(source);
        tasks.spawn(polling_node(
            supernode,
            index as f64 / nodes as f64,
            connecting.clone(),
            online.clone(),
            requests.clone(),
            lost.clone(),
            stop.clone(),
        ));
    }
    while online.load(Ordering::Relaxed) < nodes as u64 {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "only {} SuperNodes activated",
            online.load(Ordering::Relaxed)
        );
        assert_eq!(lost.load(Ordering::Relaxed), 0, "a SuperNode was refused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connect_time = started.elapsed();
    // Every SuperNode's first poll, then the figures of a steady state.
    tokio::time::sleep(FLOWER_POLL).await;
    let (connected_rss, cpu_before) = process_usage(pid);
    let requests_before = requests.load(Ordering::Relaxed);

    let hold_started = Instant::now();
    let (lowest_online, mut listing_times) = hold_nodes(
        &federation,
        hold,
        &lost,
        "a SuperNode was refused during the hold",
    )
    .await;
    let held_for = hold_started.elapsed().as_secs_f64();
    let (held_rss, cpu_after) = process_usage(pid);
    let served = requests.load(Ordering::Relaxed) - requests_before;
    assert_eq!(
        lowest_online, nodes,
        "every SuperNode listed online throughout"
    );

    listing_times.sort_by(f64::total_cmp);
    let report = serde_json::json!({
        "protocol": "flower-http",
        "nodes": nodes,
        "connect_seconds": connect_time.as_secs_f64(),
        "hold_seconds": held_for,
        "requests_per_second": served as f64 / held_for,
        "broker_idle_rss_mib": idle_rss as f64 / 1048576.0,
        "broker_connected_rss_mib": connected_rss as f64 / 1048576.0,
        "broker_held_rss_mib": held_rss as f64 / 1048576.0,
        "broker_kib_per_node": connected_rss.saturating_sub(idle_rss) as f64 / nodes as f64 / 1024.0,
        "broker_cpu_share_during_hold": (cpu_after - cpu_before) / held_for,
        "broker_cpu_ms_per_node_per_second": (cpu_after - cpu_before) / held_for / nodes as f64 * 1e3,
        "node_list_ms_median": listing_times.get(listing_times.len() / 2).copied().unwrap_or(f64::NAN) * 1e3,
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    if let Ok(path) = std::env::var("FLWR_LOAD_REPORT") {
        std::fs::write(path, report.to_string()).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    tasks.abort_all();
    drop(broker);
}
