"""Pieces shared by the baselines: the embedding layer, a masked-mean history summary, and
DIN-style target attention."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from kunlun_jax.config import ModelConfig
from kunlun_jax.data.spec import Batch, FeatureSpec, StreamSpec
from kunlun_jax.model.common import MLP, Dense, length_mask, real_times
from kunlun_jax.model.embedding import FeatureEmbedding
from kunlun_jax.model.hsp import SequenceSummary


def embed(
    cfg: ModelConfig, spec: FeatureSpec, batch: Batch
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Kunlun's FeatureEmbedding with the config's sizes (call inside a compact method):
    X [B, n_ns, d] and {stream: [B, T, d]} event tokens (padding zero), d = cfg.d_model."""
    return FeatureEmbedding(
        spec, cfg.d_model, jnp.dtype(cfg.dtype), cfg.vocab_multiple, name="embedding"
    )(batch)


def mean_summary(s: jax.Array, lengths: jax.Array, n_tok: int, name: str) -> jax.Array:
    """S [B, T, d] -> [B, n_tok, d]: the masked mean of the real events through n_tok linear
    maps (`SequenceSummary(pooling="mean")`); an empty history gives the maps' biases."""
    d = s.shape[-1]
    return SequenceSummary(n_tok, d, num_heads=1, pooling="mean", dtype=s.dtype, name=name)(
        s, lengths
    )


def tokens_with_mean_summaries(
    cfg: ModelConfig, spec: FeatureSpec, batch: Batch, n_tok: int
) -> jax.Array:
    """[X ; mean summaries] [B, n_ns + n_tok · streams, d]: the non-sequence tokens followed by
    each stream's `mean_summary` (modules `pool_<stream>` of the calling module)."""
    x, seqs = embed(cfg, spec, batch)
    pooled = [
        mean_summary(seqs[s.name], batch["seqs"][s.name]["length"], n_tok, f"pool_{s.name}")
        for s in spec.streams
    ]
    return jnp.concatenate([x, *pooled], axis=1)


def candidate_query(spec: FeatureSpec, stream: StreamSpec, x: jax.Array) -> jax.Array | None:
    """The candidate's token [B, d] in a stream's terms: the sum of the non-sequence tokens of
    the sparse features whose tables embed the stream's items and sides (a history token is
    item + side + event type), or None if the stream shares neither table."""
    names = [f for f in (stream.item_feature, stream.side_feature) if f]
    if not names:
        return None
    return sum(x[:, spec.sparse_names.index(f)] for f in names)


class TargetAttention(nn.Module):
    """DIN's activation unit: S [B, T, d], query [B, d], dt [B, T] -> [B, d].

    w_t = MLP([s_t, q, s_t - q, s_t ⊙ q, log(1 + dt_t / 1 h)]), out = Σ_{t < length} w_t s_t:
    unnormalized weights as in DIN, so the output also grows with the amount of matching history.
    The recency input (not in DIN) lets the weights decay with the event's age. Padding adds 0.
    """

    hidden: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self, s: jax.Array, query: jax.Array, dt: jax.Array, lengths: jax.Array
    ) -> jax.Array:
        q = jnp.broadcast_to(query[:, None, :], s.shape)
        dt = real_times(dt, lengths)  # padded times may be NaN / Inf
        recency = jnp.log1p(jnp.maximum(dt, 0.0) / 3600.0)[..., None].astype(s.dtype)
        unit_in = jnp.concatenate([s, q, s - q, s * q, recency], axis=-1)
        w = MLP((self.hidden,), 1, dtype=self.dtype, name="unit")(unit_in)[..., 0]
        w = jnp.where(length_mask(lengths, s.shape[1]), w, 0.0)
        return jnp.einsum("bt,btd->bd", w, s)


class LearnedQuery(nn.Module):
    """A query [B, d] from all non-sequence tokens X [B, n_ns, d], for streams that share no
    table with a candidate feature."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, n, d = x.shape
        return Dense(d, ("mlp", "embed"), dtype=self.dtype, name="query")(x.reshape(b, n * d))
