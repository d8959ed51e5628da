//! Identifiers. Node ids are random so that they reveal nothing about registration order; 0 and 1
//! are reserved (Flower uses 0 for "any node" and 1 for the server side).

use rand::RngExt as _;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A node (SuperNode) identifier: a random `u64`, never 0 or 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl NodeId {
    /// The broker's own address in message metadata (Flower's SuperLink node id).
    pub const SERVER: NodeId = NodeId(1);

    /// A fresh random node id outside the reserved range.
    pub fn random() -> Self {
        let mut rng = rand::rng();
        loop {
            let candidate: u64 = rng.random();
            if candidate > 1 {
                return NodeId(candidate);
            }
        }
    }

    /// Whether this id may name a node (0 and 1 are reserved).
    pub fn is_node(self) -> bool {
        self.0 > 1
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A run identifier: random, never 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RunId(pub u64);

impl RunId {
    /// A fresh random run id.
    pub fn random() -> Self {
        let mut rng = rand::rng();
        loop {
            let candidate: u64 = rng.random();
            if candidate != 0 {
                return RunId(candidate);
            }
        }
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A message identifier: 128 random bits, so ids from different brokers and nodes never collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MessageId(pub u128);

impl MessageId {
    /// A fresh random message id.
    pub fn random() -> Self {
        MessageId(rand::rng().random())
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// The identity of an app bundle: the SHA-256 of its archive. Shown as 64 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BundleHash(pub [u8; 32]);

impl BundleHash {
    /// The hash from its 64 hex digits (either case); `None` for anything else.
    pub fn from_hex(text: &str) -> Option<Self> {
        let text = text.as_bytes();
        if text.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
            let digit = |c: u8| (c as char).to_digit(16);
            *byte = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
        }
        Some(BundleHash(bytes))
    }

    /// The first 8 hex digits, as tables show it.
    pub fn short(&self) -> String {
        self.to_string()[..8].to_string()
    }
}

impl fmt::Display for BundleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for BundleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BundleHash({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_node_ids_are_never_reserved() {
        for _ in 0..10_000 {
            assert!(NodeId::random().is_node());
        }
        assert!(!NodeId(0).is_node());
        assert!(!NodeId::SERVER.is_node());
    }

    #[test]
    fn message_ids_display_as_32_hex_digits() {
        assert_eq!(MessageId(255).to_string().len(), 32);
    }

    #[test]
    fn bundle_hashes_round_trip_through_hex_and_malformed_text_is_refused() {
        let hash = BundleHash(std::array::from_fn(|i| (i * 41) as u8));
        let text = hash.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(BundleHash::from_hex(&text), Some(hash));
        assert_eq!(BundleHash::from_hex(&text.to_uppercase()), Some(hash));
        assert_eq!(hash.short(), text[..8]);
        assert_eq!(BundleHash::from_hex(&text[1..]), None);
        assert_eq!(BundleHash::from_hex(&"g".repeat(64)), None);
        assert_eq!(BundleHash::from_hex(&"é".repeat(32)), None);
    }
}
