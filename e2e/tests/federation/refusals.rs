//! Everything that must not get in: unregistered keys, missing certificates, the wrong ALPN, a
//! proof made for another connection, a broker the node does not trust. Nothing is written.

use broker::config::NodeAuth;
use certs::IdentityKey;
use e2e::{Db, Federation, RunningNode, node_settings};
use node::settings::ServerTrust;
use std::net::SocketAddr;
use std::time::Duration;
use wire::control::NodeStatus;
use wire::fleet::{BrokerFrame, NodeFrame};
use wire::handshake::{ClientHandshake, Domain, EXPORTER_LABEL, PROTOCOL_VERSION};
use wire::io::{read_value, write_value};

pub async fn connect(
    address: SocketAddr,
    tls: rustls::ClientConfig,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let transport = certs::quic::transport(Duration::from_secs(5), None);
    let config = certs::quic::client_config(tls, transport).unwrap();
    let endpoint = certs::quic::client_endpoint(address).unwrap();
    endpoint
        .connect_with(config, address, "localhost")
        .unwrap()
        .await
}

pub fn roots(federation: &Federation) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    certs::load::load_certificates(&federation.certs.ca_cert).unwrap()
}

/// Opens the session stream and sends hello; returns what the broker answers (or the failure).
pub async fn hello(
    connection: &quinn::Connection,
) -> Result<(quinn::SendStream, quinn::RecvStream, BrokerFrame), String> {
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
    write_value(
        &mut send,
        &NodeFrame::Hello {
            version: PROTOCOL_VERSION,
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    let frame = read_value::<BrokerFrame, _>(&mut recv, 1 << 16)
        .await
        .map_err(|e| e.to_string())?;
    Ok((send, recv, frame))
}

/// Hello, challenge, proof and welcome on `connection` with `key`: the session stream and the id.
pub async fn authenticate(
    connection: &quinn::Connection,
    key: &IdentityKey,
) -> (quinn::SendStream, quinn::RecvStream, wire::NodeId) {
    let (mut send, mut recv, frame) = hello(connection).await.unwrap();
    let BrokerFrame::Challenge(challenge) = frame else {
        panic!("{frame:?}")
    };
    let exporter = certs::quic::exporter(connection, EXPORTER_LABEL).unwrap();
    let proof = ClientHandshake::new(Domain::Fleet, exporter)
        .respond(&challenge, &|message: &[u8]| key.sign(message))
        .unwrap();
    write_value(&mut send, &NodeFrame::Proof(proof))
        .await
        .unwrap();
    match read_value::<BrokerFrame, _>(&mut recv, 1 << 16)
        .await
        .unwrap()
    {
        BrokerFrame::Welcome { node_id, .. } => (send, recv, node_id),
        other => panic!("not welcomed: {other:?}"),
    }
}

#[tokio::test]
async fn an_unregistered_key_is_refused_before_anything_is_readable() {
    let federation = Federation::start(NodeAuth::Registered, false, Db::Memory).await;
    let key = IdentityKey::generate();
    let tls =
        certs::tls::client_config(&roots(&federation), Some(&key), wire::alpn::FLEET).unwrap();
    // TLS 1.3 lets the client believe it connected; the refusal arrives as the first read fails.
    let error = match connect(federation.broker().fleet_addr, tls).await {
        Ok(connection) => {
            let outcome = hello(&connection).await.map(|(_, _, frame)| frame);
            assert!(
                outcome.is_err(),
                "an unregistered key got an answer: {outcome:?}"
            );
            connection.close_reason().expect("connection closed")
        }
        Err(error) => error,
    };
    assert_eq!(
        certs::quic::tls_alert(&error),
        Some(rustls::AlertDescription::AccessDenied),
        "{error}"
    );

    let node = RunningNode::start(federation.node_settings(Some("client_credentials_2")));
    let error = node.finished().await.unwrap_err().to_string();
    assert!(error.contains("register it"), "{error}");
    assert!(
        federation.nodes(true).await.is_empty(),
        "nothing written to the registry"
    );
}

#[tokio::test]
async fn a_node_without_a_client_certificate_is_refused() {
    let federation = Federation::start(NodeAuth::Automatic, false, Db::Memory).await;
    let tls = certs::tls::client_config(&roots(&federation), None, wire::alpn::FLEET).unwrap();
    let outcome = match connect(federation.broker().fleet_addr, tls).await {
        Ok(connection) => hello(&connection).await.map(|(_, _, frame)| frame),
        Err(error) => Err(error.to_string()),
    };
    assert!(outcome.is_err(), "{outcome:?}");
    assert!(federation.nodes(true).await.is_empty());
}

#[tokio::test]
async fn the_wrong_alpn_is_refused_on_both_apis() {
    let federation = Federation::start(NodeAuth::Automatic, false, Db::Memory).await;
    let key = IdentityKey::generate();
    for (address, alpn) in [
        (federation.broker().fleet_addr, wire::alpn::CONTROL),
        (federation.broker().control_addr, wire::alpn::FLEET),
        (federation.broker().fleet_addr, b"h3".as_slice()),
    ] {
        let tls = certs::tls::client_config(&roots(&federation), Some(&key), alpn).unwrap();
        let error = connect(address, tls)
            .await
            .expect_err("wrong ALPN accepted");
        assert_eq!(
            certs::quic::tls_alert(&error),
            Some(rustls::AlertDescription::NoApplicationProtocol),
            "{error}"
        );
    }
    assert!(federation.nodes(true).await.is_empty());
}

#[tokio::test]
async fn a_proof_signed_over_another_connections_exporter_is_refused() {
    let federation = Federation::start(NodeAuth::Registered, false, Db::Memory).await;
    let id = federation.register("client_credentials_1").await;
    let key =
        certs::load::load_identity_key(&federation.path("keys/client_credentials_1")).unwrap();
    let tls =
        || certs::tls::client_config(&roots(&federation), Some(&key), wire::alpn::FLEET).unwrap();
    let first = connect(federation.broker().fleet_addr, tls())
        .await
        .unwrap();
    let second = connect(federation.broker().fleet_addr, tls())
        .await
        .unwrap();
    let (mut send, mut recv, frame) = hello(&second).await.unwrap();
    let BrokerFrame::Challenge(challenge) = frame else {
        panic!("{frame:?}")
    };
    // The attacker signs the second connection's nonce, but over the first connection's binding.
    let first_exporter = certs::quic::exporter(&first, EXPORTER_LABEL).unwrap();
    let proof = ClientHandshake::new(Domain::Fleet, first_exporter)
        .respond(&challenge, &|message: &[u8]| key.sign(message))
        .unwrap();
    write_value(&mut send, &NodeFrame::Proof(proof))
        .await
        .unwrap();
    // The refusal arrives as a frame, or (when the close overtakes it) as the close reason.
    let answer = read_value::<BrokerFrame, _>(&mut recv, 1 << 16).await;
    let refused_by_frame = matches!(
        answer,
        Ok(BrokerFrame::Refused(wire::handshake::Refusal::BadProof))
    );
    let refused_by_close = matches!(
        second.close_reason(),
        Some(quinn::ConnectionError::ApplicationClosed(ref close))
            if u64::from(close.error_code) == u64::from(wire::close::REFUSED)
                && String::from_utf8_lossy(&close.reason).contains("does not verify")
    );
    assert!(refused_by_frame || refused_by_close, "{answer:?}");
    assert_eq!(
        federation.status_of(id).await,
        Some(NodeStatus::Registered),
        "never online"
    );
}

#[tokio::test]
async fn a_broker_whose_certificate_does_not_chain_to_the_nodes_roots_is_refused() {
    let federation = Federation::start(NodeAuth::Automatic, false, Db::Memory).await;
    let other = tempfile::tempdir().unwrap();
    let other_ca = certs::generate::generate_certificates(other.path(), &[], false).unwrap();
    let trust = ServerTrust::Roots(certs::load::load_certificates(&other_ca.ca_cert).unwrap());
    let node = RunningNode::start(node_settings(federation.broker().fleet_addr, trust, None));
    let error = node.finished().await.unwrap_err().to_string();
    assert!(error.contains("TLS with the SuperLink failed"), "{error}");
    assert!(federation.nodes(true).await.is_empty());
}

/// Sends `bytes` as a reply stream; returns the broker's verdict, or why there was none.
async fn send_reply_bytes(
    connection: &quinn::Connection,
    bytes: &[u8],
) -> Result<wire::fleet::ReplyOutcome, String> {
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
    write_value(&mut send, &wire::fleet::NodeStream::Reply)
        .await
        .map_err(|e| e.to_string())?;
    send.write_all(bytes).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    read_value::<wire::fleet::ReplyOutcome, _>(&mut recv, 1 << 16)
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn a_node_that_stops_heartbeating_goes_offline_whatever_else_it_sends() {
    let federation = Federation::start(NodeAuth::Registered, false, Db::Memory).await;
    let me = federation.register("client_credentials_1").await;
    let key =
        certs::load::load_identity_key(&federation.path("keys/client_credentials_1")).unwrap();
    let tls =
        certs::tls::client_config(&roots(&federation), Some(&key), wire::alpn::FLEET).unwrap();
    let connection = connect(federation.broker().fleet_addr, tls).await.unwrap();
    let (_session_send, _session_recv, node_id) = authenticate(&connection, &key).await;
    assert_eq!(node_id, me);
    // Reply streams keep arriving (each refused), heartbeats never do: the broker must give the
    // node up a heartbeat timeout (1 s here) after the session began, not after the last stream.
    let deadline = std::time::Instant::now() + e2e::PATIENCE;
    while federation.status_of(me).await != Some(NodeStatus::Offline) {
        assert!(
            std::time::Instant::now() < deadline,
            "a node sending only reply streams stayed online"
        );
        let _ = send_reply_bytes(&connection, &[0xA5; 16]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_authenticated_node_cannot_forge_replies_or_disturb_other_sessions() {
    let federation = Federation::start(NodeAuth::Registered, false, Db::Memory).await;
    let me = federation.register("client_credentials_1").await;
    let other = federation.register("client_credentials_2").await;
    let session = |name: &str| {
        let key =
            certs::load::load_identity_key(&federation.path(&format!("keys/{name}"))).unwrap();
        let tls =
            certs::tls::client_config(&roots(&federation), Some(&key), wire::alpn::FLEET).unwrap();
        (key, tls)
    };
    let (key, tls) = session("client_credentials_1");
    let connection = connect(federation.broker().fleet_addr, tls).await.unwrap();
    let (mut send, mut recv, node_id) = authenticate(&connection, &key).await;
    assert_eq!(node_id, me);
    // The other node is online but never takes its instruction, which stays queued.
    let (other_key, other_tls) = session("client_credentials_2");
    let other_connection = connect(federation.broker().fleet_addr, other_tls)
        .await
        .unwrap();
    let (mut other_send, mut other_recv, _) = authenticate(&other_connection, &other_key).await;
    let run_id = crate::runs::start_run(&federation, "min-nodes=2").await;
    let rounds = federation.broker().shared.rounds.clone();
    let deadline = std::time::Instant::now() + e2e::PATIENCE;
    let first_queued = |node: wire::NodeId| {
        let rounds = rounds.clone();
        async move {
            loop {
                if let Some(id) = rounds.queued_for(node).first() {
                    return *id;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "no instruction for node {node}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let others_instruction = first_queued(other).await;

    let mine = first_queued(me).await;
    let forged = |sender, reply_to, body| wire::Message {
        metadata: wire::Metadata {
            run_id,
            message_id: wire::MessageId::random(),
            src_node_id: sender,
            dst_node_id: wire::NodeId::SERVER,
            reply_to: Some(reply_to),
            group_id: "1".into(),
            ttl_ms: 60_000,
            message_type: wire::MessageType::TRAIN,
            created_at_ms: 0,
        },
        body,
    };
    let empty = || wire::MessageBody::Content(wire::RecordDict::new());
    // Each case is the one combination only its own check refuses: the other node's name on the
    // other node's instruction passes every check but the sender's.
    for (sender, reply_to, what, why) in [
        (
            other,
            others_instruction,
            "another node's name",
            "names node",
        ),
        (
            me,
            wire::MessageId::random(),
            "an instruction that does not exist",
            "no known instruction",
        ),
        (
            me,
            others_instruction,
            "another node's instruction",
            "sent to another node",
        ),
    ] {
        let bytes = wire::stream::encode_message_bytes(&forged(sender, reply_to, empty()), 1 << 20)
            .unwrap();
        let outcome = send_reply_bytes(&connection, &bytes).await;
        assert!(
            matches!(outcome, Ok(wire::fleet::ReplyOutcome::Rejected(ref reason)) if reason.contains(why)),
            "{what}: {outcome:?}"
        );
    }
    // Two streams answering the same instruction at once: the second is refused while the first
    // is still arriving, so one node cannot hold two allowances for one instruction.
    let small = || {
        wire::MessageBody::Content(wire::RecordDict::new().with(
            "arrays",
            wire::Record::Arrays(wire::ArrayRecord::new().with(
                "w",
                wire::Array {
                    dtype: wire::DType::U8,
                    shape: vec![1024],
                    data: Vec::new(),
                    serialised: None,
                },
            )),
        ))
    };
    let head = wire::frame::encode(&forged(me, mine, small())).unwrap();
    let (mut first, _first_answer) = connection.open_bi().await.unwrap();
    write_value(&mut first, &wire::fleet::NodeStream::Reply)
        .await
        .unwrap();
    first.write_all(&head).await.unwrap();
    while !rounds.is_arriving(mine) {
        assert!(
            std::time::Instant::now() < deadline,
            "the first reply was never claimed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let outcome = send_reply_bytes(&connection, &head).await;
    assert!(
        matches!(outcome, Ok(wire::fleet::ReplyOutcome::Rejected(ref reason)) if reason.contains("another reply")),
        "{outcome:?}"
    );
    first.reset(0u32.into()).unwrap();
    while rounds.is_arriving(mine) {
        assert!(
            std::time::Instant::now() < deadline,
            "the claim was never released"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A reply to its own instruction whose head announces the whole reply cap (1 GiB) and then
    // sends one byte: refused on its head, before any byte is read or reserved.
    let huge = wire::MessageBody::Content(wire::RecordDict::new().with(
        "arrays",
        wire::Record::Arrays(wire::ArrayRecord::new().with(
            "w",
            wire::Array {
                dtype: wire::DType::U8,
                shape: vec![broker::config::DEFAULT_MAX_REPLY_BYTES],
                data: Vec::new(),
                serialised: None,
            },
        )),
    ));
    let mut bytes = wire::frame::encode(&forged(me, mine, huge)).unwrap();
    bytes.extend_from_slice(&[1, 0, 0, 0, 0xAB]);
    let outcome = send_reply_bytes(&connection, &bytes).await;
    assert!(
        matches!(outcome, Ok(wire::fleet::ReplyOutcome::Rejected(ref reason)) if reason.contains("its instruction allows")),
        "{outcome:?}"
    );
    let answered = |id| rounds.instruction(id).expect("its round is open").answered;
    assert_eq!(answered(mine), None, "nothing accepted");
    // An error reply whose reason would rewrite the operator's terminal, and runs to 1 MiB: kept
    // escaped and short.
    let forged_line = "\r\x1b[2K\x1b[1A[ROUND 3/3]\n\x1b]52;c;aGk=\x07";
    let hostile = wire::MessageBody::Error(wire::message::MessageError {
        code: wire::message::ErrorCode::ClientAppRaisedException,
        reason: format!("{forged_line}{}", "A".repeat(1 << 20)),
    });
    let bytes = wire::stream::encode_message_bytes(&forged(me, mine, hostile), 1 << 20).unwrap();
    let outcome = send_reply_bytes(&connection, &bytes).await;
    assert_eq!(outcome, Ok(wire::fleet::ReplyOutcome::Accepted));
    let Some(broker::rounds::Answered::Error(error)) = answered(mine) else {
        panic!("not answered by an error: {:?}", answered(mine));
    };
    let reason = error.reason;
    assert!(!reason.chars().any(char::is_control), "{reason:?}");
    assert!(reason.starts_with("\\r\\u{1b}[2K"), "{reason:?}");
    assert!(reason.chars().count() < 1024, "{} characters", reason.len());
    assert_eq!(answered(others_instruction), None, "nothing accepted");
    // Garbage, a truncated frame and a huge length prefix on authenticated streams: each stream
    // is refused on its own.
    for bytes in [
        vec![0xA5; 64],
        vec![7, 0, 0, 0, 1],
        u32::MAX.to_le_bytes().to_vec(),
    ] {
        let outcome = send_reply_bytes(&connection, &bytes).await;
        assert!(
            !matches!(outcome, Ok(wire::fleet::ReplyOutcome::Accepted)),
            "{bytes:?}: {outcome:?}"
        );
    }
    // The other node's session is unaffected.
    write_value(&mut other_send, &NodeFrame::Heartbeat { seq: 1 })
        .await
        .unwrap();
    assert_eq!(
        read_value::<BrokerFrame, _>(&mut other_recv, 1 << 16)
            .await
            .unwrap(),
        BrokerFrame::HeartbeatAck { seq: 1 }
    );
    // The forger's own session is unaffected.
    write_value(&mut send, &NodeFrame::Heartbeat { seq: 1 })
        .await
        .unwrap();
    let ack = read_value::<BrokerFrame, _>(&mut recv, 1 << 16)
        .await
        .unwrap();
    assert_eq!(ack, BrokerFrame::HeartbeatAck { seq: 1 });
    assert_eq!(federation.status_of(me).await, Some(NodeStatus::Online));
}

#[tokio::test]
async fn a_revoked_key_cannot_resume_an_earlier_tls_session() {
    let federation = Federation::start(NodeAuth::Registered, false, Db::Memory).await;
    let id = federation.register("client_credentials_1").await;
    let key =
        certs::load::load_identity_key(&federation.path("keys/client_credentials_1")).unwrap();
    // One client configuration for both connections: it keeps whatever tickets the broker gives.
    let tls =
        certs::tls::client_config(&roots(&federation), Some(&key), wire::alpn::FLEET).unwrap();
    let address = federation.broker().fleet_addr;
    let connection = connect(address, tls.clone()).await.unwrap();
    assert_eq!(authenticate(&connection, &key).await.2, id);
    connection.close(0u32.into(), b"bye");
    let response = federation
        .request(wire::control::ControlRequest::UnregisterNode { node_id: id })
        .await;
    assert_eq!(
        response,
        wire::control::ControlResponse::NodeUnregistered { node_id: id }
    );
    // A resumed session would skip the certificate verifier; there is none to resume, so the
    // revoked key fails TLS itself.
    let error = match connect(address, tls).await {
        Err(error) => error,
        Ok(connection) => match hello(&connection).await {
            Err(_) => connection.closed().await,
            Ok((_, _, frame)) => panic!("the revoked key got an answer: {frame:?}"),
        },
    };
    assert!(
        certs::quic::tls_alert(&error).is_some(),
        "not refused during TLS: {error:?}"
    );
}
