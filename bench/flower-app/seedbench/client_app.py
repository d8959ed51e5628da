"""The ClientApp: trains or evaluates the received model on this node's partition."""

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from seedbench.task import Net, load_data, test, train

app = ClientApp()


def model_and_data(msg, context):
    train_data, test_data, shape = load_data(context.node_config["dataset-path"])
    net = Net(*shape)
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return net, train_data, test_data


@app.train()
def train_handler(msg: Message, context: Context):
    net, train_data, _ = model_and_data(msg, context)
    config = context.run_config
    loss = train(
        net,
        train_data,
        int(config["local-epochs"]),
        int(config["batch-size"]),
        float(config["learning-rate"]),
        float(config["momentum"]),
    )
    metrics = MetricRecord({"train_loss": loss, "num-examples": len(train_data[1])})
    content = RecordDict({"arrays": ArrayRecord(net.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_handler(msg: Message, context: Context):
    net, _, test_data = model_and_data(msg, context)
    loss, accuracy = test(net, test_data, int(context.run_config["batch-size"]))
    metrics = MetricRecord({"eval_loss": loss, "eval_acc": accuracy, "num-examples": len(test_data[1])})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
