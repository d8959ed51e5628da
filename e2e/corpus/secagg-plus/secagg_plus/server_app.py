"""One round of FedAvg under SecAgg+ on every node. One node is told to crash once it has shared
its keys; the aggregate the server unmasks without it must be the plain weighted mean of the
others' updates, or the ServerApp fails."""

import numpy as np

from flwr.common import Context, ndarrays_to_parameters
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

from secagg_plus.task import LENGTH, update_of, weight_of


class OneNodeCrashes(SecAggPlusWorkflow):
    """SecAgg+ with the lowest node id told to crash in the stage that collects masked vectors,
    after the stage in which every node shared its keys."""

    crashing = None
    survivors = None

    def setup_stage(self, grid, context, state):
        proceed = super().setup_stage(grid, context, state)
        self.crashing = min(state.active_node_ids)
        state.nid_to_fitins[self.crashing]["fitins.config"]["crash"] = True
        return proceed

    def collect_masked_vectors_stage(self, grid, context, state):
        assert self.crashing in state.active_node_ids, "the node crashed before sharing keys"
        proceed = super().collect_masked_vectors_stage(grid, context, state)
        self.survivors = sorted(state.active_node_ids)
        return proceed


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    nodes = config["num-nodes"]
    strategy = FedAvg(
        fraction_fit=1.0,
        min_fit_clients=nodes,
        min_available_clients=nodes,
        fraction_evaluate=0.0,
        initial_parameters=ndarrays_to_parameters([np.zeros(LENGTH, np.float32)]),
    )
    legacy = LegacyContext(
        context=context,
        config=ServerConfig(num_rounds=config["num-server-rounds"]),
        strategy=strategy,
    )
    secagg = OneNodeCrashes(
        num_shares=config["num-shares"],
        reconstruction_threshold=config["reconstruction-threshold"],
        max_weight=config["max-weight"],
        timeout=config["timeout"],
    )
    DefaultWorkflow(fit_workflow=secagg)(grid, legacy)

    survivors = secagg.survivors
    assert survivors is not None and secagg.crashing not in survivors, survivors
    assert len(survivors) == nodes - 1, f"{len(survivors)} of {nodes} nodes survived"
    weights = np.array([weight_of(n) for n in survivors], dtype=np.float64)
    plain = sum(w * update_of(n) for w, n in zip(weights, survivors)) / weights.sum()
    unmasked = legacy.state[MAIN_PARAMS_RECORD].to_numpy_ndarrays()[0]
    error = float(np.max(np.abs(unmasked - plain)))
    assert error < 1e-3, f"the unmasked aggregate is {error} away from the survivors' mean"
    print(
        f"SecAgg+ check passed: the unmasked aggregate of {len(survivors)} survivors is their "
        f"plain weighted mean (largest difference {error:.2e})"
    )
