//! Datasets: the on-disk format of prepared partitions, the sources they are made from
//! (CIFAR-10, Fashion-MNIST, synthetic), and partitioning. Nothing here needs Burn, so the CLI
//! prepares datasets without building it.

pub mod format;
pub mod partition;
pub mod sources;

pub use format::{Dataset, DatasetError};
