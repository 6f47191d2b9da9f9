"""Plain-jnp GDPA: the specification every GDPA kernel is tested against."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.common.activations import get_activation
from pallas_kernels.common.masks import attention_mask, zero_padded_rows, zero_padding


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

    q: [B, Tq, H, D]; k, v: [B, Tkv, H, D]; lengths: int [B] (None = all real; values outside
    [0, T] act as clipped to it). Returns [B, Tq, H, D] in q's dtype:
        O[b,i,h] = Σ_j M[b,i,j] · out_scale · Act(qk_scale · q[b,i,h]·k[b,j,h]) · v[b,j,h]
    Masked (padded, out-of-window, non-causal) positions contribute exactly zero, and padded
    query rows are zero, whatever the padding holds (NaN and inf included): rows past the
    lengths are zeroed before the matmuls and masked scores never reach the activation, so
    the gradients are exactly zero there too, also for a NaN cotangent in padded rows.
    Matmuls accumulate in fp32; out_scale applies in fp32, before P's cast to v's dtype.
    """
    act, _ = get_activation(activation)
    b, tq, _, _ = q.shape
    tkv = k.shape[1]
    mask = attention_mask(
        b, tq, tkv, q_lengths=q_lengths, kv_lengths=kv_lengths, window=window, causal=causal
    )
    q, k, v = zero_padded_rows(q, k, v, q_lengths, kv_lengths)
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    s = jnp.where(mask, s, 0.0)  # no Act(masked score) whose gradient could be inf · 0
    p = jnp.where(mask, out_scale * act(qk_scale * s), 0.0)
    o = jnp.einsum("bhqk,bkhd->bqhd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return zero_padding(o.astype(q.dtype), q_lengths)  # padded rows take no cotangent
