"""`kunlun-jax scaling sweep`: train a grid of configs and record NE against compute.

Each grid point is the base config plus one value per `--grid` axis (their cartesian product),
trained by `kunlun_jax.train.loop.train` in its own run directory `OUT/<point name>/` (config,
checkpoints, TensorBoard, metrics.json). A point whose run directory already has a
metrics.json is read back instead of retrained, so an interrupted sweep resumes. After every
point `OUT/sweep.json` (schema `kunlun-jax/scaling-sweep`) is rewritten.

Per point: eval NE (and AUC, log loss), forward and train FLOPs per example
(`bench.accounting`), examples seen (steps × batch), training compute
C = train FLOPs/example × examples, and the data's known entropy floor where there is one
(synthetic data: the Bayes-optimal NE of the eval split). `data` labels the dataset (e.g.
"synthetic-teacher(depth=3,width=64,noise=0.1)", "synthetic-planted", "movielens-100k"): fits
never pool different labels, and reports keep teacher-mode and real-data results apart.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kunlun_jax.bench.accounting import analytic_arch, example_flops
from kunlun_jax.bench.schema import sweep_document
from kunlun_jax.bench.train_bench import xla_train_flops
from kunlun_jax.config import Config, ConfigError, load_config, parse_override, to_dict
from kunlun_jax.data.pipeline import make_source
from kunlun_jax.outputs import write_atomically
from kunlun_jax.provenance import environment
from kunlun_jax.train.experiment import plan_config
from kunlun_jax.train.loop import train_or_read_back

SWEEP_FILE = "sweep.json"


def split_values(text: str) -> list[str]:
    """'32,64' -> ['32', '64']; commas inside [...] stay (e.g. '[16,8],[32]')."""
    values, depth, current = [], 0, ""
    for ch in text:
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += ch
    values.append(current.strip())
    if depth != 0 or any(not v for v in values):
        raise ConfigError(f"grid values {text!r} must be a comma-separated list, e.g. 32,64")
    return values


def parse_grid(specs: Sequence[str]) -> list[tuple[str, list[str]]]:
    """['model.d_model=32,64', ...] -> [('model.d_model', ['32', '64']), ...]."""
    axes = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--grid {spec!r} must look like section.key=v1,v2,...")
        parse_override(f"{key}={split_values(values)[0]}")  # same syntax checks as --set
        axes.append((key.strip(), split_values(values)))
    keys = [k for k, _ in axes]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"--grid repeats a key: {keys}")
    return axes


def grid_points(axes: Sequence[tuple[str, Sequence[str]]]) -> list[tuple[str, ...]]:
    """Cartesian product of the axes as override tuples, first axis slowest."""
    if not axes:
        return [()]
    keys = [k for k, _ in axes]
    return [
        tuple(f"{k}={v}" for k, v in zip(keys, combo, strict=True))
        for combo in itertools.product(*(vals for _, vals in axes))
    ]


def point_name(point: Sequence[str]) -> str:
    """Run directory name of a point: 'd_model=32,num_layers=1' (last key component)."""
    parts = [f"{o.partition('=')[0].split('.')[-1]}={o.partition('=')[2]}" for o in point]
    name = ",".join(parts) or "base"
    return "".join(c if c.isalnum() or c in "=,.-_" else "_" for c in name)


def data_label(config: Config) -> str:
    """What the NE was measured on (module docstring)."""
    d = config.data
    if d.source != "synthetic":
        return d.source
    s = d.synthetic
    if s.teacher:
        return (
            f"synthetic-teacher(depth={s.teacher_depth},width={s.teacher_width},"
            f"noise={s.label_noise:g})"
        )
    return "synthetic-planted"


def _xla_train_per_example(config: Config) -> float:
    """XLA's FLOPs of the train step per example (architectures without an analytic model;
    `train_bench.xla_train_flops`: lowered for abstract arguments, no state allocated), at
    the histories' stored lengths (not `data.length_buckets`), as the analytic model counts."""
    flops = xla_train_flops(*plan_config(config))
    if flops is None:
        raise RuntimeError("XLA reported no FLOPs for the train step on this backend")
    return flops / config.train.batch_size


def make_point(
    config: Config,
    config_name: str,
    overrides: Sequence[str],
    family: str,
    metrics: dict[str, Any],
    run_dir: Path,
) -> dict[str, Any]:
    """A sweep point (schema.POINT) from a trained config and its eval metrics."""
    _, spec = make_source(config.data, "train")
    tc = config.train
    xla = None if analytic_arch(config) else _xla_train_per_example(config)
    flops = example_flops(config, spec, batch_size=tc.batch_size, xla_train_per_example=xla)
    examples = tc.steps * tc.batch_size
    return dict(
        name=run_dir.name,
        family=family,
        data=data_label(config),
        config_name=config_name,
        overrides=list(overrides),
        config=to_dict(config),
        num_layers=config.model.num_layers,
        d_model=config.model.d_model,
        params=flops.params,
        forward_flops_per_example=flops.forward,
        train_flops_per_example=flops.train,
        flops_source=flops.source,
        examples=examples,
        train_compute=flops.train * examples,
        ne=float(metrics["ne"]),
        auc=metrics.get("auc"),
        log_loss=metrics.get("log_loss"),
        floor_ne=metrics.get("oracle_ne"),
        run_dir=str(run_dir),
        environment=metrics.get("environment") or environment(),
    )


def run_sweep(
    config_name: str,
    overrides: Sequence[str],
    axes: Sequence[tuple[str, Sequence[str]]],
    out_dir: Path,
    *,
    family: str | None = None,
    workers: int = 1,
    log: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Trains every grid point (module docstring); returns the sweep document.

    workers: points trained at once in threads. On a CPU, small points are compile-bound and
    XLA compiles release the GIL, so 2 workers use 2 cores; on an accelerator keep 1 (the
    points would share the devices and time each other's steps).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    points = grid_points(axes)
    configs = [load_config(config_name, [*overrides, *p]) for p in points]  # fail fast
    lock = threading.Lock()
    done: dict[int, dict[str, Any]] = {}

    def run_point(i: int) -> None:
        point, config = points[i], configs[i]
        name = point_name(point)
        metrics, run_dir, trained = train_or_read_back(config, out_dir, name)
        how = "" if trained else "already trained, "
        log(f"[{i + 1}/{len(points)}] {name}: {how}NE {metrics['ne']:.4f}")
        fam = family or getattr(config.model, "arch", "kunlun")
        point_doc = make_point(config, config_name, [*overrides, *point], fam, metrics, run_dir)
        with lock:
            done[i] = point_doc
            doc = sweep_document([done[k] for k in sorted(done)])
            write_atomically(out_dir / SWEEP_FILE, json.dumps(doc, indent=1))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(run_point, range(len(points))))  # re-raises a point's error
    return sweep_document([done[k] for k in sorted(done)])
