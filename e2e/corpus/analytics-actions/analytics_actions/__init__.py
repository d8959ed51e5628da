"""Federated analytics and message actions on Flower's Message API."""
