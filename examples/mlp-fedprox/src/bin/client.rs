//! The client half: trains and evaluates the MLP on this node's partition. Node config:
//! `partition-id` (0), `train-samples` (600), `test-samples` (200).

use flwr_example_mlp::{data, mlp};
use flwr_sdk::{
    AppError, ClientApp, ClientContext, Message, MessageBody, MetricRecord, MetricValue, Record,
    RecordDict, config_f64, config_i64,
};
use std::process::ExitCode;

struct Client;

fn count(context: &ClientContext, key: &str, default: i64) -> Result<usize, AppError> {
    usize::try_from(config_i64(&context.node_config, key, default)?)
        .map_err(|_| AppError::new(format!("{key} must not be negative")))
}

impl ClientApp for Client {
    fn handle(&self, message: &Message, context: &ClientContext) -> Result<RecordDict, AppError> {
        let MessageBody::Content(content) = &message.body else {
            return Err(AppError::new("an instruction without content"));
        };
        let arrays = content
            .arrays("arrays")
            .ok_or_else(|| AppError::new("the instruction has no arrays"))?;
        let config = content.config("config").cloned().unwrap_or_default();
        let partition = config_i64(&context.node_config, "partition-id", 0)?;
        let (train_set, test_set) = data::partition(
            partition as u64,
            count(context, "train-samples", 600)?,
            count(context, "test-samples", 200)?,
            config_f64(&context.run_config, "spread", 1.5)? as f32,
        );
        match message.metadata.message_type.as_str() {
            "train" => {
                let training = mlp::Training {
                    epochs: config_i64(&config, "local-epochs", 1)?.max(1) as usize,
                    learning_rate: config_f64(&config, "learning-rate", 0.1)?,
                    batch_size: 32,
                    proximal_mu: config_f64(&config, "proximal-mu", 0.0)?,
                    seed: partition as u64 ^ config_i64(&config, "server-round", 0)? as u64,
                };
                let (trained, loss) = mlp::train(arrays, &train_set, &training)?;
                let metrics = MetricRecord::new()
                    .with("train-loss", MetricValue::Float(loss))
                    .with("num-examples", MetricValue::Int(train_set.len() as i64));
                Ok(RecordDict::new()
                    .with("arrays", Record::Arrays(trained))
                    .with("metrics", Record::Metrics(metrics)))
            }
            _ => {
                let (loss, accuracy) = mlp::evaluate(arrays, &test_set)?;
                let metrics = MetricRecord::new()
                    .with("eval-loss", MetricValue::Float(loss))
                    .with("eval-acc", MetricValue::Float(accuracy))
                    .with("num-examples", MetricValue::Int(test_set.len() as i64));
                Ok(RecordDict::new().with("metrics", Record::Metrics(metrics)))
            }
        }
    }
}

fn main() -> ExitCode {
    flwr_sdk::run_client_app(&Client)
}
