//! The authentication handshake driven over any pair of tokio streams: the sans-IO machines of
//! [`crate::handshake`] decide, this module only moves their frames.
//!
//! A server calls [`server_handshake`] with what it expects of this connection (a proof by a given
//! key, no proof, or an up-front refusal) and gets back a [`Verified`] client, to which it sends the
//! welcome or a refusal once its admission policy has decided. A client calls [`client_handshake`]
//! and gets the welcome. Every refusal is sent as a frame before the error is returned, so the
//! caller only closes the connection.

use super::{FrameIoError, read_value, write_value};
use crate::handshake::{
    Api, ClientFailure, ClientHandshake, ClientNext, EXPORTER_LEN, Refusal, ServerHandshake,
    Signer, Verifier,
};
use std::marker::PhantomData;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};

/// Why a handshake ended without a welcome.
#[derive(Debug, Error)]
pub enum HandshakeError {
    /// The stream failed or carried bytes that are not a frame.
    #[error("bad frame: {0}")]
    Frame(#[from] FrameIoError),
    /// The server refused the client (on the server: the refusal it sent).
    #[error("refused: {0}")]
    Refused(Refusal),
    /// The server asks for a proof and the client has no key to sign one with.
    #[error("the server asks for a key and none is configured")]
    KeyRequired,
    /// The server sent a frame that has no place in the handshake.
    #[error("unexpected handshake frame: {0}")]
    Unexpected(String),
}

impl From<ClientFailure> for HandshakeError {
    fn from(failure: ClientFailure) -> Self {
        match failure {
            ClientFailure::Refused(refusal) => HandshakeError::Refused(refusal),
            ClientFailure::KeyRequired => HandshakeError::KeyRequired,
            ClientFailure::Unexpected(frame) => HandshakeError::Unexpected(frame),
        }
    }
}

/// What a server expects of a connection before it reads a frame: decided from the TLS session
/// (the client's key) and the server's policy.
pub enum Expect<'v> {
    /// A proof signed by this key.
    Proof(&'v (dyn Verifier + Sync)),
    /// No proof: the client is let in after its hello (a trusted local operator).
    NoProof,
    /// Refuse after the hello, whatever the client says.
    Refuse(Refusal),
}

/// A client that passed the handshake on a server; the server's admission policy decides the rest
/// and sends it on the same stream. Dropping it without [`Verified::welcome`] or
/// [`Verified::refuse`] sends nothing.
#[must_use = "send the welcome or a refusal"]
pub struct Verified<A: Api> {
    /// The machine, verified and waiting for the admission decision.
    machine: ServerHandshake,
    /// The API whose frames are sent.
    api: PhantomData<A>,
}

impl<A: Api> Verified<A> {
    /// Lets the client in.
    pub async fn welcome<S: AsyncWrite + Unpin>(
        mut self,
        send: &mut S,
        welcome: A::Welcome,
    ) -> Result<(), HandshakeError> {
        self.machine.admit().map_err(HandshakeError::Refused)?;
        write_value(send, &A::welcome(welcome)).await?;
        Ok(())
    }

    /// Turns the client away; returns the error to report.
    pub async fn refuse<S: AsyncWrite + Unpin>(
        mut self,
        send: &mut S,
        refusal: Refusal,
    ) -> HandshakeError {
        let _: Result<(), _> = self.machine.refuse(refusal.clone());
        send_refusal::<A, S>(send, refusal).await
    }
}

/// Sends `refusal` (best effort: the peer may be gone) and returns it as the error.
async fn send_refusal<A: Api, S: AsyncWrite + Unpin>(
    send: &mut S,
    refusal: Refusal,
) -> HandshakeError {
    let _ = write_value(send, &A::refused(refusal.clone())).await;
    HandshakeError::Refused(refusal)
}

/// The server's side: reads the hello, then challenges and verifies as `expect` says. Frames
/// larger than `limit` are refused before allocation.
pub async fn server_handshake<A, S, R>(
    send: &mut S,
    recv: &mut R,
    exporter: [u8; EXPORTER_LEN],
    limit: u32,
    expect: Expect<'_>,
) -> Result<Verified<A>, HandshakeError>
where
    A: Api,
    S: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    let mut machine = ServerHandshake::new(A::DOMAIN, exporter);
    let hello = read_value::<A::ClientFrame, _>(recv, limit).await?;
    if let Err(refusal) = machine.receive_hello(A::client_step(hello)) {
        return Err(send_refusal::<A, S>(send, refusal).await);
    }
    let verdict = match expect {
        Expect::Refuse(refusal) => machine.refuse(refusal),
        Expect::NoProof => machine.skip_proof(),
        Expect::Proof(verifier) => {
            let challenge = machine.challenge().map_err(HandshakeError::Refused)?;
            write_value(send, &A::challenge(challenge)).await?;
            let proof = read_value::<A::ClientFrame, _>(recv, limit).await?;
            machine.receive_proof(A::client_step(proof), verifier)
        }
    };
    match verdict {
        Ok(()) => Ok(Verified {
            machine,
            api: PhantomData,
        }),
        Err(refusal) => Err(send_refusal::<A, S>(send, refusal).await),
    }
}

/// The client's side: says hello, answers a challenge with `signer` if the server sends one, and
/// returns the server's welcome.
pub async fn client_handshake<A, S, R>(
    send: &mut S,
    recv: &mut R,
    exporter: [u8; EXPORTER_LEN],
    limit: u32,
    signer: Option<&(dyn Signer + Sync)>,
) -> Result<A::Welcome, HandshakeError>
where
    A: Api,
    S: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    let mut machine = ClientHandshake::new(A::DOMAIN, exporter);
    write_value(send, &A::hello(machine.hello())).await?;
    loop {
        let frame = read_value::<A::ServerFrame, _>(recv, limit).await?;
        match machine.receive(
            A::server_step(frame),
            signer.map(|signer| signer as &dyn Signer),
        )? {
            ClientNext::Prove(proof) => write_value(send, &A::proof(proof)).await?,
            ClientNext::Welcomed(welcome) => return Ok(welcome),
        }
    }
}
