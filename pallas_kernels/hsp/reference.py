"""Plain-jnp seed pooling: the spec for the seed-pooling kernels (`api.py`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.swa.reference import attention_reference


def seed_pooling_reference(
    seeds: jax.Array, k: jax.Array, v: jax.Array, *, kv_lengths: jax.Array | None = None
) -> jax.Array:
    """Seeds [S, H, D] shared across the batch attend (softmax) to k, v [B, T, H, D].

    Returns [B, S, H, D]; rows of a batch entry with length 0 are zero.
    """
    q = jnp.broadcast_to(seeds[None].astype(k.dtype), (k.shape[0], *seeds.shape))
    return attention_reference(q, k, v, kv_lengths=kv_lengths)
