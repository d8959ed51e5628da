//! The challenge-response refuses a wrong key, another connection's nonce or exporter, and replays.

use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::elliptic_curve::Generate;
use wire::handshake::{
    ClientHandshake, ClientStep, Domain, EXPORTER_LEN, PROTOCOL_VERSION, Proof, Refusal,
    ServerHandshake, Signer, Verifier,
};

struct Key(SigningKey);

impl Signer for Key {
    fn sign(&self, message: &[u8]) -> Vec<u8> {
        let signature: Signature = self.0.sign(message);
        signature.to_der().as_bytes().to_vec()
    }
}

struct Public(VerifyingKey);

impl Verifier for Public {
    fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        Signature::from_der(signature)
            .map(|s| self.0.verify(message, &s).is_ok())
            .unwrap_or(false)
    }
}

fn key() -> Key {
    Key(SigningKey::generate_from_rng(&mut rand::rng()))
}

fn public(key: &Key) -> Public {
    Public(*key.0.verifying_key())
}

const EXPORTER_A: [u8; EXPORTER_LEN] = [0xaa; EXPORTER_LEN];
const EXPORTER_B: [u8; EXPORTER_LEN] = [0xbb; EXPORTER_LEN];

/// A server that accepted a hello and sent its challenge.
fn challenged(server: ServerHandshake) -> (ServerHandshake, wire::handshake::Challenge) {
    let mut server = server;
    server
        .receive_hello(ClientStep::Hello {
            version: PROTOCOL_VERSION,
        })
        .unwrap();
    let challenge = server.challenge().unwrap();
    (server, challenge)
}

fn prove(domain: Domain, exporter: [u8; EXPORTER_LEN], key: &Key) -> (ServerHandshake, ClientStep) {
    let (server, challenge) = challenged(ServerHandshake::new(domain, exporter));
    let proof = ClientHandshake::new(domain, exporter)
        .respond(&challenge, key)
        .unwrap();
    (server, ClientStep::Proof(proof))
}

#[test]
fn a_correct_proof_is_accepted() {
    let key = key();
    let (mut server, proof) = prove(Domain::Fleet, EXPORTER_A, &key);
    assert_eq!(server.receive_proof(proof.clone(), &public(&key)), Ok(()));
}

#[test]
fn a_proof_from_the_wrong_key_is_refused() {
    let (node, other) = (key(), key());
    let (mut server, proof) = prove(Domain::Fleet, EXPORTER_A, &other);
    assert_eq!(
        server.receive_proof(proof, &public(&node)),
        Err(Refusal::BadProof)
    );
}

#[test]
fn a_proof_over_another_connections_nonce_is_refused() {
    let key = key();
    let (_, proof_for_first) = prove(Domain::Fleet, EXPORTER_A, &key);
    // Same exporter (worst case), new connection hence new nonce: the recorded proof is worthless.
    let (mut second, _) = challenged(ServerHandshake::new(Domain::Fleet, EXPORTER_A));
    assert_eq!(
        second.receive_proof(proof_for_first, &public(&key)),
        Err(Refusal::BadProof)
    );
}

#[test]
fn a_proof_over_different_exporter_bytes_is_refused() {
    let key = key();
    let nonce = [5u8; 32];
    let (mut server, challenge) = challenged(ServerHandshake::with_nonce(
        Domain::Fleet,
        EXPORTER_A,
        nonce,
    ));
    // The relaying client sees the same nonce but sits on another TLS connection.
    let proof = ClientHandshake::new(Domain::Fleet, EXPORTER_B)
        .respond(&challenge, &key)
        .unwrap();
    assert_eq!(
        server.receive_proof(ClientStep::Proof(proof), &public(&key)),
        Err(Refusal::BadProof)
    );
}

#[test]
fn a_replayed_proof_on_the_same_connection_is_refused() {
    let key = key();
    let (mut server, proof) = prove(Domain::Fleet, EXPORTER_A, &key);
    assert_eq!(server.receive_proof(proof.clone(), &public(&key)), Ok(()));
    assert_eq!(
        server.receive_proof(proof.clone(), &public(&key)),
        Err(Refusal::Unexpected)
    );
}

#[test]
fn a_fleet_proof_is_worthless_to_the_control_api() {
    let key = key();
    let nonce = [9u8; 32];
    let (mut control, challenge) = challenged(ServerHandshake::with_nonce(
        Domain::Control,
        EXPORTER_A,
        nonce,
    ));
    let fleet_proof = ClientHandshake::new(Domain::Fleet, EXPORTER_A)
        .respond(&challenge, &key)
        .unwrap();
    assert_eq!(
        control.receive_proof(ClientStep::Proof(fleet_proof), &public(&key)),
        Err(Refusal::BadProof)
    );
}

#[test]
fn a_client_answers_only_one_challenge() {
    let key = key();
    let (_, challenge) = challenged(ServerHandshake::new(Domain::Fleet, EXPORTER_A));
    let mut client = ClientHandshake::new(Domain::Fleet, EXPORTER_A);
    assert!(client.respond(&challenge, &key).is_ok());
    assert_eq!(client.respond(&challenge, &key), Err(Refusal::Unexpected));
}

#[test]
fn nonces_are_fresh_per_connection() {
    let (_, first) = challenged(ServerHandshake::new(Domain::Fleet, EXPORTER_A));
    let (_, second) = challenged(ServerHandshake::new(Domain::Fleet, EXPORTER_A));
    assert_ne!(first.nonce, second.nonce);
}

#[test]
fn steps_out_of_order_end_the_handshake() {
    let key = key();
    // A proof before any hello.
    let mut server = ServerHandshake::new(Domain::Fleet, EXPORTER_A);
    let proof = ClientStep::Proof(Proof { signature: vec![] });
    assert_eq!(
        server.receive_proof(proof.clone(), &public(&key)),
        Err(Refusal::Unexpected)
    );
    // Once refused, even a correct sequence is refused.
    assert_eq!(
        server.receive_hello(ClientStep::Hello {
            version: PROTOCOL_VERSION
        }),
        Err(Refusal::Unexpected)
    );
    // A second hello.
    let (mut server, _) = challenged(ServerHandshake::new(Domain::Fleet, EXPORTER_A));
    assert_eq!(
        server.receive_hello(ClientStep::Hello {
            version: PROTOCOL_VERSION
        }),
        Err(Refusal::Unexpected)
    );
    // Something else where the proof belongs.
    let (mut server, _) = challenged(ServerHandshake::new(Domain::Fleet, EXPORTER_A));
    assert_eq!(
        server.receive_proof(ClientStep::Other, &public(&key)),
        Err(Refusal::Unexpected)
    );
    // A welcome decision before any proof.
    let (mut server, _) = challenged(ServerHandshake::new(Domain::Fleet, EXPORTER_A));
    assert_eq!(server.admit(), Err(Refusal::Unexpected));
}

#[test]
fn another_protocol_version_is_refused_by_number() {
    let mut server = ServerHandshake::new(Domain::Control, EXPORTER_A);
    assert_eq!(
        server.receive_hello(ClientStep::Hello { version: 7 }),
        Err(Refusal::UnsupportedVersion(7))
    );
    assert_eq!(server.challenge(), Err(Refusal::Unexpected));
}

#[test]
fn closures_sign_and_verify() {
    let key = key();
    let verifying = *key.0.verifying_key();
    let sign = |message: &[u8]| key.sign(message);
    let verify = move |message: &[u8], signature: &[u8]| {
        Signature::from_der(signature).is_ok_and(|s| verifying.verify(message, &s).is_ok())
    };
    let (mut server, challenge) = challenged(ServerHandshake::new(Domain::Fleet, EXPORTER_A));
    let proof = ClientHandshake::new(Domain::Fleet, EXPORTER_A)
        .respond(&challenge, &sign)
        .unwrap();
    assert_eq!(
        server.receive_proof(ClientStep::Proof(proof), &verify),
        Ok(())
    );
}
