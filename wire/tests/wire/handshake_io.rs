//! The whole handshake, both peers in memory over `tokio::io::duplex`: every way in and every
//! refusal, as each side sees it.

use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::elliptic_curve::Generate;
use tokio::io::{AsyncWriteExt as _, DuplexStream, ReadHalf, WriteHalf};
use wire::NodeId;
use wire::control::{Control, ControlFrame, ControlRequest, OperatorFrame};
use wire::fleet::{BrokerFrame, Fleet, NodeFrame, NodeWelcome};
use wire::handshake::{Api, EXPORTER_LEN, Refusal, Signer, Verifier};
use wire::io::handshake::{Expect, HandshakeError, client_handshake, server_handshake};
use wire::io::{FrameIoError, read_value, write_value};

const LIMIT: u32 = 64 * 1024;
const EXPORTER: [u8; EXPORTER_LEN] = [0x42; EXPORTER_LEN];
const OTHER_EXPORTER: [u8; EXPORTER_LEN] = [0x24; EXPORTER_LEN];

type Half = (WriteHalf<DuplexStream>, ReadHalf<DuplexStream>);

/// Two connected stream pairs: the client's and the server's.
fn pipe() -> (Half, Half) {
    let (client, server) = tokio::io::duplex(256 * 1024);
    let (client_read, client_write) = tokio::io::split(client);
    let (server_read, server_write) = tokio::io::split(server);
    ((client_write, client_read), (server_write, server_read))
}

fn signing_key() -> SigningKey {
    SigningKey::generate_from_rng(&mut rand::rng())
}

fn signer(key: &SigningKey) -> impl Signer + '_ {
    move |message: &[u8]| {
        let signature: Signature = key.sign(message);
        signature.to_der().as_bytes().to_vec()
    }
}

fn verifier(key: VerifyingKey) -> impl Verifier {
    move |message: &[u8], signature: &[u8]| {
        Signature::from_der(signature).is_ok_and(|s| key.verify(message, &s).is_ok())
    }
}

fn welcome() -> NodeWelcome {
    NodeWelcome {
        node_id: NodeId(7),
        heartbeat_interval_ms: 1000,
    }
}

/// What the server's admission policy decides after a verified proof.
enum Admission {
    Welcome,
    Refuse(Refusal),
}

/// Runs a Fleet handshake: the server verifies `node`'s proof against `registered` (or refuses up
/// front), then applies `admission`. Returns both sides' results.
async fn fleet(
    node: Option<&SigningKey>,
    client_exporter: [u8; EXPORTER_LEN],
    registered: Result<VerifyingKey, Refusal>,
    admission: Admission,
) -> (
    Result<NodeWelcome, HandshakeError>,
    Result<(), HandshakeError>,
) {
    let ((mut client_send, mut client_recv), (mut server_send, mut server_recv)) = pipe();
    let node_signer = node.map(signer);
    let client = async {
        let result = client_handshake::<Fleet, _, _>(
            &mut client_send,
            &mut client_recv,
            client_exporter,
            LIMIT,
            node_signer.as_ref().map(|s| s as &(dyn Signer + Sync)),
        )
        .await;
        // Hang up as a real client does once its handshake ended.
        let _ = client_send.shutdown().await;
        result
    };
    let server = async {
        let key = registered.clone().map(verifier);
        let expect = match &key {
            Ok(key) => Expect::Proof(key),
            Err(refusal) => Expect::Refuse(refusal.clone()),
        };
        let result = async {
            let verified = server_handshake::<Fleet, _, _>(
                &mut server_send,
                &mut server_recv,
                EXPORTER,
                LIMIT,
                expect,
            )
            .await?;
            match admission {
                Admission::Welcome => verified.welcome(&mut server_send, welcome()).await,
                Admission::Refuse(refusal) => Err(verified.refuse(&mut server_send, refusal).await),
            }
        }
        .await;
        let _ = server_send.shutdown().await;
        result
    };
    tokio::join!(client, server)
}

fn refused(result: &Result<impl std::fmt::Debug, HandshakeError>) -> Option<Refusal> {
    match result {
        Err(HandshakeError::Refused(refusal)) => Some(refusal.clone()),
        _ => None,
    }
}

#[tokio::test]
async fn a_registered_node_is_welcomed_with_its_id() {
    let key = signing_key();
    let (client, server) = fleet(
        Some(&key),
        EXPORTER,
        Ok(*key.verifying_key()),
        Admission::Welcome,
    )
    .await;
    assert_eq!(client.unwrap(), welcome());
    server.unwrap();
}

#[tokio::test]
async fn a_proof_by_another_key_is_refused_on_both_sides() {
    let (key, registered) = (signing_key(), signing_key());
    let (client, server) = fleet(
        Some(&key),
        EXPORTER,
        Ok(*registered.verifying_key()),
        Admission::Welcome,
    )
    .await;
    assert_eq!(refused(&client), Some(Refusal::BadProof));
    assert_eq!(refused(&server), Some(Refusal::BadProof));
}

#[tokio::test]
async fn a_proof_made_on_another_connection_is_refused() {
    let key = signing_key();
    let (client, server) = fleet(
        Some(&key),
        OTHER_EXPORTER,
        Ok(*key.verifying_key()),
        Admission::Welcome,
    )
    .await;
    assert_eq!(refused(&client), Some(Refusal::BadProof));
    assert_eq!(refused(&server), Some(Refusal::BadProof));
}

#[tokio::test]
async fn the_admission_policy_refuses_after_a_valid_proof() {
    for refusal in [Refusal::UnknownKey, Refusal::Revoked] {
        let key = signing_key();
        let (client, server) = fleet(
            Some(&key),
            EXPORTER,
            Ok(*key.verifying_key()),
            Admission::Refuse(refusal.clone()),
        )
        .await;
        assert_eq!(refused(&client), Some(refusal.clone()));
        assert_eq!(refused(&server), Some(refusal));
    }
}

#[tokio::test]
async fn an_up_front_refusal_comes_after_the_hello_without_a_challenge() {
    let key = signing_key();
    let (client, server) = fleet(
        Some(&key),
        EXPORTER,
        Err(Refusal::KeyRequired),
        Admission::Welcome,
    )
    .await;
    assert_eq!(refused(&client), Some(Refusal::KeyRequired));
    assert_eq!(refused(&server), Some(Refusal::KeyRequired));
}

#[tokio::test]
async fn a_client_without_a_key_stops_at_the_challenge() {
    let key = signing_key();
    let (client, server) =
        fleet(None, EXPORTER, Ok(*key.verifying_key()), Admission::Welcome).await;
    assert!(matches!(client, Err(HandshakeError::KeyRequired)));
    // The client hung up instead of proving: the server never welcomes it.
    assert!(matches!(
        server,
        Err(HandshakeError::Frame(FrameIoError::Closed))
    ));
}

#[tokio::test]
async fn a_local_operator_is_welcomed_without_a_challenge() {
    let ((mut client_send, mut client_recv), (mut server_send, mut server_recv)) = pipe();
    let client = client_handshake::<Control, _, _>(
        &mut client_send,
        &mut client_recv,
        EXPORTER,
        LIMIT,
        None,
    );
    let server = async {
        server_handshake::<Control, _, _>(
            &mut server_send,
            &mut server_recv,
            EXPORTER,
            LIMIT,
            Expect::NoProof,
        )
        .await?
        .welcome(&mut server_send, "local".to_string())
        .await
    };
    let (client, server) = tokio::join!(client, server);
    assert_eq!(client.unwrap(), "local");
    server.unwrap();
}

/// A server that expects a proof by `verify`, sends nothing after it, and hangs up.
async fn verify_then_hang_up<A: Api>(
    send: &mut WriteHalf<DuplexStream>,
    recv: &mut ReadHalf<DuplexStream>,
    verify: &(dyn Verifier + Sync),
) -> Result<(), HandshakeError> {
    let result = server_handshake::<A, _, _>(send, recv, EXPORTER, LIMIT, Expect::Proof(verify))
        .await
        .map(drop);
    let _ = send.shutdown().await;
    result
}

#[tokio::test]
async fn an_operator_proof_is_worthless_on_the_fleet_api() {
    // A client speaking Control frames (domain "control") to a server expecting a Fleet proof over
    // the same exporter: the frames even parse, but the domain separation fails the proof.
    let key = signing_key();
    let ((mut client_send, mut client_recv), (mut server_send, mut server_recv)) = pipe();
    let client_signer = signer(&key);
    let verify = verifier(*key.verifying_key());
    let server = verify_then_hang_up::<Fleet>(&mut server_send, &mut server_recv, &verify);
    let client = async {
        // Hello and Proof frames have the same indices in both APIs.
        write_value(&mut client_send, &Control::hello(1))
            .await
            .unwrap();
        let challenge = match read_value::<BrokerFrame, _>(&mut client_recv, LIMIT)
            .await
            .unwrap()
        {
            BrokerFrame::Challenge(challenge) => challenge,
            other => panic!("expected a challenge, got {other:?}"),
        };
        let proof =
            wire::handshake::ClientHandshake::new(wire::handshake::Domain::Control, EXPORTER)
                .respond(&challenge, &client_signer)
                .unwrap();
        write_value(&mut client_send, &OperatorFrame::Proof(proof))
            .await
            .unwrap();
        read_value::<BrokerFrame, _>(&mut client_recv, LIMIT)
            .await
            .unwrap()
    };
    let (server, answer) = tokio::join!(server, client);
    assert_eq!(refused(&server), Some(Refusal::BadProof));
    assert_eq!(answer, BrokerFrame::Refused(Refusal::BadProof));
}

/// Sends `frames` as a hand-written client and returns the server's result and its answer.
async fn hostile_client(
    frames: Vec<OperatorFrame>,
) -> (Result<(), HandshakeError>, Option<ControlFrame>) {
    let key = signing_key();
    let verify = verifier(*key.verifying_key());
    let ((mut client_send, mut client_recv), (mut server_send, mut server_recv)) = pipe();
    let server = verify_then_hang_up::<Control>(&mut server_send, &mut server_recv, &verify);
    let client = async {
        for frame in &frames {
            write_value(&mut client_send, frame).await.unwrap();
        }
        let mut last = None;
        while let Ok(frame) = read_value::<ControlFrame, _>(&mut client_recv, LIMIT).await {
            last = Some(frame);
        }
        last
    };
    tokio::join!(server, client)
}

#[tokio::test]
async fn another_protocol_version_is_refused_by_number() {
    let (server, answer) = hostile_client(vec![OperatorFrame::Hello { version: 99 }]).await;
    assert_eq!(refused(&server), Some(Refusal::UnsupportedVersion(99)));
    assert_eq!(
        answer,
        Some(ControlFrame::Refused(Refusal::UnsupportedVersion(99)))
    );
}

#[tokio::test]
async fn a_request_before_authentication_is_refused() {
    let request = OperatorFrame::Request(ControlRequest::ListRuns { run_id: None });
    let (server, answer) = hostile_client(vec![request.clone()]).await;
    assert_eq!(refused(&server), Some(Refusal::Unexpected));
    assert_eq!(answer, Some(ControlFrame::Refused(Refusal::Unexpected)));
    // And in place of the proof.
    let (server, answer) = hostile_client(vec![OperatorFrame::Hello { version: 1 }, request]).await;
    assert_eq!(refused(&server), Some(Refusal::Unexpected));
    assert_eq!(answer, Some(ControlFrame::Refused(Refusal::Unexpected)));
}

#[tokio::test]
async fn a_second_hello_in_place_of_the_proof_is_refused() {
    let hello = OperatorFrame::Hello { version: 1 };
    let (server, _) = hostile_client(vec![hello.clone(), hello]).await;
    assert_eq!(refused(&server), Some(Refusal::Unexpected));
}

#[tokio::test]
async fn an_oversized_frame_fails_before_it_is_read() {
    let ((mut client_send, _client_recv), (mut server_send, mut server_recv)) = pipe();
    let huge = OperatorFrame::Request(ControlRequest::RegisterNode {
        public_key: "x".repeat(LIMIT as usize * 2),
    });
    let key = signing_key();
    let verify = verifier(*key.verifying_key());
    let server = server_handshake::<Control, _, _>(
        &mut server_send,
        &mut server_recv,
        EXPORTER,
        LIMIT,
        Expect::Proof(&verify),
    );
    let client = write_value(&mut client_send, &huge);
    let (server, _) = tokio::join!(server, client);
    assert!(matches!(
        server.map(drop),
        Err(HandshakeError::Frame(FrameIoError::Wire(_)))
    ));
}

/// A server that answers the hello with `answer`; returns what the client made of it.
async fn hostile_server(answer: BrokerFrame) -> Result<NodeWelcome, HandshakeError> {
    let key = signing_key();
    let node_signer = signer(&key);
    let ((mut client_send, mut client_recv), (mut server_send, mut server_recv)) = pipe();
    let server = async {
        let _ = read_value::<NodeFrame, _>(&mut server_recv, LIMIT).await;
        write_value(&mut server_send, &answer).await.unwrap();
        let _ = read_value::<NodeFrame, _>(&mut server_recv, LIMIT).await;
        // A second challenge, whatever the client sent.
        let _ = write_value(
            &mut server_send,
            &BrokerFrame::Challenge(wire::handshake::Challenge { nonce: [1; 32] }),
        )
        .await;
    };
    let client = async {
        let result = client_handshake::<Fleet, _, _>(
            &mut client_send,
            &mut client_recv,
            EXPORTER,
            LIMIT,
            Some(&node_signer),
        )
        .await;
        let _ = client_send.shutdown().await;
        result
    };
    tokio::join!(server, client).1
}

#[tokio::test]
async fn a_client_refuses_what_has_no_place_in_the_handshake() {
    let unexpected = hostile_server(BrokerFrame::HeartbeatAck { seq: 1 }).await;
    assert!(
        matches!(unexpected, Err(HandshakeError::Unexpected(_))),
        "{unexpected:?}"
    );
    let twice = hostile_server(BrokerFrame::Challenge(wire::handshake::Challenge {
        nonce: [2; 32],
    }))
    .await;
    assert!(
        matches!(twice, Err(HandshakeError::Unexpected(_))),
        "{twice:?}"
    );
}
