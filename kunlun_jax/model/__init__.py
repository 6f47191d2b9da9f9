"""Kunlun model components as functional Flax (Linen) modules."""

from kunlun_jax.model.kunlun import Kunlun

__all__ = ["Kunlun"]
