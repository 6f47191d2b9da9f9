"""Sequence self-attention: multi-head softmax (or GDPA) attention with ROTE and a sliding
window."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from kunlun_jax.model.common import Dense, GdpaScoring
from kunlun_jax.model.rote import Gap, apply_rote, rote_angles
from pallas_kernels import ops


class SequenceSelfAttention(nn.Module):
    """S [B, T, d_e] -> [B, T, d_e]; token t sees [t - w, t + w] (w = window, 0 = all).

    ROTE rotates Q and K by angles from the events' time before the request (dt [B, T]; or the
    gap to the previous event, plus the position: `rote_angles`). Scores are a softmax, or
    self-attention-shaped GDPA when `gdpa` is given. Padded positions neither attend nor are
    attended to; their outputs are zero.
    """

    num_heads: int
    window: int = 0
    causal: bool = False
    rote: bool = True
    rote_t_scale: float = 3600.0
    rote_gap: Gap = "request"
    rote_position: bool = False
    gdpa: GdpaScoring | None = None  # None: softmax attention
    kernels: ops.Kernels = "reference"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, s: jax.Array, dt: jax.Array, lengths: jax.Array) -> jax.Array:
        b, t, d_e = s.shape
        h, dh = self.num_heads, d_e // self.num_heads
        qkv = Dense(3 * d_e, ("embed", "heads"), use_bias=False, dtype=self.dtype, name="qkv")(s)
        q, k, v = (x.reshape(b, t, h, dh) for x in jnp.split(qkv, 3, axis=-1))
        if self.rote:
            angles = rote_angles(
                dt,
                dh,
                t_scale=self.rote_t_scale,
                lengths=lengths,
                gap=self.rote_gap,
                position=self.rote_position,
            )
            q, k = apply_rote(q, angles), apply_rote(k, angles)
        mask = dict(
            q_lengths=lengths,
            kv_lengths=lengths,
            window=self.window or None,
            causal=self.causal,
            kernels=self.kernels,
        )
        if self.gdpa is None:
            o = ops.attention(q, k, v, **mask)
        else:
            o = ops.gdpa(q, k, v, **dataclasses.asdict(self.gdpa), **mask)
        return Dense(d_e, ("heads", "embed"), use_bias=False, dtype=self.dtype, name="o")(
            o.reshape(b, t, d_e)
        )
