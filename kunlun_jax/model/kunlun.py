"""The Kunlun model: embeddings, L Kunlun layers (interaction + transformer), prediction head."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from kunlun_jax.config import ModelConfig
from kunlun_jax.data.spec import Batch, FeatureSpec
from kunlun_jax.model.attention import SequenceSelfAttention
from kunlun_jax.model.common import (
    Dense,
    GdpaScoring,
    LayerNorm,
    batch_constraint,
    real_times,
    task_logits,
)
from kunlun_jax.model.embedding import FeatureEmbedding
from kunlun_jax.model.gdpa_ffn import GDPAFFN, PersonalizedFFN
from kunlun_jax.model.hsp import SequenceSummary
from kunlun_jax.model.towers import (
    Segment,
    Tower,
    layer_roles,
    layer_segments,
    resolve_towers,
)
from kunlun_jax.model.weight_gen import WeightGen
from kunlun_jax.model.wukong import MixtureOfWukong


def gdpa_scoring(cfg: ModelConfig, kind: str, max_len: int) -> GdpaScoring | None:
    """GDPA in place of a softmax where `kind` (model.seq_attention / seed_attention) is
    "gdpa", else None: the model's activation and α, β = model.gdpa_out_scale or 1 / max_len
    (the paper's 1/τ, τ the maximum sequence length)."""
    if kind == "softmax":
        return None
    out_scale = cfg.gdpa_out_scale or 1.0 / max_len
    return GdpaScoring(cfg.gdpa_activation, cfg.gdpa_qk_scale, out_scale)


class StreamBlock(nn.Module):
    """One stream's transformer block at one layer: S [B, T_e, d_e] -> S'.

    S' = S + FFN(LN(S), X_sum) on GDPA layers; S' = S + SWA(LN(S)) on attention layers.
    Padded positions stay exactly zero.
    """

    cfg: ModelConfig
    tower: Tower
    use_ffn: bool
    use_attention: bool
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, s, dt, lengths, x_sum):
        c, t = self.cfg, self.tower
        if self.use_ffn:
            normed = LayerNorm(self.dtype, name="ffn_norm")(s)
            if c.ffn == "gdpa":
                ffn = GDPAFFN(
                    t.num_heads,
                    c.gdpa_activation,
                    c.gdpa_qk_scale,
                    c.gdpa_out_scale,
                    c.kernels,
                    self.dtype,
                    name="gdpa_ffn",
                )
            else:
                ffn = PersonalizedFFN(self.dtype, name="pffn")
            s = s + ffn(normed, x_sum, lengths)
        if self.use_attention:
            attn = SequenceSelfAttention(
                num_heads=t.num_heads,
                window=t.window,
                causal=c.causal,
                rote=c.rote,
                rote_t_scale=c.rote_t_scale,
                rote_gap=c.rote_gap,
                rote_position=c.rote_position,
                gdpa=gdpa_scoring(c, c.seq_attention, t.max_len),
                kernels=c.kernels,
                dtype=self.dtype,
                name="swa",
            )
            s = s + attn(LayerNorm(self.dtype, name="attn_norm")(s), dt, lengths)
        return s


class TowerSummary(nn.Module):
    """A stream's summary tokens: SequenceSummary(LN(S)) -> [B, n_tok_e, d_out]; dt [B, T_e]
    feeds the seed attention's ROTE (model.seed_rote)."""

    cfg: ModelConfig
    tower: Tower
    d_out: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, s: jax.Array, lengths: jax.Array, dt: jax.Array) -> jax.Array:
        c, t = self.cfg, self.tower
        summary = SequenceSummary(
            n_tok=t.n_tok,
            d_out=self.d_out,
            num_heads=t.num_heads,
            n_seed=c.n_seed,
            pooling=c.pooling,
            compression=c.compression,
            skl_rank=c.skl_rank,
            gdpa=gdpa_scoring(c, c.seed_attention, t.max_len),
            kernels=c.kernels,
            rote_t_scale=c.rote_t_scale if c.seed_rote else 0.0,
            dtype=self.dtype,
            name="pool",
        )
        return summary(LayerNorm(self.dtype, name="norm")(s), lengths, dt)


class KunlunLayer(nn.Module):
    """Layer l: X [B, n_ns, d], streams {name: S_e}, summaries {name: H_e [B, n_tok_e, d]}.

    X_sum = WeightGen(X); H_e = HSP(S_e) (fresh) or cached; X' = LN(X + Wukong([X_sum ; H])),
    S_e' = StreamBlock(S_e, X_sum) for the `active` streams; the others pass through unchanged
    and join the interaction with their last summary.
    """

    cfg: ModelConfig
    towers: tuple[Tower, ...]
    active: tuple[str, ...]
    layer: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x, seqs, dts, lengths, summaries):
        c = self.cfg
        use_ffn, use_attention, fresh = layer_roles(c, self.layer)
        x_sum = WeightGen(c.n_sum, c.mlp_ratio, self.dtype, c.weight_gen_norm, name="weight_gen")(x)
        new_seqs, new_summaries = dict(seqs), dict(summaries)
        for t in self.towers:
            if t.name not in self.active:
                continue
            s = seqs[t.name]
            if fresh:
                summarize = TowerSummary(c, t, x.shape[-1], self.dtype, name=f"summary_{t.name}")
                new_summaries[t.name] = summarize(s, lengths[t.name], dts[t.name])
            block = StreamBlock(c, t, use_ffn, use_attention, self.dtype, name=f"block_{t.name}")
            new_seqs[t.name] = block(s, dts[t.name], lengths[t.name], x_sum)
        z = jnp.concatenate([x_sum, *(new_summaries[t.name] for t in self.towers)], axis=1)
        mixed = MixtureOfWukong(
            x.shape[1],
            num_experts=c.num_experts,
            partition=c.expert_partition,
            fm_rank=c.wukong_fm_rank,
            fm_tokens=c.wukong_fm_tokens,
            mlp_ratio=c.mlp_ratio,
            dtype=self.dtype,
            name="interaction",
        )(z)
        x = LayerNorm(self.dtype, name="out_norm")(x + mixed)
        return x, new_seqs, new_summaries


class LayerGroup(nn.Module):
    """`segment.group_size` consecutive Kunlun layers; the body scanned over a segment.

    carry = (X, {stream: S_e}, {stream: H_e}); dts and lengths are broadcast to every group.
    """

    cfg: ModelConfig
    towers: tuple[Tower, ...]
    segment: Segment
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, carry, dts, lengths):
        x, seqs, summaries = carry
        for i in range(self.segment.group_size):
            layer = KunlunLayer(
                self.cfg,
                self.towers,
                self.segment.active,
                self.segment.start + i,  # group sizes keep the CompSkip parity of every repeat
                self.dtype,
                name=f"layer_{i}",
            )
            x, seqs, summaries = layer(x, seqs, dts, lengths, summaries)
        carry = jax.tree.map(batch_constraint, (x, seqs, summaries))
        return carry, None


_REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole group in the backward pass
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def scanned_group(cfg: ModelConfig, repeats: int) -> type[nn.Module]:
    """LayerGroup, rematerialized per cfg.remat, scanned `repeats` times with stacked params."""
    group = LayerGroup
    if cfg.remat != "none":
        group = nn.remat(group, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=False)
    return nn.scan(
        group,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast, nn.broadcast),
        length=repeats,
        metadata_params={nn.PARTITION_NAME: "layers"},  # logical name of the stacked axis
    )


class Kunlun(nn.Module):
    """Click logits [B] from a batch (kunlun_jax.data.spec format); [B, K] for K > 1 tasks
    (`spec.tasks`, `task_logits`).

    Each stream keeps its T_e most recent events and is projected to its tower width d_e.
    """

    cfg: ModelConfig
    spec: FeatureSpec

    @property
    def towers(self) -> tuple[Tower, ...]:
        return resolve_towers(self.cfg, self.spec)

    @nn.compact
    def __call__(self, batch: Batch, *, train: bool = False) -> jax.Array:
        c = self.cfg
        dtype = jnp.dtype(c.dtype)
        towers = self.towers
        x, tokens = FeatureEmbedding(
            self.spec, c.d_model, dtype, c.vocab_multiple, name="embedding"
        )(batch)
        seqs, dts, lengths = {}, {}, {}
        for t in towers:
            raw = batch["seqs"][t.name]
            lengths[t.name] = jnp.minimum(raw["length"], t.max_len).astype(jnp.int32)
            dts[t.name] = real_times(raw["dt"][:, : t.max_len], lengths[t.name])
            s = tokens[t.name][:, : t.max_len]
            if t.d_model != c.d_model:
                s = Dense(
                    t.d_model,
                    ("embed", "mlp"),
                    use_bias=False,
                    dtype=dtype,
                    name=f"proj_{t.name}",
                )(s)
            seqs[t.name] = s
        b = x.shape[0]
        summaries = {t.name: jnp.zeros((b, t.n_tok, c.d_model), dtype) for t in towers}
        carry = (x, seqs, summaries)
        for i, segment in enumerate(layer_segments(c, towers)):
            group = scanned_group(c, segment.repeats)(
                c, towers, segment, dtype, name=f"segment_{i}"
            )
            carry, _ = group(carry, dts, lengths)
        x, seqs, summaries = carry
        # The head reads fresh summaries of the final sequences, so the last layers' sequence
        # updates reach the output (with CompSkip the last layer's own summary is a cached one).
        final = [
            TowerSummary(c, t, c.d_model, dtype, name=f"final_summary_{t.name}")(
                seqs[t.name], lengths[t.name], dts[t.name]
            ).reshape(b, -1)
            for t in towers
        ]
        features = jnp.concatenate([x.reshape(b, -1), *final], axis=-1)
        return task_logits(features, c, self.spec, train=train)
