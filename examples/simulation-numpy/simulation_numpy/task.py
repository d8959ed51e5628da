"""The learning task: fit `y = x . w` by gradient descent, each partition holding its own samples
of one true `w`."""

import numpy as np

TRUE_WEIGHTS = np.array([2.0, -3.0, 0.5], dtype=np.float64)


def partition(partition_id: int, num_partitions: int, samples: int = 64):
    """The samples of partition `partition_id` of `num_partitions`: the same every time."""
    rng = np.random.default_rng(1000 * num_partitions + partition_id)
    x = rng.normal(size=(samples, TRUE_WEIGHTS.size))
    y = x @ TRUE_WEIGHTS + rng.normal(scale=0.1, size=samples)
    return x, y


def train(weights: np.ndarray, x: np.ndarray, y: np.ndarray, steps: int, lr: float):
    """`steps` steps of gradient descent on the mean squared error; the weights and final loss."""
    for _ in range(steps):
        gradient = 2.0 * x.T @ (x @ weights - y) / len(y)
        weights = weights - lr * gradient
    return weights, float(np.mean((x @ weights - y) ** 2))
