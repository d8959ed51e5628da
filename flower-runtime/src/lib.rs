//! Flower 1.42's app runtime, as flower-rs speaks it: the protobuf schema of the runtime API
//! (written in `proto/` from Flower's published wire format and compiled without `protoc`), the
//! content-addressed objects a message travels as, `.npy` arrays, and exact conversion between
//! Flower's records and this project's. The broker and the node serve Flower's `flwr-serverapp`
//! and `flwr-clientapp` with it; the core crates stay free of protobuf: they build a task's
//! input from their own types ([`tasks::TaskInput::server`], [`tasks::TaskInput::client`]) and never
//! name [`proto`].
//!
//! # Layout
//! - [`proto`]: the generated types of Flower's `flwr.proto` package.
//! - [`records`], [`npy`], [`messages`]: records, arrays and message metadata, both ways, exactly.
//! - [`objects`]: messages as Flower's content-addressed object trees (deflate, inflate, ids).
//! - [`exchange`]: one instruction handed out and its reply gathered, object by object.
//! - [`server`]: the runtime API over HTTP/1.1 and the connection bounds, for any task.
//! - [`control`]: the Control API over HTTP as Flower's own `flwr` calls it (`run`, `ls`, `stop`,
//!   `log`, `supernode`).
//! - [`fleet`]: the Fleet API over HTTP as Flower's own `flower-supernode` calls it.
//! - [`link`]: the SuperLink's one HTTP port serving both, over TLS when configured.
//! - [`tasks`]: what both tasks share: the registry of tasks by token, a task's input, the
//!   protobuf coding.
//! - [`clientapp`]: a `flwr-clientapp` task, and each run's context state on a node.
//! - [`serverapp`]: a `flwr-serverapp` task, and the `Federation` the SuperLink gives it.
//! - [`launch`]: starting Flower's programs for a task (a fresh `FLWR_HOME`, the token, the
//!   environment they may see).

pub mod clientapp;
pub mod control;
pub mod exchange;
pub mod fleet;
pub mod launch;
pub mod link;
pub mod messages;
pub mod npy;
pub mod objects;
pub mod records;
pub mod server;
pub mod serverapp;
pub mod tasks;

/// The types of Flower's `flwr.proto` package that the runtime API uses.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/flwr.proto.rs"));
}
