"""Embedding lookup from a row-sharded table without gathering the table.

XLA's automatic partitioning of a gather from a row-sharded table sometimes all-gathers the
whole table (it did for history lookups, where there are more ids than rows per shard).
These lookups never do. Two methods, chosen by `lookup_method` (config `mesh.lookup`):

- "reduce_scatter" (default): inside `shard_map`, the ids of a vocab group are all-gathered
  (small), each device reads the rows it owns (others give zero), and a reduce-scatter returns
  each device's rows of the result. Per device that moves G x its [n, D] activations for a
  group of G devices: the traffic grows with the group.
- "all_to_all": each device deduplicates its ids, routes each unique id to the device owning
  its row (an all-to-all of [G, C] ids, C = capacity x n / G slots per destination), the owners
  read the rows and a second all-to-all brings them back: about capacity x n x D per device,
  whatever G. A step where some device has more than C unique ids for one owner runs extra
  rounds (exact for any ids; the round count is a mesh-wide maximum, so all devices agree).
  Needs every vocab axis to also split the batch; otherwise the reduce-scatter method runs.

The backward passes are the transposes (all-to-alls, local scatter-adds into owned rows).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from collections.abc import Iterator
from typing import Literal

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from pallas_kernels.common.sharding import logical_mesh_axes

Method = Literal["reduce_scatter", "all_to_all"]
METHODS: tuple[str, ...] = ("reduce_scatter", "all_to_all")


@dataclasses.dataclass(frozen=True)
class LookupMethod:
    method: Method = "reduce_scatter"
    capacity: float = 2.0  # all_to_all: slots per destination = capacity x ids / group size


_METHOD: contextvars.ContextVar[LookupMethod | None] = contextvars.ContextVar(
    "lookup_method", default=None
)


@contextlib.contextmanager
def lookup_method(method: Method, capacity: float = 2.0) -> Iterator[None]:
    """Lookups traced inside use `method` (see the module docstring)."""
    if method not in METHODS:
        raise ValueError(f"unknown lookup method {method!r}; choose one of {list(METHODS)}")
    if not capacity > 0:
        raise ValueError(f"lookup capacity must be > 0, got {capacity}")
    token = _METHOD.set(LookupMethod(method, float(capacity)))
    try:
        yield
    finally:
        _METHOD.reset(token)


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
    config = _METHOD.get() or LookupMethod()
    if config.method == "all_to_all" and shared and not others:
        group = math.prod(mesh_shape[a] for a in shared)
        local = all_to_all_body(shared, group, config.capacity, tuple(mesh_shape))
    else:
        local = reduce_scatter_body(vocab_axes, shared, others)
    return jax.shard_map(
        local,
        in_specs=(PartitionSpec(vocab_axes, None), PartitionSpec(batch_axes or None)),
        out_specs=PartitionSpec(batch_axes or None),
        check_vma=False,
    )(table, ids)


def _owned_rows(rows: jax.Array, ids: jax.Array, first_row: jax.Array) -> jax.Array:
    """rows[ids - first_row] [..., D] where this device owns the id, else 0 (ids < 0: none)."""
    mine = ids - first_row
    owned = (ids >= 0) & (mine >= 0) & (mine < rows.shape[0])
    out = jnp.take(rows, jnp.clip(mine, 0, rows.shape[0] - 1), axis=0)
    return jnp.where(owned[..., None], out, jnp.zeros((), rows.dtype))


def reduce_scatter_body(vocab_axes, shared, others):
    """Per-device body of the reduce-scatter method: rows [R, D], ids [n, ...] local."""

    def local(rows: jax.Array, ids: jax.Array) -> jax.Array:
        if shared:  # every device of a vocab group needs the group's ids
            ids = jax.lax.all_gather(ids, shared, axis=0, tiled=True)
        out = _owned_rows(rows, ids, jax.lax.axis_index(vocab_axes) * rows.shape[0])
        if others:
            out = jax.lax.psum(out, others)
        if shared:
            out = jax.lax.psum_scatter(out, shared, scatter_dimension=0, tiled=True)
        return out

    return local


class _Routing:
    """Where each of a device's ids goes in the all-to-all lookup (see `all_to_all_body`)."""

    def __init__(self, flat: jax.Array, group: int, slots: int, num_rows: int, mesh_axes):
        n = flat.shape[0]
        self.group, self.slots = group, slots
        # Unique ids, ascending, then -1 padding; `which` maps each id to its unique entry.
        order = jnp.argsort(flat)
        ordered = flat[order]
        first = jnp.concatenate([jnp.ones((1,), bool), ordered[1:] != ordered[:-1]])
        unique_index = jnp.cumsum(first) - 1
        self.which = jnp.zeros((n,), jnp.int32).at[order].set(unique_index)
        self.unique = jnp.full((n,), -1, jnp.int32).at[unique_index].set(ordered)
        # Owners are non-decreasing over the sorted unique ids: rank = position within owner.
        self.owner = jnp.where(self.unique >= 0, self.unique // num_rows, group)
        counts = jnp.zeros((group + 1,), jnp.int32).at[self.owner].add(1)[:group]
        starts = jnp.cumsum(counts) - counts
        self.rank = jnp.arange(n) - starts[jnp.minimum(self.owner, group - 1)]
        self.rounds = (jax.lax.pmax(jnp.max(counts), mesh_axes) + slots - 1) // slots

    def slots_of(self, r: int) -> tuple[jax.Array, jax.Array]:
        """(in_round [n] bool, slot [n] in [0, G x C], G x C = not sent) of round r."""
        owned = (self.owner < self.group) & (self.rank >= r * self.slots)
        in_round = owned & (self.rank < (r + 1) * self.slots)
        slot = self.owner * self.slots + self.rank - r * self.slots
        return in_round, jnp.where(in_round, slot, self.group * self.slots)

    def scatter(self, values: jax.Array, slot: jax.Array, fill) -> jax.Array:
        """values [n, ...] placed at `slot` of a [G, C, ...] send buffer (`fill` elsewhere)."""
        shape = (self.group * self.slots, *values.shape[1:])
        buffer = jnp.full(shape, fill, values.dtype).at[slot].set(values, mode="drop")
        return buffer.reshape(self.group, self.slots, *values.shape[1:])

    def over_rounds(self, step, state):
        """state = step(r, state) for round 0, then, under a `lax.cond`, in a `lax.while_loop`
        for the further rounds needed (`rounds` is a mesh-wide maximum, so every device runs
        the same collectives): the program holds one extra round however many the worst case
        needs, and the usual step's extra rounds sit in a branch (`aot.unconditional_...`)."""

        def further(state):
            return jax.lax.while_loop(
                lambda carry: carry[0] < self.rounds,
                lambda carry: (carry[0] + 1, step(carry[0], carry[1])),
                (jnp.int32(1), state),
            )[1]

        return jax.lax.cond(self.rounds > 1, further, lambda s: s, step(0, state))


def all_to_all_body(axes, group: int, capacity: float, mesh_axes):
    """Per-device body of the all-to-all method over the vocab group `axes` (G = group
    devices, each owning R consecutive rows): rows [R, D], ids [n, ...] -> [n, ..., D].

    Unique ids are sent in rounds of C = capacity x n / G slots per destination. Round 1
    always runs; further rounds run in a `lax.while_loop` (its trip count a mesh-wide maximum,
    so every device agrees) only while some device has more than r x C unique ids for one
    owner, up to the worst case (all n ids owned by one device), so any ids are exact. A
    `custom_vjp` keeps no per-round residuals: the backward recomputes the routing from the ids
    and sends each unique id's summed cotangent to its owner in the same rounds.
    """

    def local(rows: jax.Array, ids: jax.Array) -> jax.Array:
        flat = ids.reshape(-1).astype(jnp.int32)
        n, num_rows = flat.shape[0], rows.shape[0]
        slots = min(n, max(1, math.ceil(capacity * n / group)))

        def routing(flat):
            return _Routing(flat, group, slots, num_rows, mesh_axes)

        def first_row():
            return jax.lax.axis_index(axes) * num_rows

        @jax.custom_vjp
        def lookup(rows, flat):
            plan = routing(flat)

            def fetch(r, found):
                in_round, slot = plan.slots_of(r)
                asked = jax.lax.all_to_all(plan.scatter(plan.unique, slot, -1), axes, 0, 0)
                answers = jax.lax.all_to_all(_owned_rows(rows, asked, first_row()), axes, 0, 0)
                got = jnp.take(answers.reshape(group * slots, -1), slot, axis=0, mode="clip")
                return jnp.where(in_round[:, None], got, found)

            found = plan.over_rounds(fetch, jnp.zeros((n, rows.shape[1]), rows.dtype))
            return found[plan.which]

        def lookup_fwd(rows, flat):
            return lookup(rows, flat), (rows, flat)

        def lookup_bwd(residuals, grad):
            rows, flat = residuals
            plan = routing(flat)
            grad_unique = jnp.zeros_like(grad).at[plan.which].add(grad)

            def send(r, grad_rows):
                _, slot = plan.slots_of(r)
                asked = jax.lax.all_to_all(plan.scatter(plan.unique, slot, -1), axes, 0, 0)
                sent = jax.lax.all_to_all(plan.scatter(grad_unique, slot, 0), axes, 0, 0)
                local_row = jnp.where(asked >= 0, asked - first_row(), num_rows)
                return grad_rows.at[local_row].add(sent, mode="drop")

            return plan.over_rounds(send, jnp.zeros_like(rows)), None

        lookup.defvjp(lookup_fwd, lookup_bwd)
        return lookup(rows, flat).reshape(*ids.shape, rows.shape[1])

    return local
