"""SecAgg+ on Flower's legacy API with a numpy model."""
