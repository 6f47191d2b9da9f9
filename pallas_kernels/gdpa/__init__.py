"""GDPA: O = (M ⊙ β·Act(α·Q Kᵀ)) V per head — attention with an activation instead of softmax."""

from pallas_kernels.gdpa.api import BACKENDS, gdpa
from pallas_kernels.gdpa.reference import gdpa_reference

__all__ = ["BACKENDS", "gdpa", "gdpa_reference"]
