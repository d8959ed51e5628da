"""The ClientApp: trains and evaluates on its node's partition (Flower's `partition-id` of
`num-partitions`)."""

import torch

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from simulation_pytorch.task import evaluate, model, partition, train

torch.set_num_threads(1)
app = ClientApp()


def data(context: Context):
    return partition(int(context.node_config["partition-id"]), int(context.node_config["num-partitions"]))


@app.train()
def fit(msg: Message, context: Context) -> Message:
    net = model()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y = data(context)
    loss = train(net, x, y, int(context.run_config["local-epochs"]), float(context.run_config["learning-rate"]))
    metrics = MetricRecord({"num-examples": len(y), "train-loss": loss})
    return Message(RecordDict({"arrays": ArrayRecord(net.state_dict()), "metrics": metrics}), reply_to=msg)


@app.evaluate()
def check(msg: Message, context: Context) -> Message:
    net = model()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y = data(context)
    loss, accuracy = evaluate(net, x, y)
    metrics = MetricRecord({"num-examples": len(y), "eval-loss": loss, "eval-acc": accuracy})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
