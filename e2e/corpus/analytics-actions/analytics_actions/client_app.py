"""A ClientApp with one handler per message type: `query` answers a histogram over the bin edges
the server sends (a list in a ConfigRecord), `query.moments` answers the sums a mean and a
variance need, and `train.scale` multiplies the arrays it is sent."""

import numpy as np

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from analytics_actions.task import samples_of

app = ClientApp()


def samples(context: Context) -> np.ndarray:
    return samples_of(context.node_id, int(context.run_config["samples"]))


@app.query()
def histogram(message: Message, context: Context) -> Message:
    edges = message.content.config_records["config"]["edges"]
    counts, _ = np.histogram(samples(context), bins=np.array(edges))
    metrics = MetricRecord({"counts": [int(c) for c in counts]})
    return Message(RecordDict({"histogram": metrics}), reply_to=message)


@app.query("moments")
def moments(message: Message, context: Context) -> Message:
    values = samples(context)
    metrics = MetricRecord({
        "count": len(values),
        "sum": float(values.sum()),
        "sum-of-squares": float((values**2).sum()),
    })
    return Message(RecordDict({"moments": metrics}), reply_to=message)


@app.train("scale")
def scale(message: Message, context: Context) -> Message:
    factor = message.content.config_records["config"]["factor"]
    arrays = message.content.array_records["arrays"].to_numpy_ndarrays()
    scaled = ArrayRecord([a * factor for a in arrays])
    return Message(RecordDict({"arrays": scaled}), reply_to=message)
