//! The server half: FedProx over the MLP, with Flower's round loop. Run config:
//! `num-server-rounds` (3), `fraction-train` (1.0), `fraction-evaluate` (1.0), `min-nodes` (2),
//! `proximal-mu` (0.01), `local-epochs` (1), `learning-rate` (0.1), `round-timeout` (600 s),
//! `node-wait-timeout` (60 s), `seed` (42). Saves the final model (`model.safetensors`) and
//! each round's metrics (`metrics.json`), which `flwr pull` fetches.

use flwr_example_mlp::mlp;
use flwr_sdk::strategy::start::{Rounds, start};
use flwr_sdk::strategy::{FedAvg, FedProx};
use flwr_sdk::{
    AppError, ConfigRecord, ConfigValue, Grid, MetricValue, ServerApp, ServerContext, config_f64,
    config_i64,
};
use std::process::ExitCode;
use std::time::Duration;

struct Server;

fn seconds(config: &ConfigRecord, key: &str, default: f64) -> Result<Duration, AppError> {
    Duration::try_from_secs_f64(config_f64(config, key, default)?)
        .map_err(|_| AppError::new(format!("{key} must be a number of seconds")))
}

impl ServerApp for Server {
    fn run(&self, grid: &dyn Grid, context: &ServerContext) -> Result<(), AppError> {
        let config = &context.run_config;
        let min_nodes = config_i64(config, "min-nodes", 2)?.max(1) as usize;
        let rounds = Rounds {
            num_rounds: config_i64(config, "num-server-rounds", 3)?.max(0) as u64,
            fraction_train: config_f64(config, "fraction-train", 1.0)?,
            fraction_evaluate: config_f64(config, "fraction-evaluate", 1.0)?,
            min_train_nodes: min_nodes,
            min_evaluate_nodes: min_nodes,
            min_available_nodes: min_nodes,
            round_timeout: seconds(config, "round-timeout", 600.0)?,
            node_wait: seconds(config, "node-wait-timeout", 60.0)?,
            train_config: ConfigRecord::new()
                .with(
                    "local-epochs",
                    ConfigValue::Int(config_i64(config, "local-epochs", 1)?),
                )
                .with(
                    "learning-rate",
                    ConfigValue::Float(config_f64(config, "learning-rate", 0.1)?),
                ),
            evaluate_config: ConfigRecord::new(),
            seed: None,
        };
        let mut strategy = FedProx {
            fedavg: FedAvg::default(),
            proximal_mu: config_f64(config, "proximal-mu", 0.01)?,
        };
        let initial = mlp::initial_arrays(config_i64(config, "seed", 42)? as u64)?;
        let outcome = start(grid, context, &mut strategy, initial, &rounds)?;
        grid.save_artifact(
            "model.safetensors",
            &flwr_sdk::safetensors::encode(&outcome.arrays, &[]),
        )?;
        let metrics = serde_json::json!({ "rounds": outcome.metrics_json() });
        grid.save_artifact("metrics.json", metrics.to_string().as_bytes())?;
        if let Some((round, last)) = outcome.last_evaluation()
            && let Some(MetricValue::Float(accuracy)) = last.get("eval-acc")
        {
            grid.log(&format!(
                "Final accuracy after round {round}: {accuracy:.3}"
            ));
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    flwr_sdk::run_server_app(&Server)
}
