"""A NumPyClient behind Flower's `secaggplus_mod`: its updates reach the server masked. The node
the server marks with `crash` dies in the middle of the round, after its keys were shared."""

import os

from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import Context

from secagg_plus.task import update_of, weight_of


class Client(NumPyClient):
    def __init__(self, node_id: int):
        self.node_id = node_id

    def fit(self, parameters, config):
        if config.get("crash", False):
            os._exit(1)
        return [update_of(self.node_id)], weight_of(self.node_id), {}

    def evaluate(self, parameters, config):
        return 0.0, 1, {}


def client_fn(context: Context):
    return Client(context.node_id).to_client()


app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod])
