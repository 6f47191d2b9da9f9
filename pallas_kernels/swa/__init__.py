"""Sliding-window (and full) softmax attention over jagged sequences."""

from pallas_kernels.swa.api import BACKENDS, swa_attention
from pallas_kernels.swa.reference import attention_reference

__all__ = ["BACKENDS", "attention_reference", "swa_attention"]
