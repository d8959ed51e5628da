//! App bundles at the broker: received from operators (checked, then stored once per hash) and
//! served to nodes that have work of a run using them.

use crate::state::Shared;
use app_bundle::{Bundle, MAX_BUNDLE_BYTES};
use std::sync::Arc;
use std::time::Duration;
use wire::bundle::{BundleSignature, MAX_SIGNATURES, signing_message};
use wire::control::{ControlError, ControlFrame, ControlResponse};
use wire::fleet::BundleAnswer;
use wire::io::{FrameIoError, write_value};
use wire::{BundleHash, NodeId};

/// Most bundles being received from operators at once: each holds up to
/// [`MAX_BUNDLE_BYTES`] in memory until it is checked.
static RECEIVING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// How long an operator has to send an offered bundle's bytes.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// Why an offered bundle's bytes could not be read: the stream is no longer usable.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// Writing the answer failed.
    #[error(transparent)]
    Frame(#[from] FrameIoError),
    /// Reading the bytes failed or took too long.
    #[error("the bundle's bytes did not arrive: {0}")]
    Bytes(String),
}

async fn respond(
    send: &mut quinn::SendStream,
    response: ControlResponse,
) -> Result<(), FrameIoError> {
    write_value(send, &ControlFrame::Response(response)).await
}

/// Answers [`wire::control::ControlRequest::OfferBundle`]: refuses a signature that does not
/// verify; keeps the signatures of a bundle stored already and declines its bytes; refuses one
/// too large; otherwise reads the bytes, checks them and stores them with their signatures.
pub async fn receive(
    shared: &Shared,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    hash: BundleHash,
    size: u64,
    signatures: Vec<BundleSignature>,
) -> Result<(), UploadError> {
    let refuse = |error: ControlError| ControlResponse::Error(error);
    let signatures = match check_signatures(hash, signatures) {
        Ok(signatures) => signatures,
        Err(why) => return Ok(respond(send, refuse(ControlError::InvalidBundle(why))).await?),
    };
    if size > MAX_BUNDLE_BYTES {
        let error = ControlError::InvalidBundle(format!(
            "it is {size} bytes, over the limit of {MAX_BUNDLE_BYTES} bytes"
        ));
        return Ok(respond(send, refuse(error)).await?);
    }
    match shared.store.has_bundle(hash) {
        Ok(true) => {
            let response = match keep_signatures(&shared.store, hash, &signatures) {
                Ok(()) => ControlResponse::BundleWanted { wanted: false },
                Err(error) => refuse(error),
            };
            return Ok(respond(send, response).await?);
        }
        Ok(false) => {}
        Err(error) => {
            return Ok(respond(send, refuse(ControlError::Internal(error.to_string()))).await?);
        }
    }
    let Ok(_permit) = RECEIVING.acquire().await else {
        return Ok(respond(send, refuse(ControlError::Internal("shutting down".into()))).await?);
    };
    respond(send, ControlResponse::BundleWanted { wanted: true }).await?;
    let mut bytes = vec![0u8; size as usize];
    tokio::time::timeout(UPLOAD_TIMEOUT, recv.read_exact(&mut bytes))
        .await
        .map_err(|_| UploadError::Bytes(format!("not within {UPLOAD_TIMEOUT:?}")))?
        .map_err(|e| UploadError::Bytes(e.to_string()))?;
    // Hashing, reading the archive and a durable commit: off the async threads.
    let store = shared.store.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let bundle =
            Bundle::open(&bytes, hash).map_err(|e| ControlError::InvalidBundle(e.to_string()))?;
        store
            .put_bundle(hash, &bytes)
            .map_err(|e| ControlError::Internal(e.to_string()))?;
        // A concurrent offer of the same bytes may have stored signatures since.
        keep_signatures(&store, hash, &signatures)?;
        Ok::<_, ControlError>(bundle.manifest.name)
    })
    .await
    .unwrap_or_else(|e| Err(ControlError::Internal(e.to_string())));
    let response = match checked {
        Ok(app) => {
            tracing::info!(%hash, %app, size, "app bundle stored");
            ControlResponse::BundleStored { hash }
        }
        Err(error) => refuse(error),
    };
    Ok(respond(send, response).await?)
}

/// Checks that every signature is a publisher's valid signature of `hash` and that there are
/// not too many; returns them with each key in its canonical form, so one publisher's key is
/// one entry however it was encoded.
fn check_signatures(
    hash: BundleHash,
    signatures: Vec<BundleSignature>,
) -> Result<Vec<BundleSignature>, String> {
    if signatures.len() > MAX_SIGNATURES {
        return Err(format!(
            "{} signatures, at most {MAX_SIGNATURES}",
            signatures.len()
        ));
    }
    let message = signing_message(hash);
    signatures
        .into_iter()
        .map(|signature| {
            let key = certs::PublicKey::from_spki_der(&signature.public_key)
                .map_err(|e| format!("a signature's public key is not valid: {e}"))?;
            if !key.verify(&message, &signature.signature) {
                return Err(format!(
                    "the signature by {} is not a signature of this bundle",
                    key.fingerprint()
                ));
            }
            Ok(BundleSignature {
                public_key: key.to_spki_der(),
                signature: signature.signature,
            })
        })
        .collect()
}

/// Keeps `signatures` of the stored bundle `hash`, unless the bundle would then carry more
/// than [`MAX_SIGNATURES`] publishers: anyone may sign any hash, and a bundle with too many
/// signatures would reach no node.
fn keep_signatures(
    store: &crate::store::Store,
    hash: BundleHash,
    signatures: &[BundleSignature],
) -> Result<(), ControlError> {
    match store.add_bundle_signatures(hash, signatures, MAX_SIGNATURES) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(publishers)) => Err(ControlError::InvalidBundle(format!(
            "the bundle would carry {publishers} publishers' signatures, at most {MAX_SIGNATURES}"
        ))),
        Err(error) => Err(ControlError::Internal(error.to_string())),
    }
}

/// Tells `node` it gets no bundle `hash`, and why. Any authenticated node can ask, as often as
/// it opens streams: the refusal is logged at debug level and counted, not warned about.
async fn refuse(
    shared: &Shared,
    mut send: quinn::SendStream,
    node: NodeId,
    hash: BundleHash,
    reason: String,
) {
    tracing::debug!(%node, %hash, %reason, "bundle refused to a node");
    shared.metrics.bundle_refused();
    let answer = BundleAnswer::Refused(format!("no bundle {hash}: {reason}"));
    // Bounded: a node that grants no credit must not keep this task (or a slot) forever.
    let _ = tokio::time::timeout(ANSWER_TIMEOUT, write_value(&mut send, &answer)).await;
    let _ = send.finish();
}

/// How long a node has to take a refusal or a list of signatures.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers a node's [`wire::fleet::NodeStream::FetchBundle`] (with `whole`) or
/// [`wire::fleet::NodeStream::FetchSignatures`]: the bundle of a run the node has an unanswered
/// instruction of, or its signatures only, or a refusal. A bundle is an operator's code: it goes
/// only to the nodes asked to run it. Its bytes are sent within the bounds of
/// [`crate::bundle_sender`]: a slot taken before they are read, one shared copy, one fetch of a
/// bundle per node at a time, and progress or the slot is given up.
pub async fn serve(
    shared: Arc<Shared>,
    node: NodeId,
    mut send: quinn::SendStream,
    hash: BundleHash,
    whole: bool,
) {
    if !shared.rounds.awaits_bundle(node, hash) {
        let reason = "this node has no instruction of a run that uses it";
        return refuse(&shared, send, node, hash, reason.into()).await;
    }
    let sender = &shared.bundle_sender;
    let claim = if whole {
        match sender.claim(node, hash) {
            Some(claim) => Some(claim),
            None => {
                let reason = "this node is fetching it already";
                return refuse(&shared, send, node, hash, reason.into()).await;
            }
        }
    } else {
        None
    };
    // Signatures are small: only a bundle's bytes wait for a slot, and only while the node
    // still wants them (a node that gave up stops the stream, and its claim goes with it).
    let _slot = match &claim {
        Some(_) => tokio::select! {
            slot = sender.slot() => match slot {
                Some(slot) => Some(slot),
                None => return,
            },
            _ = send.stopped() => return,
        },
        None => None,
    };
    // The store is read off the runtime's threads: up to 10 MiB for the bytes.
    let reading = shared.clone();
    let read = tokio::task::spawn_blocking(move || {
        let store = &reading.store;
        let signatures = store.bundle_signatures(hash)?;
        let bytes = if whole {
            reading
                .bundle_sender
                .copy(hash, || store.bundle(hash))?
                .map(Some)
        } else {
            Some(None)
        };
        Ok::<_, crate::store::StoreError>((signatures, bytes))
    })
    .await;
    let (mut signatures, bytes) = match read {
        Ok(Ok((signatures, Some(bytes)))) => (signatures, bytes),
        Ok(Ok((_, None))) => {
            return refuse(&shared, send, node, hash, "it is not stored".into()).await;
        }
        Ok(Err(error)) => return refuse(&shared, send, node, hash, error.to_string()).await,
        Err(error) => return refuse(&shared, send, node, hash, error.to_string()).await,
    };
    // No bundle carries more (offers are capped): the answer stays within the node's frame limit.
    signatures.truncate(MAX_SIGNATURES);
    let Some(bytes) = bytes else {
        let answer = BundleAnswer::Signatures(signatures);
        let _ = tokio::time::timeout(ANSWER_TIMEOUT, write_value(&mut send, &answer)).await;
        let _ = send.finish();
        return;
    };
    let answer = BundleAnswer::Found {
        size: bytes.len() as u64,
        signatures,
    };
    let head = match wire::frame::encode(&answer) {
        Ok(head) => head,
        Err(error) => return refuse(&shared, send, node, hash, error.to_string()).await,
    };
    // The slot is held until the node has acknowledged every byte: QUIC takes a whole bundle
    // into its send buffer at once (the node grants that much credit), so a write returns long
    // before the bytes are gone, and the buffer is what the slots bound.
    let deadline = tokio::time::Instant::now()
        + crate::bundle_sender::BundleSender::deadline_for((head.len() + bytes.len()) as u64);
    let sent = match sender.send(&mut send, &head, &bytes).await {
        Ok(()) => {
            let _ = send.finish();
            match tokio::time::timeout_at(deadline, send.stopped()).await {
                Ok(Ok(None)) => Ok(()),
                Ok(Ok(Some(code))) => Err(format!("the node stopped the stream ({code})")),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err("the node did not take it all by its deadline".into()),
            }
        }
        Err(error) => Err(error.to_string()),
    };
    match sent {
        Ok(()) => tracing::info!(%node, %hash, "bundle sent to a node"),
        Err(error) => {
            // Resetting drops what the stream still buffers.
            let _ = send.reset(wire::close::PROTOCOL.into());
            tracing::debug!(%node, %hash, %error, "bundle not sent");
        }
    }
    drop(claim);
}
