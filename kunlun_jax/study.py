"""Evaluation protocol: train configs over several seeds, report test metrics as mean ± std.

`run_study(configs, seeds, runs_dir)` trains every config once per seed with the ordinary loop
(`kunlun_jax.train.loop.train`, nothing selected on the test split: no early stopping, the final
step is evaluated), then evaluates the final checkpoint on the test split. The result is a JSON-
ready dict with per-seed metrics, their mean ± sample std (ddof = 1), forward FLOPs per example
from XLA's cost analysis, parameter counts and provenance; `markdown_table` renders it.

Seeds: seed s sets `train.seed = s` (initialization, dropout) and, for real datasets,
`data.seed = s` (the shuffling order). Synthetic data keeps its `data.seed`, which also draws
the world, so every seed sees the same dataset and the same Bayes-optimal NE.

NE is normalized by the entropy of the training split's base rate (the spec's definition).
Synthetic data has no test split: its "eval" split is a fresh stream that the loop never
selects on, and the JSON says which split was used.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from kunlun_jax.config import Config, replace, to_dict
from kunlun_jax.data.pipeline import eval_batches, first_batch, make_source
from kunlun_jax.flops import xla_flops
from kunlun_jax.provenance import environment

METRICS = ("ne", "auc", "log_loss", "calibration", "oracle_ne")
FLOPS_METHOD = "XLA cost_analysis of the jitted forward pass (CPU), divided by the batch size"


def test_split(config: Config) -> str:
    """The held-out split a study reports: "test", or "eval" for synthetic data (no test)."""
    return "eval" if config.data.source == "synthetic" else "test"


def seeded(config: Config, seed: int) -> Config:
    """`config` for seed `seed` (module docstring: which seeds change)."""
    overrides: dict[str, Any] = {"train.seed": seed}
    if config.data.source != "synthetic":
        overrides["data.seed"] = seed
    return replace(config, **overrides)


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """{"mean", "std", "n"}: the sample std (ddof = 1), NaN for fewer than 2 values."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("mean_std needs at least one value")
    std = float(x.std(ddof=1)) if x.size > 1 else math.nan
    return {"mean": float(x.mean()), "std": std, "n": int(x.size)}


def metric_keys(metrics: Mapping[str, Any]) -> list[str]:
    """The keys of `metrics` that are METRICS: the primary task's ("ne") and the other tasks'
    ("love/ne")."""
    return [k for k in metrics if k.rsplit("/", 1)[-1] in METRICS]


def aggregate(metrics: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean ± std over runs' metrics of every METRICS entry (of every task) all of them have."""
    keys = [k for k in metric_keys(metrics[0]) if all(k in m for m in metrics)]
    return {k: mean_std([m[k] for m in metrics]) for k in keys}


def label_means(source: Any, batch_size: int = 4096) -> tuple[float, ...]:
    """Per task, the fraction of positive labels over every example of `source` (the real
    datasets have it at hand: `source.base_rates`)."""
    if (recorded := getattr(source, "base_rates", None)) is not None:
        return recorded
    total, positives = 0, 0.0
    for batch, n in eval_batches(source, min(batch_size, len(source))):
        positives += np.sum(batch["label"][:n].reshape(n, -1), axis=0, dtype=np.float64)
        total += n
    return tuple(float(p) for p in positives / total)


def model_cost(config: Config) -> dict[str, Any]:
    """{"params", "forward_flops_per_example", "flops_method"} of `config`'s model, measured on
    one eval batch of `train.batch_size` examples (padded histories)."""
    from kunlun_jax.model.factory import build_model

    source, spec = make_source(config.data, "eval")
    batch = first_batch(source, config.train.batch_size)
    model = build_model(config.model, spec)
    params = jax.eval_shape(model.init, jax.random.key(0), batch)["params"]
    params = nn.unbox(params)

    def forward(p: Any, b: Any) -> jax.Array:
        return model.apply({"params": p}, b)

    flops = xla_flops(forward, params, batch) / config.train.batch_size
    return {
        "params": int(sum(np.prod(p.shape) for p in jax.tree.leaves(params))),
        "forward_flops_per_example": flops,
        "flops_method": FLOPS_METHOD,
    }


def run_config(
    config: Config, seeds: Sequence[int], runs_dir: Path, *, progress: bool = False
) -> dict[str, Any]:
    """Trains `config` once per seed under runs_dir/<name>-seed<s>/ and evaluates each final
    checkpoint on the test split. A seed whose run directory already holds a finished run of
    the same config is not trained again (its train_wall_s is then None); an unfinished one
    with a checkpoint is resumed (train_wall_s: the resumed part; `train_or_read_back`).
    Returns the config's study entry (see `run_study`). progress: each training's progress,
    and a line on stderr as each seed is done."""
    from kunlun_jax.train.loop import evaluate_run, train_or_read_back

    split = test_split(config)
    base_rates = label_means(make_source(config.data, "train")[0])  # NE as the spec defines it
    runs = []
    for seed in seeds:
        start = time.perf_counter()
        final_eval, run_dir, trained = train_or_read_back(
            seeded(config, seed), runs_dir, f"{config.name}-seed{seed}", progress=progress
        )
        wall = time.perf_counter() - start if trained else None
        test = evaluate_run(run_dir, split, base_rates=base_rates)
        runs.append(
            {
                "seed": seed,
                "run_dir": str(run_dir),
                "test": test,
                "eval": {k: final_eval[k] for k in metric_keys(final_eval)},
                "train_wall_s": wall,
                "examples_per_sec": final_eval["examples_per_sec"],
            }
        )
        if progress:
            how = "read back" if wall is None else f"trained in {wall:.0f} s"
            print(
                f"{config.name} seed {seed}: {split} NE {test['ne']:.4f}, AUC "
                f"{test['auc']:.4f} ({how}): {run_dir}",
                file=sys.stderr,
                flush=True,
            )
    return {
        "config": config.name,
        "arch": config.model.arch,
        "split": split,
        "steps": config.train.steps,
        "batch_size": config.train.batch_size,
        "seeds": list(seeds),
        **model_cost(config),
        "summary": aggregate([r["test"] for r in runs]),
        "runs": runs,
        "resolved_config": to_dict(config),
    }


def run_study(
    configs: Sequence[Config], seeds: Sequence[int], runs_dir: Path, *, progress: bool = False
) -> dict[str, Any]:
    """{"kind", "environment", "seeds", "entries": [one per config]}; each entry has the
    config name, arch, split, steps, params, forward FLOPs/example, the mean ± std "summary" of
    the test metrics, the per-seed "runs" and the resolved config."""
    if not seeds:
        raise ValueError("a study needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {list(seeds)}")
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"config names must be distinct (run directories), got {names}")
    return {
        "kind": "kunlun-jax study",
        "environment": environment(),
        "seeds": list(seeds),
        "entries": [run_config(c, seeds, Path(runs_dir), progress=progress) for c in configs],
    }


def _cell(stat: Mapping[str, float] | None, digits: int = 4) -> str:
    if stat is None:
        return "–"
    if math.isnan(stat["std"]):
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def markdown_table(study: Mapping[str, Any], source: str = "") -> str:
    """A Markdown table of a study: one row per config, test metrics as mean ± std over seeds
    (the primary task's, and the NE of every other task some config predicts).

    source: a link target (e.g. the JSON's path) added as the last column when given.
    ValueError for anything but a study document.
    """
    if not isinstance(study, Mapping) or not isinstance(study.get("entries"), list):
        raise ValueError(f"{source or 'the file'} is not a study result (no 'entries' list)")
    oracle = any("oracle_ne" in e["summary"] for e in study["entries"])
    head = ["model", "config", "split", "seeds", "steps", "NE", "AUC", "log loss", "calibration"]
    head += ["Bayes-optimal NE"] if oracle else []
    other_ne = sorted({k for e in study["entries"] for k in e["summary"] if k.endswith("/ne")})
    head += [f"NE ({k.removesuffix('/ne')})" for k in other_ne]
    head += ["params", "fwd MFLOPs/example (XLA)"] + (["source"] if source else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 5 + "---:|" * (len(head) - 5)]
    for e in study["entries"]:
        s = e["summary"]
        row = [e["arch"], f"`{e['config']}`", e["split"], str(len(e["seeds"])), str(e["steps"])]
        row += [_cell(s.get(k)) for k in ("ne", "auc", "log_loss", "calibration")]
        row += [_cell(s.get("oracle_ne"))] if oracle else []
        row += [_cell(s.get(k)) for k in other_ne]
        row += [f"{e['params']:,}", f"{e['forward_flops_per_example'] / 1e6:.2f}"]
        row += [f"[json]({source})"] if source else []
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
