"""The one op layer the model calls for every attention-shaped op.

`kernels` (from `model.kernels`): "reference" = plain jnp under XLA; "pallas" = this
platform's Pallas kernel; "auto" = the fastest available implementation for the platform,
falling back in order to the reference.
"""

from __future__ import annotations

from typing import Literal

import jax

from pallas_kernels.common.sharding import per_batch_shard

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
    """GDPA, q [B, Tq, H, D], k/v [B, Tkv, H, D] -> [B, Tq, H, D]; see pallas_kernels.gdpa."""
    from pallas_kernels.gdpa.api import gdpa as gdpa_op

    kwargs = dict(
        activation=activation, qk_scale=qk_scale, out_scale=out_scale, window=window, causal=causal
    )

    def call(q, k, v, q_lengths, kv_lengths):
        return gdpa_op(
            q, k, v, q_lengths=q_lengths, kv_lengths=kv_lengths, backend=kernels, **kwargs
        )

    return _sharded(kernels, call, q, k, v, q_lengths, kv_lengths, batched=(True,) * 5)


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
    """Softmax attention (full or sliding-window), q [B, Tq, H, D] -> [B, Tq, H, D]; see
    pallas_kernels.swa.api. "pallas"/"auto": our Mosaic-TPU kernel on TPU, tokamax's named GPU
    kernel on GPU; "auto" falls back to the reference where none applies (CPU included)."""
    from pallas_kernels.swa.api import swa_attention

    def call(q, k, v, q_lengths, kv_lengths):
        return swa_attention(
            q,
            k,
            v,
            q_lengths=q_lengths,
            kv_lengths=kv_lengths,
            window=window,
            causal=causal,
            backend=kernels,
        )

    return _sharded(kernels, call, q, k, v, q_lengths, kv_lengths, batched=(True,) * 5)


def seed_pooling(
    seeds: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    kv_lengths: jax.Array | None = None,
    kernels: Kernels = "reference",
) -> jax.Array:
    """Seeds [S, H, D] attend to k/v [B, T, H, D] -> [B, S, H, D]; see pallas_kernels.hsp.api.

    "auto" falls back to the reference where no kernel applies (CPU, head dims outside 32–256,
    more seeds than the device's seed tile). The seeds are replicated across batch shards.
    """
    from pallas_kernels.hsp.api import seed_pooling as seed_pooling_op

    def call(seeds, k, v, kv_lengths):
        return seed_pooling_op(seeds, k, v, kv_lengths=kv_lengths, backend=kernels)

    return _sharded(kernels, call, seeds, k, v, kv_lengths, batched=(False, True, True, True))


def _sharded(kernels: Kernels, call, *args, batched: tuple[bool, ...]) -> jax.Array:
    """call(*args), checked by the op's public API whatever `kernels` is; a kernel runs once
    per batch shard (`per_batch_shard`), the reference (plain jnp) under XLA's sharding."""
    if kernels == "reference":
        return call(*args)
    return per_batch_shard(call, *args, batched=batched)
