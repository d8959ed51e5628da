//! Peers that try to wear the broker down, and one that is merely wrong about the time:
//! handshakes that never finish, more of them than the broker admits, a flood from one address
//! while real nodes work, and a node whose clock is ten minutes off.

use crate::refusals::{authenticate, connect, hello, roots};
use broker::config::{BrokerConfig, NodeAuth};
use certs::IdentityKey;
use e2e::{Db, Federation, PATIENCE, RunningNode};
use node::daemon::NodeState;
use rustls_pki_types::UnixTime;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};
use wire::control::{NodeStatus, RunStatus};
use wire::fleet::{BrokerFrame, NodeFrame};
use wire::io::{read_value, write_value};

/// Authentication must finish within this in these tests (10 s by default).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(400);

fn strict(config: &mut BrokerConfig) {
    config.handshake_timeout = HANDSHAKE_TIMEOUT;
    config.max_pending_handshakes = 4;
}

fn fleet_tls(federation: &Federation, key: &IdentityKey) -> rustls::ClientConfig {
    certs::tls::client_config(&roots(federation), Some(key), wire::alpn::FLEET).unwrap()
}

#[tokio::test]
async fn a_connection_that_never_authenticates_is_closed_after_the_handshake_timeout() {
    let federation = Federation::start_tuned(NodeAuth::Automatic, false, Db::Memory, strict).await;
    let key = IdentityKey::generate();
    let started = Instant::now();
    let connection = connect(federation.broker().fleet_addr, fleet_tls(&federation, &key))
        .await
        .unwrap();
    // TLS done; the hello never comes.
    let _stream = connection.open_bi().await.unwrap();
    tokio::time::timeout(PATIENCE, connection.closed())
        .await
        .expect("never closed");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= HANDSHAKE_TIMEOUT && elapsed < HANDSHAKE_TIMEOUT * 5,
        "{elapsed:?}"
    );
    assert!(
        federation.nodes(true).await.is_empty(),
        "nothing registered"
    );
}

/// Opens `admitted` connections that finish TLS and then stall, checks that one more is refused,
/// and that once the stalled ones time out and give their slots back a real node gets in.
async fn stall_until_refused(federation: &Federation, admitted: usize) {
    let key = IdentityKey::generate();
    let address = federation.broker().fleet_addr;
    let mut stalled = Vec::new();
    for _ in 0..admitted {
        stalled.push(connect(address, fleet_tls(federation, &key)).await.unwrap());
    }
    let refused = connect(address, fleet_tls(federation, &key)).await;
    assert!(
        matches!(refused, Err(quinn::ConnectionError::ConnectionClosed(_))),
        "unauthenticated connection {} was admitted: {refused:?}",
        admitted + 1
    );
    for connection in &stalled {
        tokio::time::timeout(PATIENCE, connection.closed())
            .await
            .expect("stalled connection never closed");
    }
    let mut node = RunningNode::start(federation.node_settings(None));
    node.online().await;
}

#[tokio::test]
async fn unauthenticated_connections_beyond_the_bound_are_refused_until_slots_free_up() {
    let federation = Federation::start_tuned(NodeAuth::Automatic, false, Db::Memory, strict).await;
    stall_until_refused(&federation, 4).await;
}

#[tokio::test]
async fn one_source_cannot_hold_more_than_its_share_of_handshake_slots() {
    // Plenty of slots in all, two per source: the third stalled connection from this host is
    // refused although fourteen slots are free.
    let federation = Federation::start_tuned(NodeAuth::Automatic, false, Db::Memory, |config| {
        config.handshake_timeout = HANDSHAKE_TIMEOUT;
        config.max_pending_handshakes = 16;
        config.max_pending_per_source = 2;
    })
    .await;
    stall_until_refused(&federation, 2).await;
}

/// Clients that open connections as fast as they can with `key` and never authenticate, all from
/// one UDP socket, until `stop`; returns how many connection attempts they made.
async fn flood(
    federation: &Federation,
    key: IdentityKey,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinSet<u64> {
    let address = federation.broker().fleet_addr;
    let endpoint = certs::quic::client_endpoint(address).unwrap();
    let transport = || certs::quic::transport(Duration::from_secs(5), None);
    let config = certs::quic::client_config(fleet_tls(federation, &key), transport()).unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..clients {
        let (endpoint, config, stop) = (endpoint.clone(), config.clone(), stop.clone());
        tasks.spawn(async move {
            let mut attempts = 0;
            while !stop.load(Ordering::Relaxed) {
                attempts += 1;
                let Ok(connecting) = endpoint.connect_with(config.clone(), address, "localhost")
                else {
                    continue;
                };
                if let Ok(connection) = connecting.await {
                    if i % 2 == 0 {
                        // Half send a hello and then nothing; half send garbage.
                        let _ =
                            tokio::time::timeout(Duration::from_secs(1), hello(&connection)).await;
                    } else if let Ok((mut send, _)) = connection.open_bi().await {
                        let _ = send.write_all(&[0xFF; 64]).await;
                        let _ =
                            tokio::time::timeout(Duration::from_secs(1), connection.closed()).await;
                    }
                }
            }
            attempts
        });
    }
    tasks
}

/// The first datagram (a padded QUIC Initial carrying a TLS ClientHello for `alpn`) of `count`
/// fresh connection attempts, captured on a local socket: replayed at a broker, each starts a
/// handshake of its own (its own destination connection id) that nobody will ever continue.
async fn captured_initials(count: usize, alpn: &[u8]) -> Vec<Vec<u8>> {
    // A batch's Initials fit the trap's receive buffer however late the test gets to read them:
    // 200 at once overflowed it under load, and the lost ones came back only on the client's
    // retransmission timer, whose backoff outgrew the test's patience.
    const BATCH: usize = 16;
    let trap = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let trap_addr = trap.local_addr().unwrap();
    let endpoint = certs::quic::client_endpoint(trap_addr).unwrap();
    let tls = certs::tls::insecure_client_config(None, alpn).unwrap();
    let transport = certs::quic::transport(Duration::from_secs(30), None);
    let config = certs::quic::client_config(tls, transport).unwrap();
    let mut by_connection_id = std::collections::HashMap::new();
    let mut attempts = Vec::new();
    let mut datagram = vec![0u8; 2048];
    while by_connection_id.len() < count {
        let wanted = (by_connection_id.len() + BATCH).min(count);
        attempts.extend((attempts.len()..wanted).map(|_| {
            endpoint
                .connect_with(config.clone(), trap_addr, "localhost")
                .unwrap()
        }));
        while by_connection_id.len() < wanted {
            let (len, _) = tokio::time::timeout(PATIENCE, trap.recv_from(&mut datagram))
                .await
                .expect("the client sent no Initial")
                .unwrap();
            let packet = &datagram[..len];
            // Long header: flags, version (4), destination id length, destination id.
            if len > 6 && packet[0] & 0x80 != 0 {
                let id_len = usize::from(packet[5]);
                if let Some(id) = packet.get(6..6 + id_len) {
                    by_connection_id
                        .entry(id.to_vec())
                        .or_insert_with(|| packet.to_vec());
                }
            }
        }
    }
    drop(attempts);
    by_connection_id.into_values().collect()
}

/// Replays `initials` round-robin at `target` from one socket until `stop`, in bursts of 32
/// every 5 ms (about 6,000 a second: each fills the broker's handshake slots many times over);
/// returns how many datagrams went out. Answers (handshakes, Retries) are never read.
///
/// The pace is fixed rather than as fast as the test can send: on two cores an unpaced flood
/// starves the broker of CPU, which tests the machine, not whether stalled handshakes can hold
/// the broker's slots.
async fn replay_initials(
    initials: Vec<Vec<u8>>,
    target: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
) -> u64 {
    const BURST: usize = 32;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut pace = tokio::time::interval(Duration::from_millis(5));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent = 0;
    let mut next = initials.iter().cycle();
    while !stop.load(Ordering::Relaxed) {
        pace.tick().await;
        for initial in next.by_ref().take(BURST) {
            if socket.send_to(initial, target).await.is_ok() {
                sent += 1;
            }
        }
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_stalled_initials_locks_out_neither_new_nodes_nor_operators() {
    // Few slots, so that without address validation the flood holds every one of them.
    let federation = Federation::start_tuned(NodeAuth::Automatic, false, Db::Memory, |config| {
        config.max_pending_handshakes = 32;
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let fleet_flood = tokio::spawn(replay_initials(
        captured_initials(200, wire::alpn::FLEET).await,
        federation.broker().fleet_addr,
        stop.clone(),
    ));
    let control_flood = tokio::spawn(replay_initials(
        captured_initials(200, wire::alpn::CONTROL).await,
        federation.broker().control_addr,
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A node that was never seen before joins, and an operator lists it, while the flood runs.
    let mut node = RunningNode::start(federation.node_settings(None));
    let id = node.online().await;
    let listed = federation.nodes(false).await;
    assert!(
        listed
            .iter()
            .any(|n| n.node_id == id && n.status == NodeStatus::Online),
        "{listed:?}"
    );

    // And `flwr ls`: the runs (none yet).
    let runs = federation
        .request(wire::control::ControlRequest::ListRuns { run_id: None })
        .await;
    assert_eq!(runs, wire::control::ControlResponse::Runs(vec![]));

    stop.store(true, Ordering::Relaxed);
    let sent = fleet_flood.await.unwrap() + control_flood.await.unwrap();
    assert!(sent >= 2_000, "the flood hardly ran: {sent} Initials");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_nodes_stay_online_and_finish_a_run_through_a_handshake_flood() {
    let federation = Federation::start_tuned(NodeAuth::Registered, false, Db::Memory, |config| {
        config.handshake_timeout = HANDSHAKE_TIMEOUT;
        config.max_pending_handshakes = 16;
    })
    .await;
    let mut nodes = Vec::new();
    let mut ids = Vec::new();
    for key in ["client_credentials_1", "client_credentials_2"] {
        federation.register(key).await;
        let mut node =
            RunningNode::start(federation.node_settings_with(Some(key), "value=1 delay-ms=300"));
        ids.push(node.online().await);
        nodes.push(node);
    }
    // The flooder's key is registered: its connections pass TLS and reach the broker's own
    // code (a hello and then silence, or garbage), instead of failing inside TLS.
    federation.register("client_credentials_3").await;
    let flood_key =
        certs::load::load_identity_key(&federation.path("keys/client_credentials_3")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut flooders = flood(&federation, flood_key, 32, stop.clone()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A node that restarts during the flood gets back in.
    let restarted = nodes.remove(0);
    restarted.stop().await.unwrap();
    let mut node = RunningNode::start(
        federation.node_settings_with(Some("client_credentials_1"), "value=1 delay-ms=300"),
    );
    assert_eq!(node.online().await, ids[0]);
    nodes.insert(0, node);

    let run_id = crate::runs::start_run(&federation, "min-nodes=2").await;
    let (lines, status) = crate::runs::follow(&federation, run_id).await;
    stop.store(true, Ordering::Relaxed);
    let mut attempts = 0;
    while let Some(count) = flooders.join_next().await {
        attempts += count.unwrap();
    }
    assert_eq!(status, RunStatus::Completed, "{lines:#?}");
    assert!(attempts >= 100, "the flood hardly ran: {attempts} attempts");
    for node in &nodes {
        assert!(
            matches!(*node.state.borrow(), NodeState::Online(_)),
            "a node lost its session"
        );
    }
    let listed = federation.nodes(false).await;
    for &id in &ids {
        let info = listed.iter().find(|n| n.node_id == id).unwrap();
        assert_eq!(info.status, NodeStatus::Online);
        if id != ids[0] {
            assert!(
                info.offline_at_ms.is_none(),
                "node {id} went offline during the flood"
            );
        }
    }
}

/// The node's view of the time, `offset` away from the truth.
#[derive(Debug)]
struct SkewedClock {
    ahead: bool,
    offset: Duration,
}

impl rustls::time_provider::TimeProvider for SkewedClock {
    fn current_time(&self) -> Option<UnixTime> {
        let now = SystemTime::now();
        let skewed = if self.ahead {
            now + self.offset
        } else {
            now - self.offset
        };
        Some(UnixTime::since_unix_epoch(
            skewed.duration_since(SystemTime::UNIX_EPOCH).ok()?,
        ))
    }
}

#[tokio::test]
async fn a_node_whose_clock_is_ten_minutes_off_still_authenticates() {
    // Fresh certificates, as an operator makes them just before starting: a node behind the
    // SuperLink's clock still finds them valid.
    let federation = Federation::start(NodeAuth::Automatic, false, Db::Memory).await;
    let beat = AtomicU64::new(1);
    for ahead in [false, true] {
        let key = IdentityKey::generate();
        let mut trusted = rustls::RootCertStore::empty();
        for root in roots(&federation) {
            trusted.add(root).unwrap();
        }
        let (cert, private) = certs::generate::client_certificate(&key).unwrap();
        let clock = SkewedClock {
            ahead,
            offset: Duration::from_secs(600),
        };
        let mut tls =
            rustls::ClientConfig::builder_with_details(certs::tls::provider(), Arc::new(clock))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_root_certificates(trusted)
                .with_client_auth_cert(vec![cert], private)
                .unwrap();
        tls.alpn_protocols = vec![wire::alpn::FLEET.to_vec()];
        let connection = connect(federation.broker().fleet_addr, tls).await.unwrap();
        let (mut send, mut recv, node_id) = authenticate(&connection, &key).await;
        let seq = beat.fetch_add(1, Ordering::Relaxed);
        write_value(&mut send, &NodeFrame::Heartbeat { seq })
            .await
            .unwrap();
        assert_eq!(
            read_value::<BrokerFrame, _>(&mut recv, 1 << 16)
                .await
                .unwrap(),
            BrokerFrame::HeartbeatAck { seq }
        );
        assert_eq!(
            federation.status_of(node_id).await,
            Some(NodeStatus::Online)
        );
    }
}
