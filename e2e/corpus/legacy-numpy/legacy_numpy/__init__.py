"""Flower's legacy API with a numpy model: a line fitted by federated gradient descent."""
