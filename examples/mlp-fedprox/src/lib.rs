//! An app of one's own, built only on `flwr-sdk`: a two-layer perceptron (Burn) learns to
//! classify points of a tabular dataset that every node generates for itself, and the server
//! runs Flower's FedProx over it.
//!
//! - [`data`]: the dataset, generated from a seed: the same on every machine, a different slice
//!   on every node.
//! - [`mlp`]: the model, its parameters as records, local training with FedProx's proximal term,
//!   and evaluation.

pub mod data;
pub mod mlp;
