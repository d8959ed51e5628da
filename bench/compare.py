"""Flower and flower-rs side by side on this machine: runs Flower's FedAvg.aggregate_train and
PyTorch's training step for the seed's Net on the same shapes as the criterion benches, reads our
criterion results from target/criterion and the end-to-end seed run from bench/e2e.py's JSON
(--e2e), and prints one table (also as JSON with --json). The last column is always a speed ratio:
above 1, ours is faster.

Run through bench/compare.sh, which builds the virtual environment and runs our benches first.
"""

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

# The criterion benches' shapes: bench::record splits P parameters into four arrays.
AGGREGATION = [(62_006, "62k", 2), (62_006, "62k", 10), (10_000_000, "10M", 2), (10_000_000, "10M", 10)]
TRAIN_SAMPLES = 1024


def split(parameters):
    shares = [parameters // 2, parameters // 4, parameters // 8]
    return shares + [parameters - sum(shares)]


def best_of(runs, work):
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def flower_aggregation(parameters, replies):
    """Seconds for FedAvg.aggregate_train over `replies` replies (best of 5)."""
    from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.serverapp.strategy import FedAvg

    try:
        # Messages made outside a running ServerApp need the identity a SuperLink would set.
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    except ImportError:
        pass
    rng = np.random.default_rng(1)
    messages = []
    for i in range(replies):
        arrays = ArrayRecord(
            {f"layer{j}.weight": Array(rng.random(n, dtype=np.float32)) for j, n in enumerate(split(parameters))}
        )
        content = RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 100 + i})})
        instruction = Message(content=RecordDict(), dst_node_id=i + 1, message_type="train")
        messages.append(Message(content=content, reply_to=instruction))
    strategy = FedAvg()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    return best_of(5, lambda: strategy.aggregate_train(1, messages))


class Net:
    """The seed's CNN (flower-authentication's task.py), built on demand so torch loads lazily."""

    @staticmethod
    def build():
        import torch.nn as nn
        import torch.nn.functional as F

        class SeedNet(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv1 = nn.Conv2d(3, 6, 5)
                self.pool = nn.MaxPool2d(2, 2)
                self.conv2 = nn.Conv2d(6, 16, 5)
                self.fc1 = nn.Linear(16 * 5 * 5, 120)
                self.fc2 = nn.Linear(120, 84)
                self.fc3 = nn.Linear(84, 10)

            def forward(self, x):
                x = self.pool(F.relu(self.conv1(x)))
                x = self.pool(F.relu(self.conv2(x)))
                x = x.view(-1, 16 * 5 * 5)
                x = F.relu(self.fc1(x))
                x = F.relu(self.fc2(x))
                return self.fc3(x)

        return SeedNet()


def pytorch_training(threads):
    """Samples per second of one epoch of TRAIN_SAMPLES CIFAR-shaped images, batch 32 (best of 3),
    on `threads` threads."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(1)
    images = torch.rand(TRAIN_SAMPLES, 3, 32, 32) * 2 - 1
    labels = torch.randint(0, 10, (TRAIN_SAMPLES,))
    net = Net.build()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()

    def epoch():
        order = torch.randperm(TRAIN_SAMPLES)
        for start in range(0, TRAIN_SAMPLES, 32):
            batch = order[start : start + 32]
            optimizer.zero_grad()
            loss = loss_fn(net(images[batch]), labels[batch])
            loss.backward()
            optimizer.step()

    return TRAIN_SAMPLES / best_of(3, epoch), torch.__version__, torch.get_num_threads()


def pytorch_inference(threads):
    """Samples per second of evaluating TRAIN_SAMPLES CIFAR-shaped images at batch 32 (loss and
    accuracy, as our inference baseline does; best of 3), on `threads` threads."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(1)
    images = torch.rand(TRAIN_SAMPLES, 3, 32, 32) * 2 - 1
    labels = torch.randint(0, 10, (TRAIN_SAMPLES,))
    net = Net.build()
    loss_fn = torch.nn.CrossEntropyLoss()

    def evaluate():
        with torch.no_grad():
            for start in range(0, TRAIN_SAMPLES, 32):
                logits = net(images[start : start + 32])
                loss_fn(logits, labels[start : start + 32]).item()
                (logits.argmax(1) == labels[start : start + 32]).sum().item()

    return TRAIN_SAMPLES / best_of(3, evaluate)


def criterion_seconds(root, group, function):
    path = Path(root) / group / function / "new" / "estimates.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())["mean"]["point_estimate"] / 1e9


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--criterion", default="target/criterion")
    parser.add_argument("--e2e", help="bench/e2e.py --json output")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import flwr

    rows = []
    for parameters, label, replies in AGGREGATION:
        gigabytes = parameters * 4 * replies / 1e9
        flower = gigabytes / flower_aggregation(parameters, replies)
        for form in ["one pass", "streaming", "one pass, recycled", "streaming, recycled"]:
            ours = criterion_seconds(args.criterion, f"aggregation_{label}x{replies}", f"fedavg ({form})")
            rows.append(
                {
                    "workload": f"FedAvg {label} x {replies} ({form}), GB/s",
                    "ours": gigabytes / ours if ours else None,
                    "flower": flower,
                }
            )
    for threads in (1, 2):
        group = f"training_CPU (Burn Flex backend), {threads} thread(s)"
        torch_rate, torch_version, torch_threads = pytorch_training(threads)
        torch_inference = pytorch_inference(threads)
        pytorch = f"PyTorch {torch_version}, {torch_threads} thread(s)"
        for function, label, theirs in [
            ("one epoch, batch 32", "CNN training", torch_rate),
            ("one epoch, batch 32, Burn's operations (before)", "CNN training, Burn's operations (before)", torch_rate),
            ("inference only (baseline)", "CNN inference", torch_inference),
        ]:
            ours = criterion_seconds(args.criterion, group, function)
            rows.append(
                {
                    "workload": f"{label}, CPU, batch 32, samples/s ({pytorch})",
                    "ours": TRAIN_SAMPLES / ours if ours else None,
                    "flower": theirs,
                }
            )
    if args.e2e:
        e2e = json.loads(Path(args.e2e).read_text())
        setup = f"lr {e2e['learning_rate']}, Flower nodes {e2e['flower_threads']} thread(s)"
        for name, both in e2e["datasets"].items():
            data = f"{e2e['samples']} synthetic images" if name == "synthetic" else name
            for key, label in [("cold", "SuperLink start to run end"), ("run", "flwr run to run end")]:
                rows.append(
                    {
                        "workload": f"Seed run, 2 nodes x 3 rounds ({data}, {setup}): {label}, s",
                        "ours": both["ours"][key],
                        "flower": both["flower"][key],
                        "seconds": True,
                    }
                )
            accuracy = {system: both[system]["accuracy"] for system in ("ours", "flower")}
            rows.append(
                {
                    "workload": f"Seed run ({data}): accuracy per round, ours / Flower",
                    "ours": None,
                    "flower": None,
                    "note": " / ".join(", ".join(f"{a:.3f}" for a in accuracy[s]) for s in ("ours", "flower")),
                    "accuracy": accuracy,
                }
            )
    for row in rows:
        ours, flower = row["ours"], row["flower"]
        if ours and flower:
            row["ratio"] = flower / ours if row.get("seconds") else ours / flower
        else:
            row["ratio"] = None
    if args.json:
        print(json.dumps({"flower": flwr.__version__, "rows": rows}, indent=2))
        return
    print(f"Flower {flwr.__version__} beside flower-rs, same machine, same session\n")
    print("| workload | ours | Flower / PyTorch | speed, ours / theirs |\n| --- | --- | --- | --- |")
    for row in rows:
        if "note" in row:
            print(f"| {row['workload']} | {row['note']} | | |")
            continue
        ours = f"{row['ours']:.3g}" if row["ours"] else "not measured"
        ratio = f"{row['ratio']:.2f}" if row["ratio"] else "-"
        print(f"| {row['workload']} | {ours} | {row['flower']:.3g} | {ratio} |")


if __name__ == "__main__":
    main()
