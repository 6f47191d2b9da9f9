"""Embedding layer: one table per sparse feature, a dense projection, sequence token embeddings."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from kunlun_jax.data.spec import Batch, FeatureSpec, StreamSpec
from kunlun_jax.model.common import Dense, batch_constraint, length_mask, param_with_axes
from kunlun_jax.parallel.lookup import embedding_lookup

_embed_init = nn.initializers.normal(stddev=0.05)


def padded_vocab(vocab: int, multiple: int) -> int:
    """Rows of a table for `vocab` ids: rounded up to `multiple`. Ids >= vocab are rejected at
    the batch boundary, so the padding rows are never read and never trained."""
    return -(-vocab // multiple) * multiple


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
    vocab_multiple: int = 1  # table rows rounded up to a multiple of this (even row shards)

    def _table(self, name: str, vocab: int) -> jax.Array:
        rows = padded_vocab(vocab, self.vocab_multiple)
        return self.param(
            name, param_with_axes(_embed_init, ("vocab", "embed")), (rows, self.d_model)
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
        shared_vocab = self.spec.sparse_vocab_sizes[self.spec.sparse_names.index(shared)]
        if vocab > shared_vocab:
            raise ValueError(
                f"stream {s.name!r}: {field} vocab {vocab} exceeds the shared table "
                f"{shared!r} ({shared_vocab} ids)"
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
            embedding_lookup(tables[n], sparse[:, f]) for f, n in enumerate(self.spec.sparse_names)
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
            tok = embedding_lookup(item_table, seq["item"]) + embedding_lookup(
                side_table, seq["side"]
            )
            tok = tok + type_emb[e]
            real = length_mask(seq["length"], seq["item"].shape[1])
            seqs[s.name] = batch_constraint(jnp.where(real[..., None], tok, 0.0).astype(self.dtype))
        return batch_constraint(x), seqs
