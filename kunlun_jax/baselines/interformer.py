"""InterFormer (Zeng et al., 2024, arXiv 2411.09852), the architecture Kunlun redesigns.

Kunlun with its innovations switched off (ffn = "pffn", pooling = "pma", compskip = false,
rote = false, event_personalization = false, window = 0) is close to InterFormer but not equal:
InterFormer prepends X_sum to every sequence as CLS tokens, builds the sequence summary from
[CLS tokens ; PMA tokens ; most recent tokens] through a gate, interacts [X ; S_sum] with a
DCNv2/DHEN-style network rather than Wukong, encodes positions with RoPE, and reads its head
from [X_sum ; S_sum]. This module implements that block structure from Kunlun's components.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from kunlun_jax.baselines.common import embed
from kunlun_jax.baselines.dcnv2 import CrossNetwork
from kunlun_jax.config import ModelConfig
from kunlun_jax.data.spec import Batch, FeatureSpec
from kunlun_jax.model.common import MLP, Dense, LayerNorm, task_logits
from kunlun_jax.model.gdpa_ffn import PersonalizedFFN
from kunlun_jax.model.hsp import SequenceSummary
from kunlun_jax.model.rote import apply_rote
from kunlun_jax.model.weight_gen import WeightGen
from pallas_kernels import ops

ROPE_BASE = 10_000.0


class RotarySelfAttention(nn.Module):
    """S [B, T, d] -> [B, T, d]: full multi-head softmax self-attention with RoPE on Q and K
    (angle of position t, pair i: t · base^(-2i/d_h)). Padded positions output zero."""

    num_heads: int
    kernels: ops.Kernels = "reference"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, s: jax.Array, lengths: jax.Array) -> jax.Array:
        b, t, d = s.shape
        h, dh = self.num_heads, d // self.num_heads
        qkv = Dense(3 * d, ("embed", "heads"), use_bias=False, dtype=self.dtype, name="qkv")(s)
        q, k, v = (a.reshape(b, t, h, dh) for a in jnp.split(qkv, 3, axis=-1))
        inv_freq = ROPE_BASE ** (-jnp.arange(0, dh, 2, dtype=jnp.float32) / dh)
        angles = jnp.broadcast_to(
            jnp.arange(t, dtype=jnp.float32)[:, None] * inv_freq, (b, t, dh // 2)
        )
        q, k = apply_rote(q, angles), apply_rote(k, angles)
        o = ops.attention(q, k, v, q_lengths=lengths, kv_lengths=lengths, kernels=self.kernels)
        return Dense(d, ("heads", "embed"), use_bias=False, dtype=self.dtype, name="o")(
            o.reshape(b, t, d)
        )


class GatedSequenceSummary(nn.Module):
    """S [B, n_cls + T, d] -> S_sum [B, n_cls + 2 n_tok, d] = Gate([CLS ; PMA(S) ; recent]).

    CLS = the first n_cls tokens, recent = the n_tok newest events (histories are newest first,
    right after the CLS tokens; zero where a history is shorter); Gate(z) = z ⊙ σ(MLP(z)).
    """

    n_cls: int
    n_tok: int
    num_heads: int
    mlp_ratio: int = 2
    kernels: ops.Kernels = "reference"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, s: jax.Array, lengths: jax.Array) -> jax.Array:
        d = s.shape[-1]
        pma = SequenceSummary(
            self.n_tok,
            d,
            self.num_heads,
            pooling="pma",
            kernels=self.kernels,
            dtype=self.dtype,
            name="pma",
        )(LayerNorm(self.dtype, name="norm")(s), lengths)
        recent = s[:, self.n_cls : self.n_cls + self.n_tok]
        z = jnp.concatenate([s[:, : self.n_cls], pma, recent], axis=1)
        gate = MLP((self.mlp_ratio * d,), d, dtype=self.dtype, name="gate")(z)
        return z * jax.nn.sigmoid(gate)


class InterFormerLayer(nn.Module):
    """X [B, n_ns, d], streams {name: S_e [B, n_cls + T, d]} -> (X', streams').

    X_sum = WeightGen(X); S_sum_e = GatedSequenceSummary(S_e);
    X' = LN(X + MLP(Cross(flatten([X ; S_sum])))) (the interaction arch; rank-d cross);
    S_e' = S_e + PFFN(LN(S_e), X_sum), then S_e' + MHA(LN(S_e')) (the sequence arch).
    """

    cfg: ModelConfig
    streams: tuple[str, ...]
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x, seqs, lengths):
        c = self.cfg
        b, n_ns, d = x.shape
        x_sum = WeightGen(c.n_sum, c.mlp_ratio, self.dtype, c.weight_gen_norm, name="weight_gen")(x)
        summaries = [
            summarize(c, self.dtype, f"summary_{n}")(seqs[n], lengths[n]) for n in self.streams
        ]
        z = jnp.concatenate([x, *summaries], axis=1).reshape(b, -1)
        z = CrossNetwork(1, rank=d, dtype=self.dtype, name="cross")(z)
        mixed = MLP((c.mlp_ratio * d,), n_ns * d, dtype=self.dtype, name="interaction")(z)
        x = LayerNorm(self.dtype, name="out_norm")(x + mixed.reshape(b, n_ns, d))
        new = {}
        for n in self.streams:
            s = seqs[n]
            pffn = PersonalizedFFN(self.dtype, name=f"pffn_{n}")
            s = s + pffn(LayerNorm(self.dtype, name=f"pffn_norm_{n}")(s), x_sum, lengths[n])
            mha = RotarySelfAttention(c.num_heads, c.kernels, self.dtype, name=f"mha_{n}")
            new[n] = s + mha(LayerNorm(self.dtype, name=f"mha_norm_{n}")(s), lengths[n])
        return x, new


def summarize(cfg: ModelConfig, dtype: jnp.dtype, name: str) -> GatedSequenceSummary:
    """InterFormer's sequence summary with the config's sizes: #CLS = n_sum, #PMA = #recent =
    n_tok (the public setup uses 4, 2, 2)."""
    return GatedSequenceSummary(
        cfg.n_sum, cfg.n_tok, cfg.num_heads, cfg.mlp_ratio, cfg.kernels, dtype, name=name
    )


class InterFormer(nn.Module):
    """Click logits [B] from a batch: CLS tokens X_sum prepended to every history, num_layers
    InterFormer layers, head MLP([X_sum ; S_sum]) over fresh summaries of the final state.

    Reads model.d_model, num_heads, num_layers, n_sum (#CLS), n_tok (#PMA = #recent), mlp_ratio,
    weight_gen_norm, head_hidden, dropout, kernels, dtype; every stream keeps all its `spec` events.
    """

    cfg: ModelConfig
    spec: FeatureSpec

    @nn.compact
    def __call__(self, batch: Batch, *, train: bool = False) -> jax.Array:
        c, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
        x, tokens = embed(c, self.spec, batch)
        b = x.shape[0]
        cls = WeightGen(c.n_sum, c.mlp_ratio, dtype, c.weight_gen_norm, name="cls")(x)
        names = self.spec.stream_names
        seqs = {n: jnp.concatenate([cls, tokens[n]], axis=1) for n in names}
        lengths = {n: batch["seqs"][n]["length"].astype(jnp.int32) + c.n_sum for n in names}
        for i in range(c.num_layers):
            x, seqs = InterFormerLayer(c, names, dtype, name=f"layer_{i}")(x, seqs, lengths)
        final_gen = WeightGen(
            c.n_sum, c.mlp_ratio, dtype, c.weight_gen_norm, name="final_weight_gen"
        )
        x_sum = final_gen(x)
        s_sum = [summarize(c, dtype, f"final_summary_{n}")(seqs[n], lengths[n]) for n in names]
        h = jnp.concatenate([x_sum, *s_sum], axis=1).reshape(b, -1)
        return task_logits(h, c, self.spec, train=train)
