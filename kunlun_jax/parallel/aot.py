"""Ahead-of-time compile of the sharded train step for a TPU pod slice that is not attached.

With libtpu installed, `jax.experimental.topologies` describes any TPU topology (e.g.
v5p:4x4x4 = 64 chips, v6e:16x16 = 256 chips) on a CPU machine; the full train step, Pallas
kernels included (each wrapped in `shard_map`, compiled by Mosaic for the target chip), is
lowered with abstract sharded arguments and compiled by XLA:TPU, as MaxText's
`train_compile.py` does. Nothing runs: the report carries XLA's per-device memory, FLOPs,
bytes and the collectives in the program -- compiled estimates, not measurements.

    kunlun-jax compile --config base --topology v5p:4x4x4 --set mesh.fsdp=8
"""

from __future__ import annotations

import collections
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from kunlun_jax.bench.accounting import xla_cost
from kunlun_jax.bench.estimate import estimate_record
from kunlun_jax.config import Config, ConfigError
from kunlun_jax.flops import model_flops
from kunlun_jax.platform import describe_absent_tpu
from kunlun_jax.provenance import environment
from kunlun_jax.train.experiment import plan_config
from pallas_kernels.common.target import compile_target

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "pred": 1, "s8": 1, "u8": 1}
_OP = re.compile(
    r"=\s*(?P<shape>\(?[a-z0-9]+\[[^=]*?\]\S*\)?)\s+(?P<op>"
    + "|".join(COLLECTIVES)
    + r")(-start)?\("
)
_COMMENT = re.compile(r"/\*.*?\*/")  # e.g. the /*index=5*/ XLA writes inside long tuple shapes
_ARRAY = re.compile(r"([a-z0-9]+)\[([0-9,]*)\]")


def tpu_devices(topology: str) -> list[Any]:
    """Device descriptions of a TPU topology such as "v5e:2x2" or "v5p:4x4x4" (needs libtpu)."""
    from jax.experimental import topologies

    describe_absent_tpu(topology)
    try:
        desc = topologies.get_topology_desc(topology_name=topology, platform="tpu")
    except Exception as e:  # libtpu's own error types; its message says what it could not use
        raise ConfigError(
            f"--topology {topology!r} is not a TPU topology libtpu knows ({e}); use "
            "<chip>:<shape>, e.g. v5e:2x2, v5p:4x4x4, v6e:16x16"
        ) from e
    return list(desc.devices)


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
    """{op: {"count", "bytes"}} of the collectives in compiled HLO text (bytes of the result
    shapes per device; async start/done pairs counted once)."""
    out: dict[str, dict[str, int]] = collections.defaultdict(lambda: {"count": 0, "bytes": 0})
    for m in _OP.finditer(_COMMENT.sub("", hlo_text)):
        entry = out[m.group("op")]
        entry["count"] += 1
        entry["bytes"] += sum(
            _DTYPE_BYTES.get(dt, 4) * int(np.prod([int(n) for n in dims.split(",") if n]))
            for dt, dims in _ARRAY.findall(m.group("shape"))
        )
    return dict(out)


_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?(?P<name>[\w.\-]+)\s.*\{\s*$")
_BRANCHES = re.compile(
    r"branch_computations=\{(?P<list>[^}]*)\}|(?:true|false)_computation=%?(?P<one>[\w.\-]+)"
)
_REFERENCE = re.compile(r"%([\w.\-]+)")


def _computations(hlo_text: str) -> dict[str, str]:
    """{computation name: its body text} of HLO module text."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in hlo_text.splitlines():
        match = _COMPUTATION.match(line)
        if current is None and match and not line.startswith(" "):
            current = blocks.setdefault(match.group("name"), [])
        elif current is not None and line.startswith("}"):
            current = None
        elif current is not None:
            current.append(line)
    return {name: "\n".join(lines) for name, lines in blocks.items()}


def unconditional_collectives(hlo_text: str) -> dict[str, dict[str, int]]:
    """`collectives` outside every conditional branch: what each step runs for sure.

    A branch (with everything it calls) runs only on steps that take it, e.g. the extra
    rounds of the all-to-all embedding lookup, so the static totals overstate those steps.
    """
    bodies = _computations(hlo_text)
    pending = [
        name.strip().lstrip("%")
        for body in bodies.values()
        for m in _BRANCHES.finditer(body)
        for name in (m.group("list") or m.group("one")).split(",")
    ]
    conditional: set[str] = set()
    while pending:
        name = pending.pop()
        if name in conditional or name not in bodies:
            continue
        conditional.add(name)
        pending.extend(r for r in _REFERENCE.findall(bodies[name]) if r in bodies)
    return collectives("\n".join(body for name, body in bodies.items() if name not in conditional))


def mosaic_kernels(hlo_text: str) -> dict[str, int]:
    """{kernel name: count} of the Pallas Mosaic TPU kernels in compiled HLO text."""
    names = re.findall(
        r"%([A-Za-z_]\w*?)(?:\.\d+)? = [^\n]*custom_call_target=\"tpu_custom_call\"", hlo_text
    )
    return dict(collections.Counter(names))


def lower_train_step(layout: Any, example: Any, **lower_kwargs: Any) -> Any:
    """`layout`'s sharded train step lowered for abstract arguments: its state, a batch shaped
    like `example` (split over the batch axes) and a key. Call inside `layout.activate()` (and
    a `compile_target`); lower_kwargs go to `Traced.lower` (e.g. lowering_platforms)."""
    mesh = layout.plan.mesh
    state = layout.sharded_abstract_state()
    batch_sharding = layout.plan.batch_sharding()
    batch = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=batch_sharding), example
    )
    key = jax.eval_shape(lambda: jax.random.key(0))
    key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=NamedSharding(mesh, PartitionSpec()))
    return layout.train_step().trace(state, batch, key).lower(**lower_kwargs)


def compile_train_step(
    config: Config, topology: str, overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """Compiles `config`'s sharded train step for `topology`; returns the report (JSON-able).
    overrides: the `--set` items `config` was loaded with (recorded in the compare record)."""
    devices = tpu_devices(topology)
    layout, example = plan_config(config, devices)
    spec = layout.spec
    mesh = layout.plan.mesh
    with compile_target(devices[0]), layout.activate():
        compiled = lower_train_step(layout, example).compile()
    hlo = compiled.as_text()
    memory = compiled.memory_analysis()
    # The same compile as a `kunlun-jax compare` record (with a roofline step-time bound);
    # it refuses a program XLA reports no FLOPs or bytes for.
    record = estimate_record(
        compiled, config, spec, config_name=config.name, topology=topology, overrides=overrides
    )
    per_device_flops, per_device_bytes = xla_cost(compiled)
    analytic = model_flops(config.model, spec, batch_size=config.train.batch_size)
    n = len(mesh.devices.flat)
    return {
        "kind": "compiled_estimate",
        "topology": topology,
        "device_kind": devices[0].device_kind,
        "num_devices": n,
        "mesh": dict(mesh.shape),
        "config": config.name,
        "batch_size": config.train.batch_size,
        "kernels": config.model.kernels,
        "per_device_memory_bytes": {
            "argument": int(memory.argument_size_in_bytes),
            "output": int(memory.output_size_in_bytes),
            "temp": int(memory.temp_size_in_bytes),
            "alias": int(memory.alias_size_in_bytes),
            "generated_code": int(memory.generated_code_size_in_bytes),
        },
        "xla_flops_per_device": per_device_flops,
        "xla_bytes_accessed_per_device": per_device_bytes,
        "analytic_train_flops_per_step": analytic.total * config.train.batch_size,
        "xla_over_analytic": per_device_flops * n / (analytic.total * config.train.batch_size),
        "collectives_per_device": collectives(hlo),
        "collectives_every_step_per_device": unconditional_collectives(hlo),
        "mosaic_kernels": mosaic_kernels(hlo),
        "params": analytic.params,
        "unsharded_params": list(layout.plan.unsharded),
        "environment": environment(),
        "bench_record": record,
    }


def _format_collectives(ops: dict[str, dict[str, int]]) -> str:
    return (
        ", ".join(
            f"{op} x{v['count']} ({v['bytes'] / 2**20:.2f} MiB)" for op, v in sorted(ops.items())
        )
        or "none"
    )


def format_report(report: dict[str, Any]) -> str:
    """A short human-readable summary of `compile_train_step`'s report."""
    gib = 2.0**30
    mem = report["per_device_memory_bytes"]
    lines = [
        f"{report['config']} train step compiled for {report['topology']} "
        f"({report['num_devices']} x {report['device_kind']}), mesh {report['mesh']}, "
        f"global batch {report['batch_size']} (compiled estimate: nothing was run)",
        f"  per-device memory: arguments {mem['argument'] / gib:.3f} GiB, "
        f"temporaries {mem['temp'] / gib:.3f} GiB, outputs {mem['output'] / gib:.3f} GiB "
        f"(aliased with donated arguments: {mem['alias'] / gib:.3f} GiB)",
        f"  FLOPs per device per step (XLA): {report['xla_flops_per_device']:.4g}; analytic "
        f"model FLOPs per step: {report['analytic_train_flops_per_step']:.4g} "
        f"(XLA total / analytic = {report['xla_over_analytic']:.3f})",
        f"  bytes accessed per device (XLA): {report['xla_bytes_accessed_per_device']:.4g}",
        "  collectives per device: " + _format_collectives(report["collectives_per_device"]),
    ]
    every_step = report["collectives_every_step_per_device"]
    if every_step != report["collectives_per_device"]:
        lines.append(
            "  outside conditional branches (every step): " + _format_collectives(every_step)
        )
    kernels = report["mosaic_kernels"]
    lines.append(
        "  Pallas Mosaic kernels: "
        + (", ".join(f"{k} x{n}" for k, n in sorted(kernels.items())) or "none")
    )
    if report["unsharded_params"]:
        lines.append(f"  not evenly shardable, kept whole: {len(report['unsharded_params'])} dims")
    return "\n".join(lines)
