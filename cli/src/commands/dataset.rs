//! `flwr dataset prepare`.

use crate::CliError;
use crate::args::{DatasetCommand, DatasetName, Partitioner};
use crate::output::Format;
use indicatif::{ProgressBar, ProgressStyle};
use model::data::format::{TEST_FILE, TRAIN_FILE};
use model::data::{Dataset, partition, sources};
use serde_json::json;
use std::path::{Path, PathBuf};

/// Samples the synthetic set has unless --max-samples says otherwise.
const SYNTHETIC_DEFAULT: usize = 10_000;

fn load_source(
    dataset: DatasetName,
    source: Option<&Path>,
    out: &Path,
    max: Option<usize>,
    seed: u64,
) -> Result<Dataset, CliError> {
    let data_error = |e: model::data::DatasetError| CliError::Io(e.to_string());
    match dataset {
        DatasetName::Synthetic => Ok(sources::synthetic(max.unwrap_or(SYNTHETIC_DEFAULT), seed)),
        DatasetName::FashionMnist => {
            let dir = source
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(sources::FASHION_MNIST_DIR));
            sources::fashion_mnist(&dir).map_err(data_error)
        }
        DatasetName::Cifar10 => {
            let path = match source {
                Some(path) => path.to_path_buf(),
                None => crate::download::fetch_verified(
                    sources::CIFAR10_URL,
                    sources::CIFAR10_MD5,
                    &out.join(".downloads"),
                    "cifar-10-binary.tar.gz",
                )?,
            };
            let spinner = ProgressBar::new_spinner();
            spinner.set_message(format!("Reading {}", path.display()));
            spinner.enable_steady_tick(std::time::Duration::from_millis(120));
            let dataset = sources::cifar10(&path).map_err(data_error);
            spinner.finish_and_clear();
            dataset
        }
    }
}

/// Runs `flwr dataset ...`.
pub fn run(command: DatasetCommand) -> Result<(), CliError> {
    let DatasetCommand::Prepare {
        dataset,
        partitions,
        partitioner,
        alpha,
        seed,
        source,
        out,
        max_samples,
        force,
        format,
    } = command;
    if partitions == 0 {
        return Err(CliError::Config("--partitions must be at least 1".into()));
    }
    let mut data = load_source(dataset, source.as_deref(), &out, max_samples, seed)?;
    if let Some(max) = max_samples.filter(|&m| m < data.len()) {
        // A seeded subset, so small runs still see every class.
        let mut indices = partition::iid(data.len(), 1, seed).remove(0);
        indices.truncate(max);
        data = data.select(&indices);
    }
    let dirs: Vec<PathBuf> = (1..=partitions)
        .map(|i| out.join(format!("{}_part_{i}", data.name)))
        .collect();
    if !force
        && let Some(existing) = dirs
            .iter()
            .find(|d| d.join(TRAIN_FILE).exists() || d.join(TEST_FILE).exists())
    {
        return Err(CliError::Io(format!(
            "{} already exists (use --force to overwrite)",
            existing.display()
        )));
    }
    let shards = match partitioner {
        Partitioner::Iid => partition::iid(data.len(), partitions, seed),
        Partitioner::Dirichlet => {
            partition::dirichlet(&data.labels, data.classes, partitions, alpha, 10, seed)
                .map_err(CliError::Config)?
        }
    };
    let bar = ProgressBar::new(partitions as u64).with_style(
        ProgressStyle::with_template("Writing partitions [{bar:30}] {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut written = Vec::new();
    for (index, (dir, shard)) in dirs.iter().zip(&shards).enumerate() {
        let (train, test) = partition::train_test(shard, seed.wrapping_add(index as u64 + 1));
        let io = |e: model::data::DatasetError| CliError::Io(e.to_string());
        data.select(&train)
            .write(&dir.join(TRAIN_FILE))
            .map_err(io)?;
        data.select(&test).write(&dir.join(TEST_FILE)).map_err(io)?;
        written.push(json!({"path": dir, "train": train.len(), "test": test.len()}));
        bar.inc(1);
    }
    bar.finish_and_clear();
    match format {
        Format::Json => super::print_json(&json!({
            "success": true,
            "dataset": data.name,
            "image": [data.channels, data.height, data.width],
            "classes": data.classes,
            "partitions": written,
        })),
        Format::Default => {
            println!(
                "Prepared {} partitions of {} ({} images of {}x{}x{}, {} classes):",
                partitions,
                data.name,
                data.len(),
                data.channels,
                data.height,
                data.width,
                data.classes
            );
            for entry in &written {
                println!(
                    "  {}  train {} / test {}",
                    entry["path"].as_str().unwrap_or_default(),
                    entry["train"],
                    entry["test"]
                );
            }
        }
    }
    Ok(())
}
