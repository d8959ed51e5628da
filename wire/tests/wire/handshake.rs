//! The challenge-response refuses a wrong key, another connection's nonce or exporter, and replays.

use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::elliptic_curve::Generate;
use wire::handshake::{
    ClientHandshake, Domain, EXPORTER_LEN, Proof, Refusal, ServerHandshake, Signer, Verifier,
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

fn prove(domain: Domain, exporter: [u8; EXPORTER_LEN], key: &Key) -> (ServerHandshake, Proof) {
    let (server, challenge) = ServerHandshake::new(domain, exporter);
    let proof = ClientHandshake::new(domain, exporter)
        .respond(&challenge, key)
        .unwrap();
    (server, proof)
}

#[test]
fn a_correct_proof_is_accepted() {
    let key = key();
    let (mut server, proof) = prove(Domain::Fleet, EXPORTER_A, &key);
    assert_eq!(server.receive_proof(&proof, &public(&key)), Ok(()));
}

#[test]
fn a_proof_from_the_wrong_key_is_refused() {
    let (node, other) = (key(), key());
    let (mut server, proof) = prove(Domain::Fleet, EXPORTER_A, &other);
    assert_eq!(
        server.receive_proof(&proof, &public(&node)),
        Err(Refusal::BadProof)
    );
}

#[test]
fn a_proof_over_another_connections_nonce_is_refused() {
    let key = key();
    let (_, proof_for_first) = prove(Domain::Fleet, EXPORTER_A, &key);
    // Same exporter (worst case), new connection hence new nonce: the recorded proof is worthless.
    let (mut second, _) = ServerHandshake::new(Domain::Fleet, EXPORTER_A);
    assert_eq!(
        second.receive_proof(&proof_for_first, &public(&key)),
        Err(Refusal::BadProof)
    );
}

#[test]
fn a_proof_over_different_exporter_bytes_is_refused() {
    let key = key();
    let nonce = [5u8; 32];
    let (mut server, challenge) = ServerHandshake::with_nonce(Domain::Fleet, EXPORTER_A, nonce);
    // The relaying client sees the same nonce but sits on another TLS connection.
    let proof = ClientHandshake::new(Domain::Fleet, EXPORTER_B)
        .respond(&challenge, &key)
        .unwrap();
    assert_eq!(
        server.receive_proof(&proof, &public(&key)),
        Err(Refusal::BadProof)
    );
}

#[test]
fn a_replayed_proof_on_the_same_connection_is_refused() {
    let key = key();
    let (mut server, proof) = prove(Domain::Fleet, EXPORTER_A, &key);
    assert_eq!(server.receive_proof(&proof, &public(&key)), Ok(()));
    assert_eq!(
        server.receive_proof(&proof, &public(&key)),
        Err(Refusal::Unexpected)
    );
}

#[test]
fn a_fleet_proof_is_worthless_to_the_control_api() {
    let key = key();
    let nonce = [9u8; 32];
    let (_, challenge) = ServerHandshake::with_nonce(Domain::Control, EXPORTER_A, nonce);
    let (mut control, _) = ServerHandshake::with_nonce(Domain::Control, EXPORTER_A, nonce);
    let fleet_proof = ClientHandshake::new(Domain::Fleet, EXPORTER_A)
        .respond(&challenge, &key)
        .unwrap();
    assert_eq!(
        control.receive_proof(&fleet_proof, &public(&key)),
        Err(Refusal::BadProof)
    );
}

#[test]
fn a_client_answers_only_one_challenge() {
    let key = key();
    let (_, challenge) = ServerHandshake::new(Domain::Fleet, EXPORTER_A);
    let mut client = ClientHandshake::new(Domain::Fleet, EXPORTER_A);
    assert!(client.respond(&challenge, &key).is_ok());
    assert_eq!(client.respond(&challenge, &key), Err(Refusal::Unexpected));
}

#[test]
fn nonces_are_fresh_per_connection() {
    let (_, first) = ServerHandshake::new(Domain::Fleet, EXPORTER_A);
    let (_, second) = ServerHandshake::new(Domain::Fleet, EXPORTER_A);
    assert_ne!(first.nonce, second.nonce);
}
