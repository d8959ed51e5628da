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
//! The machines own the whole sequence: the version check of the hello, the challenge, the proof, and
//! the welcome or typed refusal. [`Api`] maps those steps onto each API's frame enum, so the Fleet
//! and Control APIs share one implementation while their bytes stay their own. The async driver that
//! moves the frames over a stream pair is `crate::io::handshake` (feature `io`).
//!
//! Cryptography stays outside this module: the client signs through [`Signer`], the server verifies
//! through [`Verifier`]. Both are implemented for closures, so a caller passes its key's sign or
//! verify method and this crate knows nothing of key types.

use rand::RngExt as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt::Debug;
use thiserror::Error;

/// Protocol version a client announces in its hello, on both APIs.
pub const PROTOCOL_VERSION: u32 = 1;

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

impl<F: Fn(&[u8]) -> Vec<u8>> Signer for F {
    fn sign(&self, message: &[u8]) -> Vec<u8> {
        self(message)
    }
}

/// Checks signatures against the public key the server expects for this connection.
pub trait Verifier {
    /// Whether `signature` is valid for `message`.
    fn verify(&self, message: &[u8], signature: &[u8]) -> bool;
}

impl<F: Fn(&[u8], &[u8]) -> bool> Verifier for F {
    fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        self(message, signature)
    }
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

/// A client frame as the handshake sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientStep {
    /// The first frame, announcing the client's protocol version.
    Hello {
        /// The client's [`PROTOCOL_VERSION`].
        version: u32,
    },
    /// The answer to the challenge.
    Proof(Proof),
    /// Any frame that has no place in the handshake.
    Other,
}

/// A server frame as the handshake sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerStep<W> {
    /// The challenge to sign.
    Challenge(Challenge),
    /// The client is in.
    Welcome(W),
    /// The client is out, and why.
    Refused(Refusal),
    /// Any frame that has no place in the handshake, described for an error message.
    Other(String),
}

/// One API's handshake frames: how the neutral steps map onto its own frame enums. Implemented by
/// `crate::fleet::Fleet` and `crate::control::Control`.
pub trait Api {
    /// The domain-separation string of this API's proofs.
    const DOMAIN: Domain;
    /// Client-to-server frames.
    type ClientFrame: Serialize + DeserializeOwned + Debug + Send + Sync;
    /// Server-to-client frames.
    type ServerFrame: Serialize + DeserializeOwned + Debug + Send + Sync;
    /// What the server tells an admitted client.
    type Welcome: Debug + Send;

    /// The client's hello.
    fn hello(version: u32) -> Self::ClientFrame;
    /// The client's proof.
    fn proof(proof: Proof) -> Self::ClientFrame;
    /// The server's challenge.
    fn challenge(challenge: Challenge) -> Self::ServerFrame;
    /// The server's welcome.
    fn welcome(welcome: Self::Welcome) -> Self::ServerFrame;
    /// The server's refusal.
    fn refused(refusal: Refusal) -> Self::ServerFrame;
    /// Reads a client frame as a handshake step.
    fn client_step(frame: Self::ClientFrame) -> ClientStep;
    /// Reads a server frame as a handshake step.
    fn server_step(frame: Self::ServerFrame) -> ServerStep<Self::Welcome>;
}

/// Where a server handshake stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerState {
    /// Waiting for the client's hello.
    AwaitingHello,
    /// The hello was accepted; a challenge may be sent.
    Greeted,
    /// The challenge is out; waiting for the proof.
    Challenged,
    /// The proof verified (or none was needed): only the admission decision is left.
    Verified,
    /// Refused, or a proof was examined: nothing more is accepted on this connection.
    Finished,
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
    /// Where the exchange stands: every step is accepted once, in order.
    state: ServerState,
}

impl ServerHandshake {
    /// Starts a handshake with a fresh random nonce.
    pub fn new(domain: Domain, exporter: [u8; EXPORTER_LEN]) -> Self {
        let nonce: [u8; NONCE_LEN] = rand::rng().random();
        Self::with_nonce(domain, exporter, nonce)
    }

    /// Starts a handshake with a given nonce (deterministic tests only; production uses [`Self::new`]).
    pub fn with_nonce(
        domain: Domain,
        exporter: [u8; EXPORTER_LEN],
        nonce: [u8; NONCE_LEN],
    ) -> Self {
        ServerHandshake {
            domain,
            exporter,
            nonce,
            state: ServerState::AwaitingHello,
        }
    }

    /// Moves from `from` to `to`, or finishes the handshake as [`Refusal::Unexpected`].
    fn advance(&mut self, from: ServerState, to: ServerState) -> Result<(), Refusal> {
        if self.state == from {
            self.state = to;
            Ok(())
        } else {
            self.state = ServerState::Finished;
            Err(Refusal::Unexpected)
        }
    }

    /// Examines the client's first frame: a hello in this protocol version, or the refusal to send.
    pub fn receive_hello(&mut self, step: ClientStep) -> Result<(), Refusal> {
        self.advance(ServerState::AwaitingHello, ServerState::Greeted)?;
        match step {
            ClientStep::Hello { version } if version == PROTOCOL_VERSION => Ok(()),
            ClientStep::Hello { version } => self.refuse(Refusal::UnsupportedVersion(version)),
            _ => self.refuse(Refusal::Unexpected),
        }
    }

    /// The challenge to send after an accepted hello (once).
    pub fn challenge(&mut self) -> Result<Challenge, Refusal> {
        self.advance(ServerState::Greeted, ServerState::Challenged)?;
        Ok(Challenge { nonce: self.nonce })
    }

    /// Lets a client in without a proof after an accepted hello (the Control API's loopback mode).
    pub fn skip_proof(&mut self) -> Result<(), Refusal> {
        self.advance(ServerState::Greeted, ServerState::Verified)
    }

    /// Examines the client's answer to the challenge against the key expected for this connection.
    /// Only the first proof counts; anything else, or a later proof, is [`Refusal::Unexpected`].
    pub fn receive_proof(
        &mut self,
        step: ClientStep,
        expected: &dyn Verifier,
    ) -> Result<(), Refusal> {
        self.advance(ServerState::Challenged, ServerState::Verified)?;
        let ClientStep::Proof(proof) = step else {
            return self.refuse(Refusal::Unexpected);
        };
        let message = transcript(self.domain, &self.exporter, &self.nonce);
        if expected.verify(&message, &proof.signature) {
            Ok(())
        } else {
            self.refuse(Refusal::BadProof)
        }
    }

    /// Whether the client proved itself (or needed no proof) and only admission is left.
    pub fn is_verified(&self) -> bool {
        self.state == ServerState::Verified
    }

    /// Ends the handshake with `refusal`: nothing more is accepted.
    pub fn refuse<T>(&mut self, refusal: Refusal) -> Result<T, Refusal> {
        self.state = ServerState::Finished;
        Err(refusal)
    }

    /// Ends a verified handshake with the admission decision: `Ok` to send the welcome.
    pub fn admit(&mut self) -> Result<(), Refusal> {
        self.advance(ServerState::Verified, ServerState::Finished)
    }
}

/// What a client does after a server frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientNext<W> {
    /// Send this proof and wait for the verdict.
    Prove(Proof),
    /// The server welcomed the client: the handshake is over.
    Welcomed(W),
}

/// Why a client's handshake ended without a welcome.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClientFailure {
    /// The server refused the client.
    #[error("refused: {0}")]
    Refused(Refusal),
    /// The server asks for a proof and the client has no key to sign one with.
    #[error("the server asks for a key and none is configured")]
    KeyRequired,
    /// The server sent a frame that has no place at this point of the handshake.
    #[error("unexpected handshake frame from the server: {0}")]
    Unexpected(String),
}

/// Where a client handshake stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientState {
    /// The hello is not sent yet.
    Start,
    /// The hello is out: a challenge, a welcome or a refusal may come.
    Greeted,
    /// The proof is out: only a welcome or a refusal may come.
    Proved,
    /// Welcomed or failed.
    Finished,
}

/// The client side of one connection's handshake.
#[derive(Debug)]
pub struct ClientHandshake {
    /// API being authenticated to.
    domain: Domain,
    /// This connection's exported keying material.
    exporter: [u8; EXPORTER_LEN],
    /// Where the exchange stands: a server asking twice is misbehaving.
    state: ClientState,
}

impl ClientHandshake {
    /// A client handshake for the connection whose exporter output is `exporter`.
    pub fn new(domain: Domain, exporter: [u8; EXPORTER_LEN]) -> Self {
        ClientHandshake {
            domain,
            exporter,
            state: ClientState::Start,
        }
    }

    /// The version to announce in the hello (sent once, first: a second hello ends the handshake).
    pub fn hello(&mut self) -> u32 {
        self.state = match self.state {
            ClientState::Start => ClientState::Greeted,
            _ => ClientState::Finished,
        };
        PROTOCOL_VERSION
    }

    /// Reads the server's next frame: a challenge is answered with `signer`, a welcome ends the
    /// handshake, anything else fails it.
    pub fn receive<W>(
        &mut self,
        step: ServerStep<W>,
        signer: Option<&dyn Signer>,
    ) -> Result<ClientNext<W>, ClientFailure> {
        let state = std::mem::replace(&mut self.state, ClientState::Finished);
        match (state, step) {
            (ClientState::Greeted, ServerStep::Challenge(challenge)) => {
                let signer = signer.ok_or(ClientFailure::KeyRequired)?;
                self.state = ClientState::Proved;
                Ok(ClientNext::Prove(self.sign(&challenge, signer)))
            }
            (ClientState::Greeted | ClientState::Proved, ServerStep::Welcome(welcome)) => {
                Ok(ClientNext::Welcomed(welcome))
            }
            (ClientState::Greeted | ClientState::Proved, ServerStep::Refused(refusal)) => {
                Err(ClientFailure::Refused(refusal))
            }
            (_, ServerStep::Challenge(_)) => {
                Err(ClientFailure::Unexpected("a second challenge".into()))
            }
            (_, ServerStep::Other(frame)) => Err(ClientFailure::Unexpected(frame)),
            (_, _) => Err(ClientFailure::Unexpected(
                "a frame after the handshake ended".into(),
            )),
        }
    }

    /// Answers `challenge` directly, outside the sequence (once per handshake): for tests that
    /// craft proofs, such as relaying one onto another connection.
    pub fn respond(
        &mut self,
        challenge: &Challenge,
        signer: &dyn Signer,
    ) -> Result<Proof, Refusal> {
        if std::mem::replace(&mut self.state, ClientState::Proved) == ClientState::Proved {
            return Err(Refusal::Unexpected);
        }
        Ok(self.sign(challenge, signer))
    }

    fn sign(&self, challenge: &Challenge, signer: &dyn Signer) -> Proof {
        let message = transcript(self.domain, &self.exporter, &challenge.nonce);
        Proof {
            signature: signer.sign(&message),
        }
    }
}
