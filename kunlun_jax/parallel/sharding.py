"""Device mesh from config, logical-axis rules, and the shardings of params, state and batches.

Every parameter carries logical axis names (`vocab`, `embed`, `mlp`, `heads`, ...; see
kunlun_jax/model); activations use `batch`. Rules map logical names to mesh axes, MaxText
style: the first rule whose mesh axes are still free wins, so `vocab` (listed first) takes
every mesh axis and an embedding table is row-sharded across all devices, while a dense
kernel's `embed` axis goes to `fsdp` and its `mlp`/`heads` axis to `model`.

A mesh axis that does not divide a dimension is dropped for that parameter (recorded in
`ShardingPlan.unsharded`), so odd shapes still compile; embedding tables are padded to
`model.vocab_multiple` rows so they always split evenly.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from kunlun_jax.config import MESH_AXES, ConfigError, MeshConfig

# (logical axis, mesh axes) in priority order. Activations: `batch`. Params: the rest.
DEFAULT_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", ("data", "fsdp", "model")),
    ("embed", ("fsdp",)),
    ("mlp", ("model",)),
    ("heads", ("model",)),
    ("experts", ("model",)),
)


def axis_rules(cfg: MeshConfig) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """DEFAULT_RULES with the entries named in `mesh.rules` replaced (new names appended)."""
    overrides = dict(cfg.rules)
    rules = [(name, tuple(overrides.pop(name, axes))) for name, axes in DEFAULT_RULES]
    return (*rules, *((name, tuple(axes)) for name, axes in overrides.items()))


def mesh_shape(cfg: MeshConfig, num_devices: int) -> dict[str, int]:
    """Axis sizes for `num_devices` devices, resolving the one -1 axis (if any)."""
    sizes = {a: getattr(cfg, a) for a in MESH_AXES}
    fixed = math.prod(n for n in sizes.values() if n != -1)
    for axis, n in sizes.items():
        if n == -1:
            if num_devices % fixed:
                raise ConfigError(
                    f"mesh: {num_devices} devices are not divisible by the fixed axes "
                    f"({fixed}); set mesh.{axis} explicitly"
                )
            sizes[axis] = num_devices // fixed
    if math.prod(sizes.values()) > num_devices:
        raise ConfigError(
            f"mesh {sizes} needs {math.prod(sizes.values())} devices but {num_devices} are "
            "available; lower mesh.data / mesh.fsdp / mesh.model"
        )
    return sizes


def make_mesh(cfg: MeshConfig, devices: Sequence[Any] | None = None) -> Mesh:
    """A ('data', 'fsdp', 'model') mesh over `devices` (default: all), Auto axis types so
    XLA's sharding propagation (GSPMD) fills in what the rules leave open."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_shape(cfg, len(devices))
    shape = tuple(sizes[a] for a in MESH_AXES)
    if jax.process_count() > 1 and math.prod(shape) != len(devices):
        raise ConfigError(
            f"mesh {sizes} uses {math.prod(shape)} of the {len(devices)} devices; with "
            f"{jax.process_count()} processes it must use all of them (a process left without "
            "one would hold no rows of the batch): make mesh.data x mesh.fsdp x mesh.model "
            f"= {len(devices)}, e.g. mesh.data = -1"
        )
    grid = np.asarray(devices[: math.prod(shape)], dtype=object).reshape(shape)
    if devices[0].platform != "cpu" and len(devices) == math.prod(shape):
        grid = _topology_aware(shape, devices, grid)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _topology_aware(shape: tuple[int, ...], devices: list[Any], fallback: np.ndarray) -> Any:
    """Devices ordered so that ICI neighbours share the inner mesh axes (jax's mesh_utils,
    splitting physical axes where a mesh axis needs it); process-major order otherwise."""
    from jax.experimental import mesh_utils

    try:
        return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    except (NotImplementedError, ValueError, AssertionError):
        return fallback


@dataclasses.dataclass(frozen=True)
class ShardingPlan:
    """How one model's state and batches are laid out on a mesh."""

    mesh: Mesh
    rules: tuple[tuple[str, tuple[str, ...]], ...]
    unsharded: tuple[str, ...]  # "param path: dim d (n) not divisible by axes" notes

    @property
    def batch_axes(self) -> tuple[str, ...]:
        return dict(self.rules).get("batch", ())

    def batch_sharding(self) -> NamedSharding:
        """Leading (batch) dimension split over the batch axes, the rest replicated."""
        return NamedSharding(self.mesh, PartitionSpec(self.batch_axes))

    def num_batch_shards(self) -> int:
        return math.prod(self.mesh.shape[a] for a in self.batch_axes)

    @property
    def unsplit_tables(self) -> tuple[str, ...]:
        """The `unsharded` notes of embedding tables split over fewer devices than their rules
        name (each says which model.vocab_multiple would split it over all of them)."""
        return tuple(note for note in self.unsharded if _TABLE_HINT in note)


# How an embedding table's note (`spec_for`) says it is split over fewer devices than it could.
_TABLE_HINT = "an embedding table split over fewer devices: set model.vocab_multiple to"


def spec_for(
    names: Sequence[str | None],
    shape: Sequence[int],
    mesh: Mesh,
    rules: Sequence[tuple[str, tuple[str, ...]]],
    notes: list[str] | None = None,
    where: str = "",
) -> PartitionSpec:
    """PartitionSpec of an array with logical axis `names` and `shape` under `rules`.

    Mesh axes whose product does not divide a dimension are dropped from the end until it does.
    """
    mesh_axes = nn.logical_to_mesh_axes(tuple(names), list(rules))
    out = []
    for d, (axes, size) in enumerate(zip(mesh_axes, shape, strict=True)):
        axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        axes = tuple(a for a in axes if mesh.shape[a] > 1)
        kept = axes
        while kept and size % math.prod(mesh.shape[a] for a in kept):
            kept = kept[:-1]
        if kept != axes and notes is not None:
            note = f"{where}: dim {d} ({size}) not divisible by mesh axes {axes}"
            if names[d] == "vocab":
                note += f"; {_TABLE_HINT} a multiple of {math.prod(mesh.shape[a] for a in axes)}"
            notes.append(note)
        out.append(kept[0] if len(kept) == 1 else (kept or None))
    return PartitionSpec(*out)


def param_specs(
    abstract_boxed: Any, mesh: Mesh, rules: Sequence[tuple[str, tuple[str, ...]]]
) -> tuple[Any, list[str]]:
    """(PartitionSpec per param, divisibility notes) for `model.init`'s boxed output."""
    notes: list[str] = []

    def one(path, leaf):
        where = jax.tree_util.keystr(path)
        if isinstance(leaf, nn.Partitioned):
            return spec_for(leaf.names, leaf.value.shape, mesh, rules, notes, where)
        return PartitionSpec()

    specs = jax.tree_util.tree_map_with_path(
        one, abstract_boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned)
    )
    return specs, notes


def like_param(leaf: Any, param: Any, spec: PartitionSpec) -> PartitionSpec:
    """Spec of an optimizer-state leaf derived from its parameter: same spec where the shapes
    agree, unsharded on dimensions the state collapses (e.g. row-wise Adagrad's [V, 1])."""
    shape = getattr(leaf, "shape", ())
    if len(shape) != len(param.shape):
        return PartitionSpec()
    padded = tuple(spec) + (None,) * (len(shape) - len(spec))
    return PartitionSpec(
        *(ax if n == m else None for ax, n, m in zip(padded, shape, param.shape, strict=True))
    )


def state_shardings(abstract_state: Any, specs: Any, mesh: Mesh) -> Any:
    """NamedShardings for a TrainState: params by `specs`; an optimizer-state leaf whose tree
    path ends with a parameter's path (optax nests param-shaped trees: mu, nu, sums) like that
    parameter (`like_param`); anything else (step counts) replicated."""
    params = {
        tuple(path): (leaf, spec)
        for (path, leaf), spec in zip(
            jax.tree_util.tree_flatten_with_path(abstract_state.params)[0],
            jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec)),
            strict=True,
        )
    }

    def opt_leaf(path, leaf):
        for k in range(len(path)):
            if (match := params.get(tuple(path[k:]))) is not None:
                return NamedSharding(mesh, like_param(leaf, *match))
        return NamedSharding(mesh, PartitionSpec())

    return abstract_state.replace(
        step=NamedSharding(mesh, PartitionSpec()),
        params=jax.tree.map(
            lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, PartitionSpec)
        ),
        opt_state=jax.tree_util.tree_map_with_path(opt_leaf, abstract_state.opt_state),
    )
