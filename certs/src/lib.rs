//! Certificates, identity keys and the rustls configurations shared by broker, node and CLI.
//!
//! # Layout
//! - [`keys`]: ECDSA identity keys (P-256, P-384): generation, signing, verification.
//! - [`openssh`]: the OpenSSH private and public key formats, as `ssh-keygen` writes them.
//! - [`load`]: reading keys and certificates from files (OpenSSH, PKCS#8, SEC1, PEM certificates).
//! - [`generate`]: the CA and server certificate (`flwr certs generate`) and key pairs (`flwr keys generate`).
//! - [`tls`]: rustls server and client configurations, including the client-key verifier.
//! - [`quic`]: QUIC endpoint configurations, the channel binding and the peer key.
//! - [`files`]: writing secrets with mode 0600 and refusing to overwrite.

#![forbid(unsafe_code)]

pub mod error;
pub mod files;
pub mod generate;
pub mod keys;
pub mod load;
pub mod openssh;
pub mod quic;
pub mod tls;

pub use error::CertsError;
pub use keys::{IdentityKey, PublicKey};
