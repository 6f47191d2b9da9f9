"""Datasets: the batch format (`spec`), the synthetic generator and real-data loaders."""
