"""DIN (Zhou et al., 2018): target attention over each history, then an MLP."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from kunlun_jax.baselines.common import LearnedQuery, TargetAttention, candidate_query, embed
from kunlun_jax.config import ModelConfig
from kunlun_jax.data.spec import Batch, FeatureSpec
from kunlun_jax.model.common import task_logits


class DIN(nn.Module):
    """Click logits [B]: MLP([X flattened ; TargetAttention(S_e, candidate) per stream]).

    Reads model.d_model (d), mlp_ratio (activation-unit hidden = mlp_ratio · d), head_hidden,
    dropout, dtype. The query of a stream is the candidate's item (+ side) token when the stream
    shares those tables (`StreamSpec.item_feature` / `side_feature`), else a learned map of all
    non-sequence tokens.
    """

    cfg: ModelConfig
    spec: FeatureSpec

    @nn.compact
    def __call__(self, batch: Batch, *, train: bool = False) -> jax.Array:
        c, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
        x, seqs = embed(c, self.spec, batch)
        b = x.shape[0]
        pooled = []
        for s in self.spec.streams:
            query = candidate_query(self.spec, s, x)
            if query is None:
                query = LearnedQuery(dtype, name=f"query_{s.name}")(x)
            raw = batch["seqs"][s.name]
            attend = TargetAttention(c.mlp_ratio * c.d_model, dtype, name=f"attention_{s.name}")
            pooled.append(attend(seqs[s.name], query, raw["dt"], raw["length"]))
        h = jnp.concatenate([x.reshape(b, -1), *pooled], axis=-1)
        return task_logits(h, c, self.spec, train=train)
