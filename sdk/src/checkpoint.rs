//! A server app's state after a completed round. The built-in apps save one after every round
//! ([`crate::app::Grid::save_checkpoint`]); a SuperLink that restarts mid-run hands the last one
//! back ([`crate::app::ServerContext::checkpoint`]) and the app carries on from the next round
//! instead of starting over.

use crate::app::{AppError, ServerContext};
use serde::{Deserialize, Serialize};
use wire::ArrayRecord;

/// Leading bytes of every checkpoint: the format and its version.
const MAGIC: &[u8; 8] = b"FLRSCKP2";

/// Leading bytes of a version 1 checkpoint, whose arrays had no serialised form: a run started
/// before an upgrade still resumes from it.
const MAGIC_V1: &[u8; 8] = b"FLRSCKP1";

/// What the built-in apps need to resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundCheckpoint {
    /// Rounds completed (the run resumes with the next one).
    pub completed_rounds: u64,
    /// The global model after the last completed round.
    pub arrays: ArrayRecord,
    /// The app's history so far (JSON text: per-round metrics, for example).
    pub history: String,
}

/// The borrowed form written after each round, so saving does not copy the model first.
#[derive(Serialize)]
struct RoundCheckpointRef<'a> {
    completed_rounds: u64,
    arrays: &'a ArrayRecord,
    history: &'a str,
}

/// Encodes a checkpoint taken after `completed_rounds` rounds.
pub fn encode(
    completed_rounds: u64,
    arrays: &ArrayRecord,
    history: &str,
) -> Result<Vec<u8>, AppError> {
    let state = RoundCheckpointRef {
        completed_rounds,
        arrays,
        history,
    };
    let mut bytes = MAGIC.to_vec();
    postcard::to_io(&state, &mut bytes)
        .map_err(|e| AppError::new(format!("cannot encode the checkpoint: {e}")))?;
    Ok(bytes)
}

/// Decodes a checkpoint; anything else (another format, a damaged one) is an error, never a
/// silent fresh start.
pub fn decode(bytes: &[u8]) -> Result<RoundCheckpoint, AppError> {
    let damaged =
        |e: postcard::Error| AppError::new(format!("the run's checkpoint is damaged: {e}"));
    if let Some(body) = bytes.strip_prefix(MAGIC.as_slice()) {
        return postcard::from_bytes(body).map_err(damaged);
    }
    if let Some(body) = bytes.strip_prefix(MAGIC_V1.as_slice()) {
        return postcard::from_bytes::<v1::RoundCheckpoint>(body)
            .map(RoundCheckpoint::from)
            .map_err(damaged);
    }
    Err(AppError::new(
        "the run's checkpoint is not in a format this app reads",
    ))
}

/// Version 1 of the format, read only.
mod v1 {
    use serde::Deserialize;
    use wire::DType;

    #[derive(Deserialize)]
    pub(super) struct Array {
        pub dtype: DType,
        pub shape: Vec<u64>,
        #[serde(with = "serde_bytes")]
        pub data: Vec<u8>,
    }

    #[derive(Deserialize)]
    pub(super) struct RoundCheckpoint {
        pub completed_rounds: u64,
        pub arrays: Vec<(String, Array)>,
        pub history: String,
    }
}

impl From<v1::RoundCheckpoint> for RoundCheckpoint {
    fn from(old: v1::RoundCheckpoint) -> Self {
        RoundCheckpoint {
            completed_rounds: old.completed_rounds,
            arrays: old
                .arrays
                .into_iter()
                .map(|(name, a)| (name, wire::Array::dense(a.dtype, a.shape, a.data)))
                .collect(),
            history: old.history,
        }
    }
}

/// The checkpoint this run resumes from, if any.
pub fn resume_point(context: &ServerContext) -> Result<Option<RoundCheckpoint>, AppError> {
    context.checkpoint.as_deref().map(decode).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::Array;

    fn arrays() -> ArrayRecord {
        ArrayRecord::new().with("w", Array::from_f32(vec![3], &[1.0, -2.5, 3.25]).unwrap())
    }

    #[test]
    fn a_checkpoint_round_trips_exactly() {
        let bytes = encode(2, &arrays(), "[{\"round\":1}]").unwrap();
        assert_eq!(
            decode(&bytes).unwrap(),
            RoundCheckpoint {
                completed_rounds: 2,
                arrays: arrays(),
                history: "[{\"round\":1}]".into(),
            }
        );
    }

    #[test]
    fn a_version_1_checkpoint_still_resumes() {
        // What the previous version wrote: each array as dtype, shape and bytes.
        #[derive(Serialize)]
        struct ArrayV1<'a> {
            dtype: wire::DType,
            shape: &'a [u64],
            #[serde(with = "serde_bytes")]
            data: &'a [u8],
        }
        let arrays = arrays();
        let old: Vec<(&str, ArrayV1)> = arrays
            .iter()
            .map(|(name, a)| {
                let v1 = ArrayV1 {
                    dtype: a.dtype,
                    shape: &a.shape,
                    data: &a.data,
                };
                (name, v1)
            })
            .collect();
        let mut bytes = MAGIC_V1.to_vec();
        bytes.extend(postcard::to_stdvec(&(2u64, old, "[]")).unwrap());
        let checkpoint = decode(&bytes).unwrap();
        assert_eq!(checkpoint.completed_rounds, 2);
        assert_eq!(checkpoint.arrays, arrays);
        assert_eq!(checkpoint.history, "[]");
    }

    #[test]
    fn foreign_or_truncated_bytes_are_refused() {
        let bytes = encode(2, &arrays(), "[]").unwrap();
        assert!(decode(b"not a checkpoint").is_err());
        assert!(decode(&bytes[..bytes.len() - 3]).is_err());
        assert!(decode(&bytes[1..]).is_err());
    }
}
