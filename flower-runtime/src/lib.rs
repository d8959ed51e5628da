//! Flower 1.42's app runtime, as flower-rs speaks it: the protobuf schema of the runtime API
//! (written in `proto/` from Flower's published wire format and compiled without `protoc`), the
//! content-addressed objects a message travels as, `.npy` arrays, and exact conversion between
//! Flower's records and this project's. The broker and the node serve Flower's `flwr-serverapp`
//! and `flwr-clientapp` with it; the core crates stay free of protobuf.

pub mod launch;
pub mod messages;
pub mod npy;
pub mod objects;
pub mod records;
pub mod server;
pub mod serverapp;
pub mod task;

/// The types of Flower's `flwr.proto` package that the runtime API uses.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/flwr.proto.rs"));
}
