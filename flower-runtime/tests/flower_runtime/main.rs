//! The Flower runtime's integration tests, one binary: objects and records against Flower's own,
//! both tasks driven call by call, and Flower's own `flwr-clientapp` against the runtime API.

mod clientapp_task;
mod objects;
mod real_clientapp;
mod roundtrip;
mod serverapp_task;
