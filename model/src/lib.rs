//! What the broker and the node share above the wire: FedAvg, the app traits, the built-in apps,
//! and typed configuration. Nothing here needs Burn.
//!
//! # Layout
//! - [`fedavg`]: weighted averaging of `ArrayRecord`s, folded one reply at a time.
//! - [`app`]: the `ServerApp`, `ClientApp` and `Grid` traits.
//! - [`apps`]: the built-in apps and the registries that find apps by name.
//! - [`data`]: the prepared-dataset format, sources and partitioning.
//! - [`config`]: `k=v` override strings and TOML tables turned into a [`wire::ConfigRecord`].

#![forbid(unsafe_code)]

pub mod app;
pub mod apps;
pub mod config;
pub mod data;
pub mod fedavg;
