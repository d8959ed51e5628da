"""The ServerApp: FedAvg from zero weights, then the distance to the true weights."""

import numpy as np

from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from simulation_numpy.task import TRUE_WEIGHTS

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    strategy = FedAvg(
        fraction_train=float(context.run_config["fraction-train"]),
        fraction_evaluate=0.0,
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord([np.zeros_like(TRUE_WEIGHTS)]),
        num_rounds=int(context.run_config["num-server-rounds"]),
    )
    weights = result.arrays.to_numpy_ndarrays()[0]
    error = float(np.linalg.norm(weights - TRUE_WEIGHTS))
    print(f"final weights {np.round(weights, 3).tolist()}, distance to the true weights {error:.4f}")
