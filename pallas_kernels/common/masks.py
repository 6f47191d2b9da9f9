"""Attention masks from per-row lengths, sliding windows and causality (reference form).

Kernels never materialize these [Tq, Tkv] masks; they recompute the same predicate per block.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def attention_mask(
    batch: int,
    tq: int,
    tkv: int,
    *,
    q_lengths: jax.Array | None = None,
    kv_lengths: jax.Array | None = None,
    window: int | None = None,
    causal: bool = False,
) -> jax.Array:
    """Boolean mask [B, 1, Tq, Tkv]: True where query i may attend key j.

    q_lengths / kv_lengths: int [B], rows at positions >= length are padding.
    window: |i - j| <= window (None = unlimited). causal: j <= i.
    """
    i = jnp.arange(tq)[:, None]
    j = jnp.arange(tkv)[None, :]
    mask = jnp.ones((batch, 1, tq, tkv), dtype=bool)
    if q_lengths is not None:
        mask &= (jnp.arange(tq)[None, :] < q_lengths[:, None])[:, None, :, None]
    if kv_lengths is not None:
        mask &= (jnp.arange(tkv)[None, :] < kv_lengths[:, None])[:, None, None, :]
    if window is not None:
        mask &= (jnp.abs(i - j) <= window)[None, None]
    if causal:
        mask &= (j <= i)[None, None]
    return mask


def rows_with_keys(
    batch: int,
    tq: int,
    tkv: int,
    *,
    q_lengths: jax.Array | None = None,
    kv_lengths: jax.Array | None = None,
    window: int | None = None,
) -> jax.Array:
    """Boolean [B, Tq]: True where query row i sees at least one key under `attention_mask`,
    with or without causality (key max(0, i - window) <= i is the first candidate either way).

    Kernels whose fully masked rows are not exactly zero are post-masked with this; it costs
    O(B·Tq), never a [Tq, Tkv] mask.
    """
    i = jnp.arange(tq)[None, :]
    q_len = tq if q_lengths is None else q_lengths[:, None]
    kv_len = tkv if kv_lengths is None else kv_lengths[:, None]
    ok = (i < q_len) & (kv_len > 0)
    if window is not None:
        ok &= i - window < kv_len
    return jnp.broadcast_to(ok, (batch, tq))
