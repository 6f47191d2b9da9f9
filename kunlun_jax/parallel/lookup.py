"""Embedding lookup from a row-sharded table without gathering the table.

XLA's automatic partitioning of a gather from a row-sharded table sometimes all-gathers the
whole table (it did for history lookups, where there are more ids than rows per shard).
This lookup never does: inside `shard_map`, the ids of a vocab group are all-gathered (small),
each device reads the rows it owns (others give zero), and a reduce-scatter returns each
device's rows of the result. The backward pass is the transpose: a local scatter-add into
the device's own rows. Communication: ids plus the [B, ..., D] activations, never V x D.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from pallas_kernels.common.sharding import logical_mesh_axes


def embedding_lookup(table: jax.Array, ids: jax.Array) -> jax.Array:
    """table [V, D] (rows split over logical `vocab`), ids int [B, ...] (split over logical
    `batch`) -> [B, ..., D]. Without a mesh, or with unsplit rows: `jnp.take`."""
    vocab_axes = logical_mesh_axes("vocab")
    mesh_shape = jax.sharding.get_abstract_mesh().shape
    # The table's own split (kunlun_jax.parallel.sharding.spec_for): trailing axes that do not
    # divide the rows are dropped.
    while vocab_axes and table.shape[0] % math.prod(mesh_shape[a] for a in vocab_axes):
        vocab_axes = vocab_axes[:-1]
    if not vocab_axes:
        return jnp.take(table, ids, axis=0)
    batch_axes = logical_mesh_axes("batch")
    shared = tuple(a for a in vocab_axes if a in batch_axes)  # axes splitting both
    others = tuple(a for a in vocab_axes if a not in batch_axes)

    def local(rows: jax.Array, idx: jax.Array) -> jax.Array:
        if shared:  # every device of a vocab group needs the group's ids
            idx = jax.lax.all_gather(idx, shared, axis=0, tiled=True)
        offset = jax.lax.axis_index(vocab_axes) * rows.shape[0]
        mine = idx - offset
        owned = (mine >= 0) & (mine < rows.shape[0])
        out = jnp.take(rows, jnp.clip(mine, 0, rows.shape[0] - 1), axis=0)
        out = jnp.where(owned[..., None], out, jnp.zeros((), rows.dtype))
        if others:
            out = jax.lax.psum(out, others)
        if shared:
            out = jax.lax.psum_scatter(out, shared, scatter_dimension=0, tiled=True)
        return out

    return jax.shard_map(
        local,
        in_specs=(PartitionSpec(vocab_axes, None), PartitionSpec(batch_axes or None)),
        out_specs=PartitionSpec(batch_axes or None),
        check_vma=False,
    )(table, ids)
