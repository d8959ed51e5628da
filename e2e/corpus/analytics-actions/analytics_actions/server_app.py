"""Federated analytics without training: a histogram and the moments of data that never leave
the nodes, each checked against what the server computes from the nodes' samples made again;
then a `train.scale` action, and an action whose name is too long for the SuperLink, whose error
reply the app reports."""

import time

import numpy as np

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from analytics_actions.task import samples_of

app = ServerApp()


def ask(grid: Grid, nodes, message_type: str, content: RecordDict):
    messages = [Message(content, dst_node_id=node, message_type=message_type) for node in nodes]
    replies = list(grid.send_and_receive(messages, timeout=120))
    assert len(replies) == len(nodes), replies
    return replies


@app.main()
def main(grid: Grid, context: Context) -> None:
    wanted = int(context.run_config["num-nodes"])
    count = int(context.run_config["samples"])
    nodes = list(grid.get_node_ids())
    while len(nodes) < wanted:
        time.sleep(0.5)
        nodes = list(grid.get_node_ids())
    everything = np.concatenate([samples_of(node, count) for node in nodes])

    edges = [-100.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 100.0]
    replies = ask(grid, nodes, "query", RecordDict({"config": ConfigRecord({"edges": edges})}))
    counts = np.sum([r.content.metric_records["histogram"]["counts"] for r in replies], axis=0)
    expected, _ = np.histogram(everything, bins=np.array(edges))
    assert counts.tolist() == expected.tolist(), (counts, expected)

    replies = ask(grid, nodes, "query.moments", RecordDict())
    moments = [r.content.metric_records["moments"] for r in replies]
    total = sum(m["count"] for m in moments)
    mean = sum(m["sum"] for m in moments) / total
    variance = sum(m["sum-of-squares"] for m in moments) / total - mean**2
    assert total == everything.size, total
    assert abs(mean - everything.mean()) < 1e-9 and abs(variance - everything.var()) < 1e-9

    vector = np.arange(4, dtype=np.float32)
    content = RecordDict({
        "arrays": ArrayRecord([vector]),
        "config": ConfigRecord({"factor": 2.5}),
    })
    for reply in ask(grid, nodes, "train.scale", content):
        scaled = reply.content.array_records["arrays"].to_numpy_ndarrays()[0]
        assert scaled.tolist() == (vector * 2.5).tolist(), scaled

    too_long = "query." + "a" * 300
    reply = ask(grid, nodes[:1], too_long, RecordDict())[0]
    assert reply.has_error(), "a message type of 306 bytes was delivered"
    print(f"the SuperLink refused a message type of {len(too_long)} bytes: {reply.error.reason}")
    print(
        f"analytics check passed: {total} samples on {len(nodes)} nodes, histogram {counts.tolist()},"
        f" mean {mean:.4f}, variance {variance:.4f}; train.scale answered by every node"
    )
