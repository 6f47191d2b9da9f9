"""The train/eval loop: run directories, progress, TensorBoard, checkpoints, final metrics."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tensorboardX import SummaryWriter
from tqdm.auto import tqdm

from kunlun_jax.config import Config, ConfigError, from_dict, to_dict
from kunlun_jax.data.pipeline import eval_batches, make_source, train_iterator
from kunlun_jax.data.spec import FeatureSpec, validate_batch
from kunlun_jax.metrics import StreamingMetrics
from kunlun_jax.model import Kunlun
from kunlun_jax.provenance import environment
from kunlun_jax.train.checkpoint import Checkpointer
from kunlun_jax.train.state import (
    TrainState,
    make_optimizer,
    make_predict_step,
    make_train_step,
    param_labels,
)


class RunExistsError(FileExistsError):
    """The run directory exists and neither --overwrite nor --resume was given."""


class NonFiniteError(FloatingPointError):
    """Loss or gradients became NaN/Inf with train.nan_policy = stop."""


def prepare_run_dir(runs_dir: Path, name: str, *, overwrite: bool, resume: bool) -> Path:
    """runs_dir/name, created. An existing run is kept unless overwrite (deleted) or resume."""
    run_dir = Path(runs_dir) / name
    if run_dir.exists() and not resume:
        if not overwrite:
            raise RunExistsError(
                f"run directory {run_dir} already exists; pass --overwrite to replace it, "
                "--resume to continue it, or --name to start a new run"
            )
        shutil.rmtree(run_dir)
    if resume and not run_dir.exists():
        raise FileNotFoundError(f"cannot resume: run directory {run_dir} does not exist")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def init_params(model: nn.Module, example: dict[str, Any], seed: int) -> tuple[Any, Any]:
    """(params, labels): unboxed fp32 params and their optimizer labels (embedding/dense).

    Initializers draw from an "rbg" key: XLA's native bit generator compiles several times
    faster than threefry for the hundreds of parameter initializers.
    """
    key = jax.random.key(seed, impl="rbg")
    boxed = jax.jit(model.init)(key, example)["params"]
    return nn.unbox(boxed), param_labels(boxed)


def evaluate(
    predict: Any, params: Any, source: Any, batch_size: int, *, base_rate: float | None = None
) -> dict[str, float]:
    """NE, AUC, log loss, calibration (and the oracle NE on synthetic data) over `source`.

    predict: jax.jit(make_predict_step(model)), built once per run so evals reuse its compile.
    """
    metrics = StreamingMetrics(base_rate=base_rate)
    for batch, n in eval_batches(source, batch_size):
        probs = np.asarray(predict(params, batch))[:n]
        oracle = batch["oracle_p"][:n] if "oracle_p" in batch else None
        metrics.update(batch["label"][:n], probs, oracle)
    return metrics.compute()


def _non_finite_report(step: int, metrics: dict[str, Any]) -> str:
    bad = [
        jax.tree_util.keystr(path)
        for path, ok in jax.tree_util.tree_flatten_with_path(metrics["grad_finite"])[0]
        if not bool(ok)
    ]
    return (
        f"step {step}: loss = {float(metrics['loss'])}, non-finite gradients in "
        f"{len(bad)} parameter(s): {', '.join(bad[:10]) or 'none (the loss itself)'}"
    )


@dataclasses.dataclass
class Experiment:
    """Everything a run needs, built from a config: model, data, optimizer, initial state."""

    config: Config
    spec: FeatureSpec
    model: nn.Module
    train_source: Any
    eval_source: Any
    data_iter: Any
    tx: Any
    state: TrainState


def build_experiment(config: Config) -> Experiment:
    tc = config.train
    train_source, spec = make_source(config.data, "train")
    eval_source, _ = make_source(config.data, "eval")
    model = Kunlun(config.model, spec)
    data_iter = train_iterator(train_source, tc.batch_size, seed=config.data.seed)
    example = next(iter(eval_batches(eval_source, tc.batch_size)))[0]
    validate_batch(example, spec)
    params, labels = init_params(model, example, tc.seed)
    tx = make_optimizer(tc, labels)
    state = TrainState(step=jnp.array(0, jnp.int32), params=params, opt_state=tx.init(params))
    return Experiment(config, spec, model, train_source, eval_source, data_iter, tx, state)


def evaluate_run(run_dir: Path) -> dict[str, float]:
    """Evaluates the newest checkpoint of a run directory on its eval split."""
    run_dir = Path(run_dir)
    config_file = run_dir / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json)")
    exp = build_experiment(from_dict(json.loads(config_file.read_text())))
    ckpt = Checkpointer(run_dir / "checkpoints")
    step = ckpt.latest_step()
    if step is None:
        raise FileNotFoundError(f"run {run_dir} has no checkpoint to evaluate")
    state, _ = ckpt.restore(step, exp.state, exp.data_iter)
    ckpt.close()
    predict = jax.jit(make_predict_step(exp.model))
    metrics = evaluate(predict, state.params, exp.eval_source, exp.config.train.batch_size)
    return {**metrics, "step": step}


def train(config: Config, run_dir: Path, *, resume: bool = False, progress: bool = True) -> dict:
    """Trains `config` in `run_dir` (created by prepare_run_dir) and returns the eval metrics.

    Writes config.json, TensorBoard events (tb/), orbax checkpoints (checkpoints/) and
    metrics.json. With resume, continues from the newest checkpoint with the same data order.
    """
    run_dir = Path(run_dir)
    tc = config.train
    if resume:
        _check_same_run(run_dir, config)
    exp = build_experiment(config)
    model, spec, data_iter, eval_source, state = (
        exp.model,
        exp.spec,
        exp.data_iter,
        exp.eval_source,
        exp.state,
    )
    ckpt = Checkpointer(run_dir / "checkpoints", keep=tc.keep_checkpoints)
    if resume and ckpt.latest_step() is not None:
        state, _ = ckpt.restore(ckpt.latest_step(), state, data_iter)
    (run_dir / "config.json").write_text(json.dumps(to_dict(config), indent=2))

    step_fn = jax.jit(make_train_step(model, exp.tx), donate_argnums=0)
    predict = jax.jit(make_predict_step(model))
    writer = SummaryWriter(str(run_dir / "tb"))
    base_key = jax.random.key(tc.seed + 1)
    start = int(state.step)
    skipped, timed_examples, timed_seconds = 0, 0, 0.0
    bar = tqdm(total=tc.steps, initial=start, disable=not progress, desc=config.name, unit="step")
    for step in range(start, tc.steps):
        batch = next(data_iter)
        validate_batch(batch, spec)
        t0 = time.perf_counter()
        state, metrics = step_fn(state, batch, jax.random.fold_in(base_key, step))
        if not bool(metrics["finite"]):
            if tc.nan_policy == "stop":
                raise NonFiniteError(_non_finite_report(step, metrics))
            skipped += 1
        if step > start:  # the first step includes compilation
            timed_seconds += time.perf_counter() - t0
            timed_examples += tc.batch_size
        bar.update(1)
        if (step + 1) % tc.log_every == 0 or step + 1 == tc.steps:
            loss = float(metrics["loss"])
            writer.add_scalar("train/loss", loss, step + 1)
            writer.add_scalar("train/grad_norm", float(metrics["grad_norm"]), step + 1)
            bar.set_postfix(loss=f"{loss:.4f}")
        if tc.eval_every and (step + 1) % tc.eval_every == 0 and step + 1 < tc.steps:
            _log_eval(writer, evaluate(predict, state.params, eval_source, tc.batch_size), step + 1)
        if tc.checkpoint_every and (step + 1) % tc.checkpoint_every == 0:
            ckpt.save(step + 1, state, data_iter, {"step": step + 1})
    bar.close()

    final = evaluate(predict, state.params, eval_source, tc.batch_size)
    _log_eval(writer, final, tc.steps)
    writer.close()
    if ckpt.latest_step() != tc.steps:
        ckpt.save(tc.steps, state, data_iter, {"step": tc.steps, "eval": final})
    ckpt.wait()
    ckpt.close()
    result = {
        **final,
        "config": config.name,
        "environment": environment(),
        "steps": tc.steps,
        "skipped_steps": skipped,
        "examples_per_sec": timed_examples / timed_seconds if timed_seconds else float("nan"),
    }
    (run_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    return result


def _check_same_run(run_dir: Path, config: Config) -> None:
    """Resuming needs the run's data and model config; train settings (e.g. steps) may change."""
    saved = run_dir / "config.json"
    if not saved.is_file():
        return
    old, new = json.loads(saved.read_text()), to_dict(config)
    changed = [section for section in ("data", "model") if old.get(section) != new[section]]
    if changed:
        raise ConfigError(
            f"cannot resume {run_dir}: its {' and '.join(changed)} config differs from the one "
            f"given; resume with --config {saved} (plus --set for train.* changes)"
        )


def _log_eval(writer: SummaryWriter, metrics: dict[str, float], step: int) -> None:
    for key, value in metrics.items():
        writer.add_scalar(f"eval/{key}", value, step)
