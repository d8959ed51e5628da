//! App bundles at the broker: received from operators (checked, then stored once per hash) and
//! served to nodes that have work of a run using them.

use crate::state::Shared;
use model::bundle::{Bundle, MAX_BUNDLE_BYTES};
use std::time::Duration;
use wire::control::{ControlError, ControlFrame, ControlResponse};
use wire::fleet::BundleAnswer;
use wire::io::{FrameIoError, write_value};
use wire::{BundleHash, NodeId};

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

/// Answers [`wire::control::ControlRequest::OfferBundle`]: declines what is stored already or
/// too large, otherwise reads the bytes, checks them and stores them.
pub async fn receive(
    shared: &Shared,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    hash: BundleHash,
    size: u64,
) -> Result<(), UploadError> {
    let refuse = |error: ControlError| ControlResponse::Error(error);
    if size > MAX_BUNDLE_BYTES {
        let error = ControlError::InvalidBundle(format!(
            "it is {size} bytes, over the limit of {MAX_BUNDLE_BYTES} bytes"
        ));
        return Ok(respond(send, refuse(error)).await?);
    }
    match shared.store.has_bundle(hash) {
        Ok(true) => {
            return Ok(respond(send, ControlResponse::BundleWanted { wanted: false }).await?);
        }
        Ok(false) => {}
        Err(error) => {
            return Ok(respond(send, refuse(ControlError::Internal(error.to_string()))).await?);
        }
    }
    respond(send, ControlResponse::BundleWanted { wanted: true }).await?;
    let mut bytes = vec![0u8; size as usize];
    tokio::time::timeout(UPLOAD_TIMEOUT, recv.read_exact(&mut bytes))
        .await
        .map_err(|_| UploadError::Bytes(format!("not within {UPLOAD_TIMEOUT:?}")))?
        .map_err(|e| UploadError::Bytes(e.to_string()))?;
    let response = match Bundle::open(&bytes, hash) {
        Err(error) => refuse(ControlError::InvalidBundle(error.to_string())),
        Ok(bundle) => match shared.store.put_bundle(hash, &bytes) {
            Ok(()) => {
                tracing::info!(%hash, app = %bundle.manifest.name, size, "app bundle stored");
                ControlResponse::BundleStored { hash }
            }
            Err(error) => refuse(ControlError::Internal(error.to_string())),
        },
    };
    Ok(respond(send, response).await?)
}

/// Whether `hash` is the bundle of a run that is not finished: only those are served to nodes.
fn in_use(shared: &Shared, hash: BundleHash) -> Result<bool, String> {
    let runs = shared.store.list_runs().map_err(|e| e.to_string())?;
    Ok(runs
        .iter()
        .any(|run| run.bundle == Some(hash) && !run.status.is_finished()))
}

/// Answers a node's [`wire::fleet::NodeStream::FetchBundle`]: the bundle of a run still going,
/// or a refusal.
pub async fn serve(shared: &Shared, node: NodeId, mut send: quinn::SendStream, hash: BundleHash) {
    let found = match in_use(shared, hash) {
        Ok(true) => shared
            .store
            .bundle(hash)
            .map_err(|e| e.to_string())
            .and_then(|bytes| bytes.ok_or_else(|| "it is not stored".to_string())),
        Ok(false) => Err("no unfinished run uses it".to_string()),
        Err(error) => Err(error),
    };
    let bytes = match found {
        Ok(bytes) => bytes,
        Err(reason) => {
            tracing::warn!(%node, %hash, %reason, "bundle refused to a node");
            let answer = BundleAnswer::Refused(format!("no bundle {hash}: {reason}"));
            let _ = write_value(&mut send, &answer).await;
            let _ = send.finish();
            return;
        }
    };
    let answer = BundleAnswer::Found {
        size: bytes.len() as u64,
    };
    if write_value(&mut send, &answer).await.is_ok() && send.write_all(&bytes).await.is_ok() {
        tracing::info!(%node, %hash, "bundle sent to a node");
    }
    let _ = send.finish();
}
