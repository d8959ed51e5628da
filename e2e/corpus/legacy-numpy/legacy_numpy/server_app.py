"""FedAvg through Flower's DefaultWorkflow, its initial parameters asked of one node
(`get_parameters`). The metric aggregation checks that every node's state carried over: in round
r a node has answered 2r - 1 calls after fitting and 2r after evaluating. At the end each node is
asked its properties (`get_properties`), and the loss must have fallen every round."""

from flwr.app import Context
from flwr.common import GetPropertiesIns
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow

CALLS = "calls"


def calls_after(expected_of_round):
    def check(metrics):
        for _, node_metrics in metrics:
            expected = expected_of_round(node_metrics)
            assert node_metrics[CALLS] == expected, (node_metrics, expected)
        return {CALLS: float(len(metrics))}

    return check


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    rounds = config["num-server-rounds"]
    evaluated_rounds = []

    def fit_config(server_round: int):
        return {
            "round": server_round,
            "learning-rate": config["learning-rate"],
            "local-steps": config["local-steps"],
        }

    def evaluate_calls(metrics):
        evaluated_rounds.append(len(evaluated_rounds) + 1)
        current = evaluated_rounds[-1]
        return calls_after(lambda _: 2 * current)(metrics)

    strategy = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=1.0,
        min_fit_clients=2,
        min_evaluate_clients=2,
        min_available_clients=2,
        on_fit_config_fn=fit_config,
        fit_metrics_aggregation_fn=calls_after(lambda m: 2 * m["round"] - 1),
        evaluate_metrics_aggregation_fn=evaluate_calls,
    )
    legacy = LegacyContext(
        context=context, config=ServerConfig(num_rounds=rounds), strategy=strategy
    )
    DefaultWorkflow()(grid, legacy)

    losses = [loss for _, loss in legacy.history.losses_distributed]
    assert len(losses) == rounds, losses
    assert all(later < earlier for earlier, later in zip(losses, losses[1:])), losses
    assert losses[-1] < losses[0] / 10, losses
    for proxy in legacy.client_manager.all().values():
        properties = proxy.get_properties(GetPropertiesIns({}), timeout=60, group_id=None)
        assert properties.properties["node-id"] == str(proxy.node_id), properties
    print(f"legacy check passed: {rounds} rounds, losses {losses}, node state carried over")
