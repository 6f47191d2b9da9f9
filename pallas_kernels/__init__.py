"""Attention-shaped ops for Kunlun (GDPA, sliding-window attention, seed pooling).

Each op has a plain-jnp reference (the spec) and Pallas kernels behind one dispatching API.
"""
