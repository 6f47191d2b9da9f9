"""Plain-jnp GDPA: the specification every GDPA kernel is tested against."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.common.activations import get_activation
from pallas_kernels.common.masks import attention_mask


def gdpa_reference(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    activation: str = "silu",
    qk_scale: float = 1.0,
    out_scale: float = 1.0,
    q_lengths: jax.Array | None = None,
    kv_lengths: jax.Array | None = None,
    window: int | None = None,
    causal: bool = False,
) -> jax.Array:
    """Generalized dot-product attention.

    q: [B, Tq, H, D]; k, v: [B, Tkv, H, D]; lengths: int [B] (None = all real).
    Returns [B, Tq, H, D] in q's dtype:
        O[b,i,h] = Σ_j M[b,i,j] · out_scale · Act(qk_scale · q[b,i,h]·k[b,j,h]) · v[b,j,h]
    Masked (padded, out-of-window, non-causal) positions contribute exactly zero, and padded
    query rows are zero. Matmuls accumulate in fp32.
    """
    act, _ = get_activation(activation)
    b, tq, _, _ = q.shape
    tkv = k.shape[1]
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    p = out_scale * act(qk_scale * s)
    mask = attention_mask(
        b, tq, tkv, q_lengths=q_lengths, kv_lengths=kv_lengths, window=window, causal=causal
    )
    p = jnp.where(mask, p, 0.0)
    o = jnp.einsum("bhqk,bkhd->bqhd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return o.astype(q.dtype)
