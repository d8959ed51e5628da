//! What the broker and the node share above the wire: FedAvg, the app traits, the built-in apps,
//! and typed configuration. Only the `cnn` module (feature `burn`) needs Burn.
//!
//! # Layout
//! - [`fedavg`]: weighted averaging of `ArrayRecord`s, folded one reply at a time.
//! - [`strategy`]: Flower's strategies (FedAvg, FedProx, FedAvgM, FedAdagrad, FedAdam, FedYogi,
//!   FedMedian, FedTrimmedAvg, Krum, MultiKrum, Bulyan), checked against Flower's own results.
//! - `cnn` (feature `burn`): the CNN on Burn, conversion, training, device choice.
//! - [`net`]: the CNN's layout and initialisation without Burn.
//! - [`app`]: the `ServerApp`, `ClientApp` and `Grid` traits.
//! - [`bundle`]: app bundles: the archive, its hash and its manifest.
//! - [`apps`]: the built-in apps and the registries that find apps by name.
//! - [`checkpoint`]: the state saved after each round, from which a restarted run resumes.
//! - [`data`]: the prepared-dataset format, sources and partitioning.
//! - [`config`]: `k=v` override strings and TOML tables turned into a [`wire::ConfigRecord`].

#![forbid(unsafe_code)]

pub mod app;
pub mod apps;
pub mod bundle;
pub mod checkpoint;
#[cfg(feature = "burn")]
pub mod cnn;
pub mod config;
pub mod data;
pub mod fedavg;
pub mod net;
pub mod plot;
pub mod safetensors;
pub mod strategy;
