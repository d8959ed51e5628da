"""The model and each partition's data: two Gaussian blobs per class in 16 dimensions, the same
for every partition of one federation, a different draw for each partition."""

import numpy as np
import torch
from torch import nn

FEATURES, CLASSES, SAMPLES = 16, 4, 64
CENTRES = np.random.default_rng(7).normal(scale=2.0, size=(CLASSES, FEATURES))


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(FEATURES, 32), nn.ReLU(), nn.Linear(32, CLASSES))


def partition(partition_id: int, num_partitions: int):
    rng = np.random.default_rng(1000 * num_partitions + partition_id)
    labels = rng.integers(0, CLASSES, size=SAMPLES)
    features = CENTRES[labels] + rng.normal(size=(SAMPLES, FEATURES))
    return torch.tensor(features, dtype=torch.float32), torch.tensor(labels)


def train(net: nn.Module, x, y, epochs: int, lr: float) -> float:
    optimiser = torch.optim.SGD(net.parameters(), lr=lr)
    loss = torch.tensor(0.0)
    for _ in range(epochs):
        for start in range(0, len(y), 16):
            optimiser.zero_grad()
            loss = nn.functional.cross_entropy(net(x[start:start + 16]), y[start:start + 16])
            loss.backward()
            optimiser.step()
    return float(loss)


def evaluate(net: nn.Module, x, y):
    with torch.no_grad():
        logits = net(x)
        return float(nn.functional.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())
