"""The ServerApp: FedAvg over the seed's CNN for num-server-rounds rounds."""

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from seedbench.task import Net

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    shape = [int(config.get(key, default)) for key, default in
             [("channels", 3), ("height", 32), ("width", 32), ("classes", 10)]]
    strategy = FedAvg(
        fraction_train=float(config["fraction-train"]),
        fraction_evaluate=float(config["fraction-evaluate"]),
        min_train_nodes=2,
        min_evaluate_nodes=1,
        min_available_nodes=2,
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(Net(*shape).state_dict()),
        num_rounds=int(config["num-server-rounds"]),
        train_config=ConfigRecord({"lr": float(config["learning-rate"])}),
    )
    print("final model:", sum(a.numpy().size for a in result.arrays.values()), "parameters")
