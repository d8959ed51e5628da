"""The ClientApp: trains on its node's partition (Flower's `partition-id` of `num-partitions`)
and counts, in its context's state, the rounds this node has trained."""

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from simulation_numpy.task import partition, train

app = ClientApp()


@app.train()
def fit(msg: Message, context: Context) -> Message:
    partition_id = int(context.node_config["partition-id"])
    x, y = partition(partition_id, int(context.node_config["num-partitions"]))
    weights = msg.content["arrays"].to_numpy_ndarrays()[0]
    weights, loss = train(
        weights,
        x,
        y,
        int(context.run_config["local-steps"]),
        float(context.run_config["learning-rate"]),
    )
    rounds = context.state.metric_records.get("trained", MetricRecord({"rounds": 0}))
    rounds["rounds"] = int(rounds["rounds"]) + 1
    context.state.metric_records["trained"] = rounds
    metrics = MetricRecord({
        "num-examples": len(y),
        "train-loss": loss,
        "rounds-on-this-node": rounds["rounds"],
    })
    return Message(RecordDict({"arrays": ArrayRecord([weights]), "metrics": metrics}), reply_to=msg)
