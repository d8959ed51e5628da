"""A NumPyClient made by a client_fn, as Flower's legacy apps are written. Each node fits the line
y = 3x + 1 to points of its own, and counts its calls in its context's state, which must carry
over from one instruction to the next."""

import numpy as np

from flwr.app import ConfigRecord, Context
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp

CALLS = "calls"


def local_points(node_id: int):
    rng = np.random.default_rng(node_id % 2**32)
    x = rng.uniform(-1.0, 1.0, 64)
    return x, 3.0 * x + 1.0 + rng.normal(0.0, 0.01, 64)


def loss_of(line, x, y) -> float:
    w, b = line
    return float(np.mean((w * x + b - y) ** 2))


class LineClient(NumPyClient):
    def __init__(self, context: Context):
        self.state = context.state
        self.node_id = context.node_id
        self.x, self.y = local_points(context.node_id)

    def count_call(self) -> int:
        previous = self.state.config_records.get(CALLS, ConfigRecord({CALLS: 0}))[CALLS]
        self.state.config_records[CALLS] = ConfigRecord({CALLS: previous + 1})
        return previous + 1

    def get_parameters(self, config):
        return [np.zeros(2)]

    def get_properties(self, config):
        return {"node-id": str(self.node_id), "points": len(self.x)}

    def fit(self, parameters, config):
        w, b = parameters[0]
        for _ in range(int(config["local-steps"])):
            error = w * self.x + b - self.y
            w -= config["learning-rate"] * 2.0 * float(np.mean(error * self.x))
            b -= config["learning-rate"] * 2.0 * float(np.mean(error))
        metrics = {CALLS: self.count_call(), "round": config["round"]}
        return [np.array([w, b])], len(self.x), metrics

    def evaluate(self, parameters, config):
        loss = loss_of(parameters[0], self.x, self.y)
        return loss, len(self.x), {CALLS: self.count_call()}


def client_fn(context: Context):
    return LineClient(context).to_client()


app = ClientApp(client_fn=client_fn)
