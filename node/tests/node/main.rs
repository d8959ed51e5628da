//! The node's integration tests, one binary: Flower ClientApps run by Flower's own
//! `flwr-clientapp`, and `flower-supernode` started as Flower's deployment scripts start it.

mod flower_clientapp;
mod flower_script;
