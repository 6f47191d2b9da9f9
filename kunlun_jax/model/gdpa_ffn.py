"""The personalized FFN on sequence tokens: GDPA with K/V generated from the summary X_sum."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from kunlun_jax.model.common import Dense, length_mask
from pallas_kernels import ops


class GDPAFFN(nn.Module):
    """S [B, T, d_e], X_sum [B, n_sum, d] -> [B, T, d_e].

    Q = S W_q, K = X_sum W_k, V = X_sum W_v per head; O = β·Act(α·Q Kᵀ) V (no softmax): a
    per-user 2-layer MLP of hidden width n_sum, run as one attention op for the batch.
    Padded query rows output zero.
    """

    num_heads: int
    activation: str = "silu"
    qk_scale: float = 1.0
    out_scale: float = 0.0  # 0 -> 1 / n_sum
    kernels: ops.Kernels = "reference"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, s: jax.Array, x_sum: jax.Array, lengths: jax.Array) -> jax.Array:
        b, t, d_e = s.shape
        h, dh = self.num_heads, d_e // self.num_heads
        q = Dense(d_e, ("embed", "heads"), use_bias=False, dtype=self.dtype, name="q")(s)
        k = Dense(d_e, ("embed", "heads"), use_bias=False, dtype=self.dtype, name="k")(x_sum)
        v = Dense(d_e, ("embed", "heads"), use_bias=False, dtype=self.dtype, name="v")(x_sum)
        n_sum = x_sum.shape[1]
        o = ops.gdpa(
            q.reshape(b, t, h, dh),
            k.reshape(b, n_sum, h, dh),
            v.reshape(b, n_sum, h, dh),
            activation=self.activation,
            qk_scale=self.qk_scale,
            out_scale=self.out_scale or 1.0 / n_sum,
            q_lengths=lengths,
            kernels=self.kernels,
        )
        return Dense(d_e, ("heads", "embed"), use_bias=False, dtype=self.dtype, name="o")(
            o.reshape(b, t, d_e)
        )


class PersonalizedFFN(nn.Module):
    """InterFormer's PFFN (the ablation baseline): a generated d_e x d_e weight per example.

    W_b = (X_sum W_a)ᵀ (X_sum W_c) / n_sum, then S W_b: two small back-to-back matmuls per
    example. Equals GDPA with identity activation and one head, computed the memory-bound way.
    """

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, s: jax.Array, x_sum: jax.Array, lengths: jax.Array) -> jax.Array:
        d_e, n_sum = s.shape[-1], x_sum.shape[1]
        a = Dense(d_e, ("embed", "heads"), use_bias=False, dtype=self.dtype, name="a")(x_sum)
        c = Dense(d_e, ("embed", "heads"), use_bias=False, dtype=self.dtype, name="c")(x_sum)
        w = jnp.einsum("bmi,bmj->bij", a, c) / n_sum
        out = jnp.einsum("bti,bij->btj", s, w)
        real = length_mask(lengths, s.shape[1])
        return jnp.where(real[..., None], out, 0.0)
