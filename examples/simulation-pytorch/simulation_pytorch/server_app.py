"""The ServerApp: FedAvg from the model's initial weights."""

from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from simulation_pytorch.task import model

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    strategy = FedAvg(
        fraction_train=float(context.run_config["fraction-train"]),
        fraction_evaluate=float(context.run_config["fraction-evaluate"]),
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model().state_dict()),
        num_rounds=int(context.run_config["num-server-rounds"]),
    )
    accuracy = result.evaluate_metrics_clientapp[max(result.evaluate_metrics_clientapp)]["eval-acc"]
    print(f"federated accuracy after the last round: {accuracy:.3f}")
