"""The compiled train step a benchmark times (the one place that builds it), and what XLA says
about it: devices, per-device memory."""

from __future__ import annotations

from typing import Any

import jax

from kunlun_jax.data.spec import Batch
from kunlun_jax.train.experiment import Experiment


def compile_train_step(exp: Experiment, batch: Batch, rng: jax.Array) -> jax.stages.Compiled:
    """`exp`'s sharded train step (`Experiment.train_step`, as training runs it), lowered and
    compiled for (exp.state, batch, rng); batch: a device batch (`exp.device_batch`).

    The result is called as `state, metrics = step(state, batch, rng)` inside
    `exp.activate()` and donates `state` (argument 0). Every benchmark gets its step here.
    """
    with exp.activate():
        return exp.train_step().lower(exp.state, batch, rng).compile()


def compiled_devices(compiled: jax.stages.Compiled) -> list[jax.Device]:
    """The devices a compiled program runs on (from its output shardings), by id."""
    devices = {d for s in jax.tree.leaves(compiled.output_shardings) for d in s.device_set}
    return sorted(devices, key=lambda d: d.id)


def memory_analysis(compiled: jax.stages.Compiled) -> dict[str, int | None]:
    """Per-device bytes of a compiled program: arguments, outputs, temporaries, aliased
    (donated) and their net peak = arguments + outputs + temporaries - aliased. All None
    where the backend reports no analysis."""
    stats: Any = compiled.memory_analysis()
    keys = ("argument", "output", "temp", "alias")
    if stats is None:
        return {f"{k}_bytes": None for k in keys} | {"peak_bytes": None}
    out = {f"{k}_bytes": int(getattr(stats, f"{k}_size_in_bytes")) for k in keys}
    out["peak_bytes"] = (
        out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"] - out["alias_bytes"]
    )
    return out
