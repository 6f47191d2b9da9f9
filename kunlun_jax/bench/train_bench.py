"""`kunlun-jax bench`: train-step throughput, step time, MFU and memory of a config.

Protocol (what the numbers mean):

1. `build_experiment(config)` (model, optimizer, initial state, data), exactly as training;
2. `distinct_batches` batches are drawn from the training iterator, validated and put on the
   device before timing, then cycled: the data pipeline is not timed;
3. the step from `step.compile_train_step` is compiled (timed as compile_s; the record's
   notes say which implementation each attention-shaped op took, `common.dispatch`), run
   `warmup` times untimed, then `steps` times, each step timed to `jax.block_until_ready`;
4. with `profile`, `profile_steps` more steps (untimed) run under `jax.profiler`, traced into
   `<profile>/<variant>/` for xprof (`xprof --logdir DIR`) or TensorBoard's profile plugin;
5. after every variant has run, the matmul and copy ceilings are measured in the same
   process (`ceilings.measure_ceilings`; after, so they do not raise the device's peak memory).

MFU = model train FLOPs per step / median step time / (devices × peak), against the published
peak (`roofline.table_peak`, none for a CPU) and against the measured matmul (FLOP
conventions: `accounting`).

The MFU ablation (`ablation_variants`) benches the config as given, then once per technique
with only that technique switched off: the Pallas GDPA/attention kernels (flipped between
`model.kernels` backends; skipped on CPU, where Pallas runs in interpret mode), HSP (mean
pooling instead), SWA (full attention instead of the window), CompSkip, and event-level
personalization. A technique already off in the config is skipped with a note.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from kunlun_jax.bench.accounting import analytic_arch, flops_section, mfu
from kunlun_jax.bench.ceilings import Ceilings, StepTimes, measure_ceilings
from kunlun_jax.bench.roofline import table_peak
from kunlun_jax.bench.step import compile_train_step, compiled_devices, memory_analysis
from kunlun_jax.config import Config, ConfigError, load_config, to_dict
from kunlun_jax.model.towers import resolve_towers
from kunlun_jax.parallel.aot import lower_train_step
from kunlun_jax.provenance import environment
from kunlun_jax.train.experiment import Layout, build_experiment, plan_training
from kunlun_jax.train.profiling import profile_options, trace_dir
from pallas_kernels.common import dispatch


@dataclasses.dataclass(frozen=True)
class Variant:
    """One benchmarked variant of the base config: a label and the overrides it adds."""

    name: str
    overrides: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class BenchOptions:
    """steps: timed steps; warmup: untimed steps after the compile; distinct_batches: batches
    cycled; notes: caveats copied into every record (e.g. "shared, loaded CPU"); profile: a
    folder for device traces of `profile_steps` untimed steps after the timed ones (None:
    no trace)."""

    steps: int = 20
    warmup: int = 3
    distinct_batches: int = 4
    notes: tuple[str, ...] = ()
    profile: Path | None = None
    profile_steps: int = 3

    def __post_init__(self) -> None:
        for name in ("steps", "distinct_batches", "profile_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")


def kernel_variants(backends: Sequence[str]) -> list[Variant]:
    """One variant per `model.kernels` backend (e.g. reference, pallas)."""
    return [Variant(f"kernels={b}", (f"model.kernels={b}",)) for b in backends]


def ablation_variants(config: Config, platform: str) -> tuple[list[Variant], list[str]]:
    """(variants, notes): the config as given, then each technique switched off (module doc).

    notes: the techniques skipped and why.
    """
    m = config.model
    if m.arch != "kunlun":
        raise ConfigError(
            f"--ablate switches Kunlun's techniques; model.arch = {m.arch!r} has none of them "
            "(bench it without --ablate)"
        )
    variants, notes = [Variant("baseline")], []
    if platform == "cpu":
        notes.append("gdpa_kernel skipped: Pallas runs in interpret mode on CPU (not timed)")
    else:
        other = "reference" if m.kernels != "reference" else "pallas"
        variants.append(Variant(f"kernels={other}", (f"model.kernels={other}",)))
    if m.pooling == "hsp":
        variants.append(Variant("-hsp (mean pooling)", ("model.pooling=mean",)))
    else:
        notes.append(f"hsp skipped: model.pooling is already {m.pooling!r}")
    windows = [f"model.streams.{s}.window=0" for s, t in m.streams.items() if t.window > 0]
    if m.window > 0 or windows:
        variants.append(Variant("-swa (full attention)", ("model.window=0", *windows)))
    else:
        notes.append("swa skipped: attention is already full (model.window = 0)")
    for field in ("compskip", "event_personalization"):
        if getattr(m, field):
            variants.append(Variant(f"-{field}", (f"model.{field}=false",)))
        else:
            notes.append(f"{field} skipped: model.{field} is already false")
    return variants, notes


@dataclasses.dataclass
class Measurement:
    """What one variant's run measured, before the shared ceilings are known."""

    config: Config
    variant: Variant
    overrides: tuple[str, ...]
    times: StepTimes
    compile_s: float
    final_loss: float
    batch_size: int
    num_devices: int
    flops: dict[str, Any]
    memory: dict[str, Any]
    notes: list[str]


def _real_lengths(config: Config, spec: Any, batches: Sequence[Any]) -> dict[str, float]:
    """Mean real events per tower over `batches`: E[min(length, T_e)]."""
    return {
        t.name: float(
            np.mean([np.minimum(b["seqs"][t.name]["length"], t.max_len) for b in batches])
        )
        for t in resolve_towers(config.model, spec)
    }


def xla_train_flops(layout: Layout, example: Any) -> float | None:
    """XLA's FLOPs of one train step over the global batch shaped like `example` (None where
    XLA reports none). Abstract: nothing is allocated, `layout` need not be materialized.

    Counted on the step with plain-jnp kernels (`model.kernels = "reference"`; XLA's cost
    analysis counts nothing inside Pallas calls, jax drops their cost estimates on GPU),
    lowered for the same mesh and analysed before partitioning, so every operation counts once:
    a compiled program's per-device count times the devices also counts the work each device
    repeats (e.g. the optimizer's update of replicated weights) once per device."""
    if layout.config.model.kernels != "reference":  # else already plain jnp: no second plan
        model = dataclasses.replace(layout.config.model, kernels="reference")
        config = dataclasses.replace(layout.config, model=model)
        layout = plan_training(config, layout.spec, example, list(layout.plan.mesh.devices.flat))
    with layout.activate():
        lowered = lower_train_step(layout, example)
    flops = (lowered.cost_analysis() or {}).get("flops")
    return None if flops is None else float(flops)


def _flops(config: Config, spec: Any, batches: Sequence[Any], xla_step: float | None) -> dict:
    """The record's flops section from XLA's count of one step over the global batch."""
    batch_size = config.train.batch_size
    xla = None if xla_step is None else xla_step / batch_size
    lengths = _real_lengths(config, spec, batches) if analytic_arch(config) else None
    return flops_section(
        config, spec, batch_size=batch_size, xla_train_per_example=xla, real_lengths=lengths
    )


def _device_peak() -> int | None:
    """The largest `peak_bytes_in_use` of the local devices since the process started (None
    where the devices report none, e.g. CPU)."""
    stats = [d.memory_stats() or {} for d in jax.local_devices()]
    if not all("peak_bytes_in_use" in s for s in stats):
        return None
    return max(int(s["peak_bytes_in_use"]) for s in stats)


def _memory(compiled: Any, peak_before: int | None) -> dict[str, Any]:
    """The compiled step's memory; peak from the devices' own counter where this measurement
    raised it above `peak_before` (the counter only grows over a process: a variant that
    peaked lower than an earlier one cannot be read from it), else XLA's `memory_analysis`."""
    analysis = memory_analysis(compiled)
    peak = _device_peak()
    if peak is not None and (peak_before is None or peak > peak_before):
        source = "memory_stats"
    else:
        peak, source = analysis["peak_bytes"], "memory_analysis"
    return dict(
        peak_bytes=peak,
        peak_source=source,
        **{k: v for k, v in analysis.items() if k != "peak_bytes"},
    )


def measure(
    config: Config, variant: Variant, overrides: Sequence[str], options: BenchOptions
) -> Measurement:
    """Times `config`'s train step (protocol: module docstring)."""
    peak_before = _device_peak()
    exp = build_experiment(config)
    batches = [next(exp.data_iter) for _ in range(options.distinct_batches)]
    device_batches = [exp.device_batch(b) for b in batches]  # checked (validate_batch)
    total = options.warmup + options.steps
    base = jax.random.key(config.train.seed + 1)
    rngs = [jax.random.fold_in(base, i) for i in range(total)]

    start = time.perf_counter()
    with dispatch.recording() as ran:  # which implementation every attention-shaped op took
        step = compile_train_step(exp, device_batches[0], rngs[0])
    compile_s = time.perf_counter() - start
    n_dev = len(compiled_devices(step))

    state, seconds, metrics = exp.state, [], None
    with exp.activate():
        for i in range(total):
            t0 = time.perf_counter()
            state, metrics = step(state, device_batches[i % len(device_batches)], rngs[i])
            jax.block_until_ready((state, metrics))
            if i >= options.warmup:
                seconds.append(time.perf_counter() - t0)

    final_loss = float(metrics["loss"])
    traced = dispatch.describe(ran) or "none"
    notes = [*options.notes, f"kernels traced (model.kernels={config.model.kernels}): {traced}"]
    if options.profile is not None:
        variant_dir = re.sub(r"[^\w.=+-]+", "_", variant.name).strip("_")
        log_dir = trace_dir(options.profile / variant_dir)
        with exp.activate(), jax.profiler.trace(str(log_dir), profiler_options=profile_options()):
            for i in range(total, total + options.profile_steps):
                with jax.profiler.StepTraceAnnotation("train", step_num=i):
                    batch = device_batches[i % len(device_batches)]
                    state, metrics = step(state, batch, jax.random.fold_in(base, i))
            jax.block_until_ready((state, metrics))
        notes.append(
            f"device trace of {options.profile_steps} untimed steps after the timed ones: "
            f"xprof --logdir {log_dir}"
        )
    platform = jax.devices()[0].platform
    if platform == "cpu" and n_dev > 1:
        notes.append(
            f"{n_dev} simulated CPU devices share the host's cores: MFU divides by {n_dev} x "
            "a ceiling measured on one of them, so it understates the host's utilization"
        )
    if platform == "cpu" and config.model.kernels == "pallas":
        notes.append("model.kernels=pallas on CPU runs the kernels in interpret mode: not a speed")
    if platform != "cpu" and config.model.dtype != "bfloat16":
        notes.append(f"model.dtype={config.model.dtype}: MFU is against the bf16 peak")
    return Measurement(
        config=config,
        variant=variant,
        overrides=tuple(overrides),
        times=StepTimes(tuple(seconds)),
        compile_s=compile_s,
        final_loss=final_loss,
        batch_size=config.train.batch_size,
        num_devices=n_dev,
        flops=_flops(config, exp.spec, batches, xla_train_flops(exp, device_batches[0])),
        memory=_memory(step, peak_before),
        notes=notes,
    )


def to_record(
    m: Measurement, ceilings: Ceilings, options: BenchOptions, config_name: str
) -> dict[str, Any]:
    """A "measured" bench record (schema.RECORD) from one measurement and the run's ceilings."""
    env = environment()
    peak = table_peak(env["device_kind"])
    notes = list(m.notes)
    if peak is None:
        notes.append(
            f"no published peak for {env['device_kind']!r}: MFU only against the "
            f"{ceilings.matmul_dtype} matmul measured in the same run"
        )
    flops_per_step = m.flops["train_per_example"] * m.batch_size
    median = m.times.median
    table_flops = peak.bf16_tflops * 1e12 * m.num_devices if peak else None
    real = m.flops["train_per_example_real_tokens"]
    matmul_flops = ceilings.matmul_tflops * 1e12 * m.num_devices
    return dict(
        kind="measured",
        name=f"{m.config.name} {m.variant.name}",
        variant=m.variant.name,
        config_name=config_name,
        overrides=list(m.overrides),
        config=to_dict(m.config),
        environment=env,
        batch_size=m.batch_size,
        num_devices=m.num_devices,
        flops=m.flops,
        timing=dict(
            steps=options.steps,
            warmup=options.warmup,
            distinct_batches=options.distinct_batches,
            compile_s=m.compile_s,
            median_s=median,
            p10_s=m.times.p10,
            p90_s=m.times.p90,
            examples_per_sec=m.batch_size / median,
            final_loss=m.final_loss,
        ),
        ceilings=dataclasses.asdict(ceilings),
        table_peak=None if peak is None else dataclasses.asdict(peak),
        memory=m.memory,
        mfu=dict(
            vs_table_peak=mfu(flops_per_step, median, table_flops),
            vs_measured_matmul=mfu(flops_per_step, median, matmul_flops),
            vs_table_peak_real_tokens=None
            if real is None
            else mfu(real * m.batch_size, median, table_flops),
            vs_measured_matmul_real_tokens=None
            if real is None
            else mfu(real * m.batch_size, median, matmul_flops),
        ),
        notes=notes,
    )


def run_bench(
    config_name: str,
    overrides: Sequence[str],
    variants: Sequence[Variant],
    options: BenchOptions,
    *,
    ceilings: Ceilings | None = None,
    log: Any = print,
) -> list[dict[str, Any]]:
    """Benches every variant of `config_name` + `overrides`; one record each.

    ceilings: reuse already measured ceilings (tests); measured after the variants otherwise.
    """
    measurements = []
    for v in variants:
        all_overrides = (*overrides, *v.overrides)
        config = load_config(config_name, all_overrides)
        m = measure(config, v, all_overrides, options)
        log(
            f"{config.name} {v.name}: {m.batch_size / m.times.median:,.0f} examples/s, "
            f"median step {m.times.median * 1e3:.2f} ms (compile {m.compile_s:.1f} s)"
        )
        measurements.append(m)
    ceilings = ceilings or measure_ceilings()
    log(
        f"ceilings: {ceilings.matmul_dtype} matmul {ceilings.matmul_tflops:.3g} TFLOP/s, "
        f"copy {ceilings.copy_gbps:.3g} GB/s"
    )
    return [to_record(m, ceilings, options, config_name) for m in measurements]
