//! What the broker and the node share above the wire: typed run and node configuration.
//!
//! # Layout
//! - [`config`]: `k=v` override strings and TOML tables turned into a [`wire::ConfigRecord`].

#![forbid(unsafe_code)]

pub mod config;
