"""The seed's FedAvg CNN app for Flower, on flower-rs prepared partitions."""
