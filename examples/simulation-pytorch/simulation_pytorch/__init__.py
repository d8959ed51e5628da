"""simulation-pytorch: a PyTorch Flower app to simulate."""
