"""simulation-numpy: a Flower app to simulate."""
