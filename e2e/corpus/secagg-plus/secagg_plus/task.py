"""What each node contributes, known to the test from the node's id alone, so that the server can
check the aggregate it unmasked against the plain weighted mean of the nodes that stayed."""

import numpy as np

LENGTH = 1000


def update_of(node_id: int) -> np.ndarray:
    """The node's model after its local step: values in [-0.5, 0.5], inside SecAgg+'s default
    clipping range, different for every node."""
    return (0.5 * np.sin(np.arange(LENGTH) + node_id % 1009)).astype(np.float32)


def weight_of(node_id: int) -> int:
    """The node's number of examples, between 1 and 8."""
    return node_id % 8 + 1
