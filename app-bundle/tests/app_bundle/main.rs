//! The app-bundle crate's integration tests, one binary: FABs as the daemons read them.

mod fab;
