//! The SDK's integration tests, one binary: every strategy against Flower's own results.

mod strategies;
