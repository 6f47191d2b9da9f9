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
        mask &= _real_rows(tq, q_lengths)[:, None, :, None]
    if kv_lengths is not None:
        mask &= _real_rows(tkv, kv_lengths)[:, None, None, :]
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


def zero_padding(x: jax.Array, lengths: jax.Array | None) -> jax.Array:
    """x [B, T, ...] with the rows at or past lengths[b] (int [B]; None: no padding) zeroed.
    A select, so NaN or inf in padding become 0 too, and their gradient is exactly 0."""
    if lengths is None:
        return x
    real = _real_rows(x.shape[1], lengths)
    real = real.reshape(real.shape + (1,) * (x.ndim - 2))
    return jnp.where(real, x, jnp.zeros((), x.dtype))


def zero_padded_rows(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_lengths: jax.Array | None,
    kv_lengths: jax.Array | None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(q, k, v) [B, T, ...] of an attention with their rows past the lengths zeroed
    (`zero_padding`): what padding holds then reaches no matmul."""
    return (
        zero_padding(q, q_lengths),
        zero_padding(k, kv_lengths),
        zero_padding(v, kv_lengths),
    )


def _real_rows(t: int, lengths: jax.Array) -> jax.Array:
    """Boolean [B, t]: row i of batch entry b is real (i < lengths[b]). The lengths are clipped
    to [0, t] first, as the kernels clip them (`inputs.clip_lengths`): a uint32 above 2³¹ would
    otherwise wrap below 0 in the comparison with int32 positions."""
    return jnp.arange(t)[None, :] < jnp.clip(lengths, 0, t)[:, None]
