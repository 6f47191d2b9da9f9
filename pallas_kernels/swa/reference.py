"""Plain-jnp masked softmax attention: the spec for the SWA and seed-pooling kernels."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.common.masks import attention_mask, zero_padded_rows, zero_padding


def attention_reference(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    q_lengths: jax.Array | None = None,
    kv_lengths: jax.Array | None = None,
    window: int | None = None,
    causal: bool = False,
    scale: float | None = None,
) -> jax.Array:
    """Softmax attention with padding, window (|i - j| <= window) and causal masks.

    q: [B, Tq, H, D]; k, v: [B, Tkv, H, D]; lengths int [B]. Returns [B, Tq, H, D] in q's dtype.
    A query row with no visible key (padded row, empty history) outputs exactly zero, never NaN.
    Rows past the lengths (values outside [0, T] act as clipped to it) are zeroed before the
    matmuls and padded output rows take no cotangent, so whatever padding holds (NaN and inf
    included) contributes exactly zero to the output and the gradients. scale defaults to
    1/sqrt(D).
    """
    b, tq, _, d = q.shape
    tkv = k.shape[1]
    if tkv == 0:  # no key at all: every row is one with no visible key
        return jnp.zeros_like(q)
    scale = d**-0.5 if scale is None else scale
    mask = attention_mask(
        b, tq, tkv, q_lengths=q_lengths, kv_lengths=kv_lengths, window=window, causal=causal
    )
    q, k, v = zero_padded_rows(q, k, v, q_lengths, kv_lengths)
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    s = jnp.where(mask, s, -jnp.inf)
    m = jnp.max(s, axis=-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.where(mask, jnp.exp(s - m), 0.0)
    denom = jnp.sum(p, axis=-1, keepdims=True)
    p = p / jnp.where(denom > 0, denom, 1.0)
    o = jnp.einsum("bhqk,bkhd->bqhd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return zero_padding(o.astype(q.dtype), q_lengths)  # padded rows take no cotangent
