"""Sequence summarization: Hierarchical Seed Pooling (HSP), PMA, or mean pooling."""

from __future__ import annotations

import dataclasses
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from kunlun_jax.model.common import Dense, GdpaScoring, LayerNorm, length_mask, param_with_axes
from kunlun_jax.model.rote import apply_rote, rote_angles
from pallas_kernels import ops


class SumKronLinear(nn.Module):
    """Y = Σ_{i<k} Z_iᵀ H W_i: [B, n_seed, d] -> [B, n_tok, d_out].

    A rank-k sum of Kronecker products, k(n_seed·n_tok + d·d_out) parameters instead of
    (n_seed·d)(n_tok·d_out); contracted in two einsums.
    """

    n_tok: int
    d_out: int
    rank: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        n_seed, d = h.shape[1], h.shape[2]
        z = self.param(
            "z",
            param_with_axes(nn.initializers.lecun_normal(), (None, "seeds", None)),
            (self.rank, n_seed, self.n_tok),
        )
        w = self.param(
            "w",
            param_with_axes(
                nn.initializers.variance_scaling(
                    1.0 / self.rank, "fan_in", "normal", in_axis=1, out_axis=2
                ),
                (None, "embed", "mlp"),
            ),
            (self.rank, d, self.d_out),
        )
        zh = jnp.einsum("ksm,bsd->bkmd", z.astype(self.dtype), h)
        return jnp.einsum("bkmd,kdo->bmo", zh, w.astype(self.dtype))


class SequenceSummary(nn.Module):
    """S [B, T, d_e] (+ lengths [B]) -> H [B, n_tok, d_out] summary tokens.

    pooling="hsp": overcomplete seeds E [n_seed, d_e] attend to S (MHA with padding mask),
    then compression n_seed -> n_tok (SumKronLinear or one dense map over the flattened seeds).
    pooling="pma": n_tok seeds attend to S, then a linear map d_e -> d_out (InterFormer's PMA).
    pooling="mean": the masked mean of S, repeated n_tok times through n_tok linear maps.
    The seed attention is a softmax, or GDPA (seeds as queries) when `gdpa` is given. With
    `rote_t_scale` > 0 its keys get ROTE at the events' time before the request (dt [B, T]) and
    the seeds sit at the request (angle 0): q·R(φ(dt_j)) k_j, so the pooling sees recency.
    An empty sequence (length 0) yields zero attention output, never NaN.
    """

    n_tok: int
    d_out: int
    num_heads: int
    n_seed: int = 16
    pooling: Literal["hsp", "pma", "mean"] = "hsp"
    compression: Literal["sumkron", "dense"] = "sumkron"
    skl_rank: int = 4
    gdpa: GdpaScoring | None = None  # None: softmax seed attention
    kernels: ops.Kernels = "reference"
    rote_t_scale: float = 0.0  # > 0: ROTE on the seed attention's keys (seconds, see rote.py)
    dtype: jnp.dtype = jnp.float32

    def _seed_attention(
        self, s: jax.Array, dt: jax.Array | None, lengths: jax.Array, n_seeds: int
    ) -> jax.Array:
        b, t, d_e = s.shape
        h, dh = self.num_heads, d_e // self.num_heads
        seeds = self.param(
            "seeds",
            param_with_axes(nn.initializers.normal(0.5), ("seeds", "embed")),
            (n_seeds, d_e),
        )
        q = Dense(d_e, ("embed", "heads"), use_bias=False, dtype=self.dtype, name="q")(
            LayerNorm(self.dtype, name="seed_norm")(seeds)
        )
        kv = Dense(2 * d_e, ("embed", "heads"), use_bias=False, dtype=self.dtype, name="kv")(s)
        k, v = (x.reshape(b, t, h, dh) for x in jnp.split(kv, 2, axis=-1))
        if self.rote_t_scale > 0:
            k = apply_rote(k, rote_angles(dt, dh, t_scale=self.rote_t_scale))
        q = q.reshape(n_seeds, h, dh)
        if self.gdpa is None:
            pooled = ops.seed_pooling(q, k, v, kv_lengths=lengths, kernels=self.kernels)
        else:
            pooled = ops.gdpa(
                jnp.broadcast_to(q, (b, n_seeds, h, dh)),
                k,
                v,
                **dataclasses.asdict(self.gdpa),
                kv_lengths=lengths,
                kernels=self.kernels,
            )
        return Dense(d_e, ("heads", "embed"), use_bias=False, dtype=self.dtype, name="o")(
            pooled.reshape(b, n_seeds, d_e)
        )

    @nn.compact
    def __call__(self, s: jax.Array, lengths: jax.Array, dt: jax.Array | None = None) -> jax.Array:
        """s [B, T, d_e], lengths [B], dt [B, T] (seconds before the request; needed with
        rote_t_scale > 0) -> [B, n_tok, d_out]."""
        if self.rote_t_scale > 0 and dt is None:
            raise ValueError("SequenceSummary with rote_t_scale > 0 needs the events' dt [B, T]")
        b = s.shape[0]
        if self.pooling == "mean":
            real = length_mask(lengths, s.shape[1])[..., None]
            mean = jnp.sum(jnp.where(real, s, 0.0), axis=1) / jnp.maximum(lengths, 1)[
                :, None
            ].astype(s.dtype)
            out = Dense(self.n_tok * self.d_out, ("embed", "mlp"), dtype=self.dtype, name="expand")(
                mean
            )
            return out.reshape(b, self.n_tok, self.d_out)
        if self.pooling == "pma":
            pooled = self._seed_attention(s, dt, lengths, self.n_tok)
            return Dense(self.d_out, ("embed", "mlp"), dtype=self.dtype, name="proj")(pooled)
        pooled = self._seed_attention(s, dt, lengths, self.n_seed)
        if self.compression == "sumkron":
            return SumKronLinear(
                self.n_tok, self.d_out, self.skl_rank, self.dtype, name="compress"
            )(pooled)
        flat = pooled.reshape(b, -1)
        out = Dense(
            self.n_tok * self.d_out,
            ("mlp", "embed"),
            use_bias=False,
            dtype=self.dtype,
            name="compress",
        )(flat)
        return out.reshape(b, self.n_tok, self.d_out)
