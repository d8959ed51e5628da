//! The model crate's integration tests, one binary: FABs as the daemons read them, and every
//! strategy against Flower's own results.

mod fab;
mod strategies;
