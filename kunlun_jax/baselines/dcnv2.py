"""DCNv2 (Wang et al., 2021): a full-rank cross network stacked under a deep MLP."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from kunlun_jax.baselines.common import tokens_with_mean_summaries
from kunlun_jax.config import ModelConfig
from kunlun_jax.data.spec import Batch, FeatureSpec
from kunlun_jax.model.common import Dense, task_logits


class CrossNetwork(nn.Module):
    """x0 [B, D] -> [B, D]: x_{l+1} = x0 ⊙ (W_l x_l + b_l) + x_l for l < num_layers.

    rank = 0: full D x D matrices W_l; rank r > 0: low-rank W_l = U_l V_l (D x r, r x D).
    """

    num_layers: int
    rank: int = 0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x0: jax.Array) -> jax.Array:
        x, width = x0, x0.shape[-1]
        for i in range(self.num_layers):
            h = x
            if self.rank:
                h = Dense(self.rank, ("embed", "mlp"), False, self.dtype, name=f"down_{i}")(h)
            h = Dense(width, ("mlp", "embed"), dtype=self.dtype, name=f"cross_{i}")(h)
            x = x0 * h + x
        return x


class DCNv2(nn.Module):
    """Click logits [B]: MLP(Cross([X flattened ; mean-pooled histories])).

    Reads model.d_model (embedding width d), num_layers (cross layers), head_hidden (deep MLP
    widths), dropout, dtype. Each stream is summarized by one token: the linear map of the
    masked mean of its events (all `spec` events kept). Input width D = (n_ns + streams) · d.
    """

    cfg: ModelConfig
    spec: FeatureSpec

    @nn.compact
    def __call__(self, batch: Batch, *, train: bool = False) -> jax.Array:
        c, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
        z = tokens_with_mean_summaries(c, self.spec, batch, 1)
        x0 = z.reshape(z.shape[0], -1)
        h = CrossNetwork(c.num_layers, dtype=dtype, name="cross")(x0)
        return task_logits(h, c, self.spec, train=train, name="deep")
