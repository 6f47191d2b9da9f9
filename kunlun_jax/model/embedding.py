"""Embedding layer: one table per sparse feature, a dense projection, sequence token embeddings."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from kunlun_jax.data.spec import Batch, FeatureSpec, StreamSpec
from kunlun_jax.model.common import Dense, length_mask, param_with_axes

_embed_init = nn.initializers.normal(stddev=0.05)


class FeatureEmbedding(nn.Module):
    """Non-sequence tokens X [B, n_ns, d] and per-stream event tokens [B, T_e, d].

    n_ns = number of sparse features (+1 dense token when num_dense > 0). A stream's item and
    side ids share the table of the sparse feature named by `item_feature` / `side_feature`
    (e.g. the candidate's item id), else use their own. Each event token is
    item + side + a learned event-stream (event type) vector; padded positions are zeroed.
    """

    spec: FeatureSpec
    d_model: int
    dtype: jnp.dtype = jnp.float32

    def _table(self, name: str, vocab: int) -> jax.Array:
        return self.param(
            name, param_with_axes(_embed_init, ("vocab", "embed")), (vocab, self.d_model)
        )

    def _stream_table(
        self, s: StreamSpec, field: str, shared: str, vocab: int, tables: dict[str, jax.Array]
    ) -> jax.Array:
        if not shared:
            return self._table(f"{s.name}_{field}", vocab)
        if shared not in tables:
            raise ValueError(
                f"stream {s.name!r}: {field}_feature {shared!r} is not a sparse feature; "
                f"sparse features are {list(self.spec.sparse_names)}"
            )
        if vocab > tables[shared].shape[0]:
            raise ValueError(
                f"stream {s.name!r}: {field} vocab {vocab} exceeds the shared table "
                f"{shared!r} ({tables[shared].shape[0]} rows)"
            )
        return tables[shared]

    @nn.compact
    def __call__(self, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        tables = {
            name: self._table(name, vocab)
            for name, vocab in zip(
                self.spec.sparse_names, self.spec.sparse_vocab_sizes, strict=True
            )
        }
        sparse = batch["sparse"]
        tokens = [
            jnp.take(tables[n], sparse[:, f], axis=0) for f, n in enumerate(self.spec.sparse_names)
        ]
        if self.spec.num_dense > 0:
            dense = batch["dense"].astype(jnp.float32)
            tokens.append(Dense(self.d_model, ("dense", "embed"), name="dense_proj")(dense))
        x = jnp.stack(tokens, axis=1).astype(self.dtype)

        type_emb = self.param(
            "event_type",
            param_with_axes(_embed_init, (None, "embed")),
            (len(self.spec.streams), self.d_model),
        )
        seqs = {}
        for e, s in enumerate(self.spec.streams):
            item_table = self._stream_table(s, "item", s.item_feature, s.item_vocab_size, tables)
            side_table = self._stream_table(s, "side", s.side_feature, s.side_vocab_size, tables)
            seq = batch["seqs"][s.name]
            tok = jnp.take(item_table, seq["item"], axis=0) + jnp.take(
                side_table, seq["side"], axis=0
            )
            tok = tok + type_emb[e]
            real = length_mask(seq["length"], seq["item"].shape[1])
            seqs[s.name] = jnp.where(real[..., None], tok, 0.0).astype(self.dtype)
        return x, seqs
