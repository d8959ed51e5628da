//! Versioned ALPN identifiers. Each API has its own, so a client speaking to the wrong port (or an
//! incompatible version) is refused during the TLS handshake instead of misreading frames.

/// ALPN of the Fleet API, spoken by nodes (`flower-supernode`).
pub const FLEET: &[u8] = b"flower-rs/fleet/3";

/// ALPN of the Control API, spoken by operators (`flwr`).
pub const CONTROL: &[u8] = b"flower-rs/control/2";
