//! The authentication handshake on top of TLS, as sans-IO state machines.
//!
//! ```text
//! client                                   server
//!   Hello            ------------------->
//!                    <-------------------   Challenge { nonce }        (fresh, random, per connection)
//!   Proof { sig }    ------------------->   verify(sig, domain || exporter || nonce, expected key)
//!                    <-------------------   accept, or a typed refusal
//! ```
//!
//! The signed transcript binds three things: the API (a domain-separation string, so a node proof is
//! worthless to the Control API and vice versa), the TLS connection (keying material exported from
//! this connection's TLS session, so a proof relayed onto another connection fails), and the nonce
//! (so a recorded proof cannot be replayed, whenever). No timestamp is signed: nothing depends on
//! the client's clock.
//!
//! Cryptography stays outside this module: the client signs through [`Signer`], the server verifies
//! through [`Verifier`]; the `certs` crate implements both for ECDSA P-256 and P-384.

use rand::RngExt as _;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Length of the server's nonce.
pub const NONCE_LEN: usize = 32;

/// Length of the TLS exporter output both sides derive.
pub const EXPORTER_LEN: usize = 32;

/// The TLS exporter label (RFC 8446 s.7.5) both sides use for the channel binding.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-flower-rs-auth-v1";

/// Which API a proof is for: the signed transcript starts with this domain-separation string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    /// A node authenticating to the Fleet API.
    Fleet,
    /// An operator authenticating to the Control API.
    Control,
}

impl Domain {
    /// The domain-separation string.
    pub fn tag(self) -> &'static [u8] {
        match self {
            Domain::Fleet => b"flower-rs fleet authentication v1\0",
            Domain::Control => b"flower-rs control authentication v1\0",
        }
    }
}

/// The server's challenge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// Fresh random bytes, never reused.
    pub nonce: [u8; NONCE_LEN],
}

/// The client's answer: a signature over the transcript.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// Signature bytes (DER-encoded ECDSA for the keys this product uses).
    pub signature: Vec<u8>,
}

/// Why the server refused a client. Variants are only ever appended.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum Refusal {
    /// The signature does not verify against the expected key over this connection's transcript.
    #[error("the authentication proof does not verify for this connection")]
    BadProof,
    /// The key is not registered with the broker.
    #[error("the public key is not registered with the SuperLink")]
    UnknownKey,
    /// The key was registered once and then unregistered; it can never be used again.
    #[error("the public key was unregistered and can no longer be used")]
    Revoked,
    /// The key is not one of the broker's operator keys.
    #[error("the key is not an authorised operator key")]
    NotOperator,
    /// The client presented no key where one is required.
    #[error("a client key is required")]
    KeyRequired,
    /// A message arrived that the handshake did not expect (for example a second proof).
    #[error("unexpected handshake message")]
    Unexpected,
    /// The client speaks a protocol version the server does not.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u32),
    /// The handshake did not finish in time.
    #[error("the authentication handshake timed out")]
    Timeout,
}

/// Produces signatures with the client's private key.
pub trait Signer {
    /// Signs `message`.
    fn sign(&self, message: &[u8]) -> Vec<u8>;
}

/// Checks signatures against the public key the server expects for this connection.
pub trait Verifier {
    /// Whether `signature` is valid for `message`.
    fn verify(&self, message: &[u8], signature: &[u8]) -> bool;
}

/// The bytes a client signs.
pub fn transcript(
    domain: Domain,
    exporter: &[u8; EXPORTER_LEN],
    nonce: &[u8; NONCE_LEN],
) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(domain.tag().len() + EXPORTER_LEN + NONCE_LEN);
    bytes.extend_from_slice(domain.tag());
    bytes.extend_from_slice(exporter);
    bytes.extend_from_slice(nonce);
    bytes
}

/// The server side of one connection's handshake.
#[derive(Debug)]
pub struct ServerHandshake {
    /// API being authenticated.
    domain: Domain,
    /// This connection's exported keying material.
    exporter: [u8; EXPORTER_LEN],
    /// The nonce sent in this connection's challenge.
    nonce: [u8; NONCE_LEN],
    /// Whether a proof was already examined: one attempt per connection.
    finished: bool,
}

impl ServerHandshake {
    /// Starts a handshake with a fresh random nonce; send the returned challenge to the client.
    pub fn new(domain: Domain, exporter: [u8; EXPORTER_LEN]) -> (Self, Challenge) {
        let nonce: [u8; NONCE_LEN] = rand::rng().random();
        Self::with_nonce(domain, exporter, nonce)
    }

    /// Starts a handshake with a given nonce (deterministic tests only; production uses [`Self::new`]).
    pub fn with_nonce(
        domain: Domain,
        exporter: [u8; EXPORTER_LEN],
        nonce: [u8; NONCE_LEN],
    ) -> (Self, Challenge) {
        (
            ServerHandshake {
                domain,
                exporter,
                nonce,
                finished: false,
            },
            Challenge { nonce },
        )
    }

    /// Examines the client's proof against the key expected for this connection. Only the first proof
    /// counts; any later one is refused as [`Refusal::Unexpected`].
    pub fn receive_proof(&mut self, proof: &Proof, expected: &dyn Verifier) -> Result<(), Refusal> {
        if std::mem::replace(&mut self.finished, true) {
            return Err(Refusal::Unexpected);
        }
        let message = transcript(self.domain, &self.exporter, &self.nonce);
        if expected.verify(&message, &proof.signature) {
            Ok(())
        } else {
            Err(Refusal::BadProof)
        }
    }
}

/// The client side of one connection's handshake.
#[derive(Debug)]
pub struct ClientHandshake {
    /// API being authenticated to.
    domain: Domain,
    /// This connection's exported keying material.
    exporter: [u8; EXPORTER_LEN],
    /// Whether a challenge was already answered: a server asking twice is misbehaving.
    answered: bool,
}

impl ClientHandshake {
    /// A client handshake for the connection whose exporter output is `exporter`.
    pub fn new(domain: Domain, exporter: [u8; EXPORTER_LEN]) -> Self {
        ClientHandshake {
            domain,
            exporter,
            answered: false,
        }
    }

    /// Answers the server's challenge.
    pub fn respond(
        &mut self,
        challenge: &Challenge,
        signer: &dyn Signer,
    ) -> Result<Proof, Refusal> {
        if std::mem::replace(&mut self.answered, true) {
            return Err(Refusal::Unexpected);
        }
        let message = transcript(self.domain, &self.exporter, &challenge.nonce);
        Ok(Proof {
            signature: signer.sign(&message),
        })
    }
}
