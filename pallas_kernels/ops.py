"""The one op layer the model calls for every attention-shaped op.

`kernels` (from `model.kernels`): "reference" = plain jnp under XLA; "pallas" = this
platform's Pallas kernel; "auto" = the fastest available implementation for the platform,
falling back in order to the reference.
"""

from __future__ import annotations

from typing import Literal

import jax

from pallas_kernels.gdpa.reference import gdpa_reference
from pallas_kernels.hsp.reference import seed_pooling_reference
from pallas_kernels.swa.reference import attention_reference

Kernels = Literal["reference", "pallas", "auto"]


def gdpa(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    activation: str,
    qk_scale: float = 1.0,
    out_scale: float = 1.0,
    q_lengths: jax.Array | None = None,
    kv_lengths: jax.Array | None = None,
    window: int | None = None,
    causal: bool = False,
    kernels: Kernels = "reference",
) -> jax.Array:
    """GDPA, q [B, Tq, H, D], k/v [B, Tkv, H, D] -> [B, Tq, H, D]; see gdpa_reference."""
    kwargs = dict(
        activation=activation,
        qk_scale=qk_scale,
        out_scale=out_scale,
        q_lengths=q_lengths,
        kv_lengths=kv_lengths,
        window=window,
        causal=causal,
    )
    if kernels == "reference":
        return gdpa_reference(q, k, v, **kwargs)
    from pallas_kernels.gdpa.api import gdpa as gdpa_kernel

    return gdpa_kernel(q, k, v, backend=kernels, **kwargs)


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    q_lengths: jax.Array | None = None,
    kv_lengths: jax.Array | None = None,
    window: int | None = None,
    causal: bool = False,
    kernels: Kernels = "reference",
) -> jax.Array:
    """Softmax attention (full or sliding-window), q [B, Tq, H, D] -> [B, Tq, H, D]."""
    del kernels  # Pallas SWA kernels land with the SWA issue; the reference is the fallback.
    return attention_reference(
        q, k, v, q_lengths=q_lengths, kv_lengths=kv_lengths, window=window, causal=causal
    )


def seed_pooling(
    seeds: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    kv_lengths: jax.Array | None = None,
    kernels: Kernels = "reference",
) -> jax.Array:
    """Seeds [S, H, D] attend to k/v [B, T, H, D] -> [B, S, H, D]."""
    del kernels  # the fused HSP kernel lands with the HSP issue; the reference is the fallback.
    return seed_pooling_reference(seeds, k, v, kv_lengths=kv_lengths)
