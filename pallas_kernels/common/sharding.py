"""Running a kernel per batch shard under a device mesh.

XLA cannot partition a Pallas (Mosaic or Triton) call automatically, so under a mesh every
kernel call is wrapped in `jax.shard_map` over the mesh axes that logical `batch` maps to
(flax logical-axis rules, as set by the sharded train step): each device runs the kernel on
its own rows. Without a mesh or rules this is a plain call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
from jax.sharding import PartitionSpec


def logical_mesh_axes(name: str) -> tuple[str, ...]:
    """Mesh axes (of size > 1) that logical axis `name` maps to in the current context (the
    mesh from `jax.set_mesh`, rules from `flax.linen.logical_axis_rules`); () if none."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return ()
    axes = dict(nn.get_logical_axis_rules()).get(name) or ()
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    return tuple(a for a in axes if a in mesh.shape and mesh.shape[a] > 1)


def per_batch_shard(
    fn: Callable[..., jax.Array], *args: jax.Array | None, batched: Sequence[bool]
) -> jax.Array:
    """fn(*args) with each batched arg (leading dim B) split over the batch mesh axes and the
    others replicated; the output [B, ...] is split the same way. None args pass through."""
    axes = logical_mesh_axes("batch")
    if not axes:
        return fn(*args)
    present = [i for i, a in enumerate(args) if a is not None]

    def local(*xs):
        full = list(args)
        for i, x in zip(present, xs, strict=True):
            full[i] = x
        return fn(*full)

    spec = lambda i: PartitionSpec(axes) if batched[i] else PartitionSpec()
    return jax.shard_map(
        local,
        in_specs=tuple(spec(i) for i in present),
        out_specs=PartitionSpec(axes),
        check_vma=False,
    )(*(args[i] for i in present))
