"""Kernel benchmarks: scripts run as `python benchmarks/kernels/<op>.py --out results.json`."""
