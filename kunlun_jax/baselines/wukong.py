"""Wukong (Zhang et al., 2024, arXiv 2403.02545) as a ranker: stacked Wukong layers over the
non-sequence tokens and mean-pooled history tokens."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from kunlun_jax.baselines.common import tokens_with_mean_summaries
from kunlun_jax.config import ModelConfig
from kunlun_jax.data.spec import Batch, FeatureSpec
from kunlun_jax.model.common import LayerNorm, task_logits
from kunlun_jax.model.wukong import MixtureOfWukong


class WukongRanker(nn.Module):
    """Click logits [B]: Z_0 = [X ; mean summaries] [B, n, d], Z_{i+1} = LN(Z_i + Wukong(Z_i))
    for num_layers layers, then MLP(flatten(Z_L)).

    Reads model.d_model (d), num_layers, n_tok (summary tokens per stream), num_experts (1 =
    the paper's plain Wukong layer; more = Kunlun's mixture over token partitions),
    expert_partition, wukong_fm_rank, wukong_fm_tokens, mlp_ratio, head_hidden, dropout, dtype.
    n = n_ns + n_tok · streams.
    """

    cfg: ModelConfig
    spec: FeatureSpec

    @nn.compact
    def __call__(self, batch: Batch, *, train: bool = False) -> jax.Array:
        c, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
        z = tokens_with_mean_summaries(c, self.spec, batch, c.n_tok)
        b = z.shape[0]
        for i in range(c.num_layers):
            layer = MixtureOfWukong(
                z.shape[1],
                num_experts=c.num_experts,
                partition=c.expert_partition,
                fm_rank=c.wukong_fm_rank,
                fm_tokens=c.wukong_fm_tokens,
                mlp_ratio=c.mlp_ratio,
                dtype=dtype,
                name=f"wukong_{i}",
            )
            z = LayerNorm(dtype, name=f"norm_{i}")(z + layer(z))
        return task_logits(z.reshape(b, -1), c, self.spec, train=train)
