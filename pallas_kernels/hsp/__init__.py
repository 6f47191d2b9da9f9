"""Hierarchical seed pooling: learnable seeds attend to a jagged sequence."""

from pallas_kernels.hsp.api import BACKENDS, seed_pooling
from pallas_kernels.hsp.reference import seed_pooling_reference

__all__ = ["BACKENDS", "seed_pooling", "seed_pooling_reference"]
