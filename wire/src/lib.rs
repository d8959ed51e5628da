//! The protocol contract between `flower-superlink`, `flower-supernode` and `flwr`.
//!
//! Nothing in this crate opens a socket or needs an async runtime: bytes go in, typed values or typed
//! errors come out. The broker, the node and the CLI only move these bytes over QUIC.
//!
//! # Layout
//! - [`ids`]: node, run and message identifiers.
//! - [`records`]: `RecordDict` with `ArrayRecord`, `MetricRecord` and `ConfigRecord`, as in Flower.
//! - [`message`]: `Message` = `Metadata` + content or error.
//! - [`fleet`], [`control`]: the request and response types of the two APIs.
//! - [`clientappio`]: a node and the client app process it starts for one instruction.
//! - [`frame`]: length-prefixed postcard frames with a size limit checked before allocation.
//! - [`stream`]: messages whose array payloads travel as bounded chunks.
//! - [`text`]: peer-supplied text escaped for terminals and bounded in length.
//! - [`handshake`]: the exporter-bound challenge-response as sans-IO state machines.
//! - [`close`]: the QUIC close codes of both APIs.
//! - `io` (feature `io`): async helpers moving frames over tokio streams, and the handshake's driver.
//! - [`bundle`]: publishers' signatures of app bundles.
//! - [`blocking`]: the same frame and message IO over blocking `std::io` streams.
//! - [`serverappio`]: the SuperLink and the server app program it starts for one run.
//! - [`error`]: the crate's error types.
//! - [`alpn`]: the versioned ALPN identifiers of the two APIs.

#![forbid(unsafe_code)]

pub mod alpn;
pub mod blocking;
pub mod bundle;
pub mod clientappio;
pub mod close;
pub mod control;
#[cfg(feature = "json")]
pub mod control_json;
pub mod error;
pub mod fleet;
pub mod frame;
pub mod handshake;
pub mod ids;
#[cfg(feature = "io")]
pub mod io;
pub mod message;
pub mod records;
pub mod serverappio;
pub mod stream;
pub mod text;

pub use error::WireError;
pub use ids::{BundleHash, MessageId, NodeId, RunId};
pub use message::{Message, MessageBody, MessageType, Metadata};
pub use records::{
    Array, ArrayRecord, ConfigRecord, ConfigValue, DType, MetricRecord, MetricValue, Record,
    RecordDict, Serialised,
};
