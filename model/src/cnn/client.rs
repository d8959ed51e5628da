//! The client half of `fedavg-cnn`: answers the query for its data's shape, trains on its
//! partition, and evaluates on its held-out split. Reads `dataset-path` from the node config.

use super::backend::TrainingDevice;
use super::train::{Progress, TrainConfig, evaluate, input_shape, train};
use crate::apps::fedavg_cnn::{ARRAYS, CONFIG, METRICS};
use crate::data::Dataset;
use crate::data::format::read_partition;
use flwr_sdk::app::{AppError, ClientApp, ClientContext, config_f64, config_i64, config_str};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wire::{ConfigRecord, Message, MessageBody, MetricRecord, MetricValue, Record, RecordDict};

/// How often training progress reaches the node's log.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// The client half, holding the device it trains on and the partitions it has loaded.
pub struct Client {
    /// Where training runs.
    device: TrainingDevice,
    /// Loaded partitions by path, so each round does not re-read them.
    partitions: Mutex<HashMap<String, Arc<(Dataset, Dataset)>>>,
}

impl Client {
    /// A client training on `device`.
    pub fn new(device: TrainingDevice) -> Self {
        Client {
            device,
            partitions: Mutex::default(),
        }
    }

    /// What the client trains on, in a sentence.
    pub fn device_description(&self) -> &str {
        &self.device.description
    }

    fn partition(&self, path: &str) -> Result<Arc<(Dataset, Dataset)>, AppError> {
        let mut cache = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(partition) = cache.get(path) {
            return Ok(partition.clone());
        }
        let partition = Arc::new(
            read_partition(std::path::Path::new(path)).map_err(|e| AppError::new(e.to_string()))?,
        );
        tracing::info!(
            path,
            train = partition.0.len(),
            test = partition.1.len(),
            dataset = %partition.0.name,
            "partition loaded"
        );
        cache.insert(path.to_string(), partition.clone());
        Ok(partition)
    }
}

fn instruction_config(content: &RecordDict) -> ConfigRecord {
    content.config(CONFIG).cloned().unwrap_or_default()
}

fn reply_metrics(pairs: &[(&str, MetricValue)]) -> Record {
    Record::Metrics(
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect::<MetricRecord>(),
    )
}

impl ClientApp for Client {
    fn handle(&self, message: &Message, context: &ClientContext) -> Result<RecordDict, AppError> {
        let path = config_str(&context.node_config, "dataset-path")?.ok_or_else(|| {
            AppError::new("the node has no dataset: start it with --node-config 'dataset-path=\"datasets/<name>_part_<i>\"'")
        })?;
        let partition = self.partition(path)?;
        let (train_set, test_set) = (&partition.0, &partition.1);
        let MessageBody::Content(content) = &message.body else {
            return Err(AppError::new("instruction without content"));
        };
        match message.metadata.message_type.as_str() {
            "query" => {
                let input = input_shape(train_set);
                Ok(RecordDict::new().with(
                    METRICS,
                    reply_metrics(&[
                        ("channels", MetricValue::Int(input.channels as i64)),
                        ("height", MetricValue::Int(input.height as i64)),
                        ("width", MetricValue::Int(input.width as i64)),
                        ("classes", MetricValue::Int(input.classes as i64)),
                        ("num-examples", MetricValue::Int(train_set.len() as i64)),
                    ]),
                ))
            }
            "train" => {
                let arrays = content
                    .arrays(ARRAYS)
                    .ok_or_else(|| AppError::new("instruction lacks arrays"))?;
                let config = instruction_config(content);
                let round = config_i64(&config, "server-round", 0)?;
                let settings = TrainConfig {
                    learning_rate: config_f64(&config, "learning-rate", 0.1)?,
                    momentum: config_f64(&config, "momentum", 0.9)?,
                    epochs: config_i64(&config, "local-epochs", 1)?.max(1) as usize,
                    batch_size: config_i64(&config, "batch-size", 32)?.max(1) as usize,
                    seed: context.node_id.0 ^ (round as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                };
                tracing::info!(round, device = %self.device.description, examples = train_set.len(), "training");
                let started = Instant::now();
                let mut last_report = Instant::now();
                let mut report = |p: Progress| {
                    if last_report.elapsed() >= PROGRESS_EVERY || p.step == p.steps {
                        last_report = Instant::now();
                        tracing::info!(
                            "epoch {}/{} step {}/{} loss {:.4} ({:.0} samples/s)",
                            p.epoch,
                            settings.epochs,
                            p.step,
                            p.steps,
                            p.loss,
                            ((p.epoch - 1) * p.steps + p.step) as f64 * settings.batch_size as f64
                                / started.elapsed().as_secs_f64().max(1e-9)
                        );
                    }
                };
                let (updated, loss) = train(
                    arrays,
                    train_set,
                    &settings,
                    &self.device.device,
                    &mut report,
                    &|| context.is_cancelled(),
                )?;
                Ok(RecordDict::new()
                    .with(ARRAYS, Record::Arrays(updated))
                    .with(
                        METRICS,
                        reply_metrics(&[
                            ("train_loss", MetricValue::Float(loss)),
                            ("num-examples", MetricValue::Int(train_set.len() as i64)),
                        ]),
                    ))
            }
            "evaluate" => {
                let arrays = content
                    .arrays(ARRAYS)
                    .ok_or_else(|| AppError::new("instruction lacks arrays"))?;
                let batch =
                    config_i64(&instruction_config(content), "batch-size", 32)?.max(1) as usize;
                let (loss, accuracy) = evaluate(arrays, test_set, batch, &self.device.device)?;
                tracing::info!(loss, accuracy, examples = test_set.len(), "evaluated");
                Ok(RecordDict::new().with(
                    METRICS,
                    reply_metrics(&[
                        ("eval_loss", MetricValue::Float(loss)),
                        ("eval_acc", MetricValue::Float(accuracy)),
                        ("num-examples", MetricValue::Int(test_set.len() as i64)),
                    ]),
                ))
            }
            other => Err(AppError::new(format!(
                "message type {other:?}: this app answers query, train and evaluate"
            ))),
        }
    }
}
