"""FLOPs per example of a config, and the MFU arithmetic.

Conventions (stated in every result file, `FLOPS_CONVENTION`):

* model FLOPs are matmul FLOPs (2·m·n·k) from the analytic model `kunlun_jax.flops`, on
  padded sequences (the dense compute the step runs), attention counted as a block-skipping
  kernel would (window -> min(T, 2w+1) keys, causal halves);
* one training example costs 3 × forward (forward + backward, backward = 2 × forward);
  optimizer updates, remat recompute and non-matmul ops are not counted: MFU counts the
  model's useful work, not what the hardware was made to do;
* MFU = model FLOPs per step / step time / peak FLOP/s of the devices that ran the step.

`xla` cross-check: XLA's `cost_analysis()` of the train step counts everything it executes
(dense attention scores on the plain-jnp path, norms, optimizer). Measured records take it
from the step with plain-jnp kernels, lowered before partitioning
(`train_bench.xla_train_flops`); compile-only estimates from the compiled program, per device.
It is compared with the analytic count under the dense-attention convention; their ratio
should be near 1 (a few percent above, from the ops the analytic model leaves out).

Configs without an analytic model (the baselines' `arch`) fall back to XLA's count of the
train step, divided by 3 for "forward"; the source is recorded as "xla".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from kunlun_jax.config import Config
from kunlun_jax.data.spec import FeatureSpec
from kunlun_jax.flops import FlopReport, model_flops

TRAIN_FACTOR = 3.0
FLOPS_CONVENTION = (
    "matmul FLOPs (2mnk) from kunlun_jax.flops on padded sequences, attention counted as a "
    "window/causal-aware kernel; train = 3 x forward per example (backward = 2 x forward); "
    "optimizer, remat recompute and non-matmul ops not counted"
)


def analytic_arch(config: Config) -> bool:
    """Whether `kunlun_jax.flops` models this config's architecture (Kunlun and its ablations)."""
    return getattr(config.model, "arch", "kunlun") == "kunlun"


@dataclasses.dataclass(frozen=True)
class ExampleFlops:
    """FLOPs of one example of a config.

    forward / train: per example, train = 3 × forward (module docstring);
    dense_train: train under the dense-attention count (what XLA sees on the reference path),
        None without an analytic model; params: parameter count (None without one);
    source: "analytic" or "xla".
    """

    forward: float
    train: float
    dense_train: float | None
    params: int | None
    source: str


def example_flops(
    config: Config,
    spec: FeatureSpec,
    *,
    batch_size: int | None = None,
    lengths: Mapping[str, float] | None = None,
    xla_train_per_example: float | None = None,
) -> ExampleFlops:
    """Per-example FLOPs of `config` (see module docstring).

    batch_size: amortizes per-batch matmuls (flops.model_flops); lengths: mean real events per
    stream (default padded); xla_train_per_example: XLA's count, required when the config's
    architecture has no analytic model.
    """
    if analytic_arch(config):
        report: FlopReport = model_flops(config.model, spec, lengths=lengths, batch_size=batch_size)
        dense = model_flops(
            config.model, spec, lengths=lengths, batch_size=batch_size, attention="dense"
        )
        return ExampleFlops(
            forward=report.forward,
            train=TRAIN_FACTOR * report.forward,
            dense_train=TRAIN_FACTOR * dense.forward,
            params=report.params,
            source="analytic",
        )
    if xla_train_per_example is None:
        raise ValueError(
            f"model.arch = {config.model.arch!r} has no analytic FLOP model in kunlun_jax.flops; "
            "pass XLA's count of the compiled train step (xla_train_per_example)"
        )
    return ExampleFlops(
        forward=xla_train_per_example / TRAIN_FACTOR,
        train=xla_train_per_example,
        dense_train=None,
        params=None,
        source="xla",
    )


def xla_cost(compiled: Any) -> tuple[float | None, float | None]:
    """(flops, bytes accessed) of a compiled program, per device, from XLA's cost analysis;
    None where XLA does not report one."""
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    cost = cost or {}
    flops, nbytes = cost.get("flops"), cost.get("bytes accessed")
    return (
        None if flops is None else float(flops),
        None if nbytes is None else float(nbytes),
    )


def flops_section(
    config: Config,
    spec: FeatureSpec,
    *,
    batch_size: int,
    xla_train_per_example: float | None,
    real_lengths: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The `flops` object of a bench record (schema.FLOPS): the analytic count on padded
    sequences (the MFU numerator), on `real_lengths` (mean real events per stream) when given,
    the dense-attention count, XLA's count (global, per example) and its ratio to the latter."""
    padded = example_flops(
        config, spec, batch_size=batch_size, xla_train_per_example=xla_train_per_example
    )
    real = None
    if real_lengths is not None:
        real = example_flops(config, spec, batch_size=batch_size, lengths=real_lengths).train
    ratio = None
    if xla_train_per_example is not None and padded.dense_train:
        ratio = xla_train_per_example / padded.dense_train
    return dict(
        convention=FLOPS_CONVENTION,
        source=padded.source,
        forward_per_example=padded.forward,
        train_per_example=padded.train,
        train_per_example_real_tokens=real,
        dense_train_per_example=padded.dense_train,
        xla_train_per_example=xla_train_per_example,
        xla_over_analytic_dense=ratio,
    )


def mfu(flops_per_step: float, step_seconds: float, peak_flops_per_s: float | None) -> float | None:
    """Model FLOPs utilization: flops_per_step / step_seconds / peak (None without a peak)."""
    if step_seconds <= 0:
        raise ValueError(f"step_seconds must be > 0, got {step_seconds}")
    if not peak_flops_per_s:
        return None
    return flops_per_step / step_seconds / peak_flops_per_s
