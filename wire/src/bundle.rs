//! What the protocol says about app bundles beyond their hash: publishers' signatures
//! (`flwr app sign`), which let a node trust every bundle a publisher signed
//! (`--trusted-apps` with the publisher's public key).

use crate::BundleHash;
use serde::{Deserialize, Serialize};

/// Domain-separation prefix of what a publisher signs, so that a bundle signature can never be
/// taken for a handshake proof or the other way round.
pub const SIGNING_DOMAIN: &[u8] = b"flower-rs app bundle v1\0";

/// Most signatures one bundle carries.
pub const MAX_SIGNATURES: usize = 16;

/// A publisher's signature of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleSignature {
    /// The publisher's public key, SPKI DER.
    #[serde(with = "serde_bytes")]
    pub public_key: Vec<u8>,
    /// The DER ECDSA signature of [`signing_message`].
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// What a publisher signs for the bundle `hash`: [`SIGNING_DOMAIN`], then the hash.
pub fn signing_message(hash: BundleHash) -> Vec<u8> {
    let mut message = SIGNING_DOMAIN.to_vec();
    message.extend_from_slice(&hash.0);
    message
}
