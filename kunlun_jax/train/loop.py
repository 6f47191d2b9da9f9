"""The train/eval loop: run directories, progress, TensorBoard, checkpoints, final metrics."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
from jax.experimental import multihost_utils
from tensorboardX import SummaryWriter
from tqdm.auto import tqdm

from kunlun_jax.config import Config, ConfigError, load_config, to_dict
from kunlun_jax.data.pipeline import eval_batches, make_source
from kunlun_jax.data.spec import Batch
from kunlun_jax.metrics import TaskMetrics
from kunlun_jax.outputs import write_atomically
from kunlun_jax.parallel.distributed import to_host
from kunlun_jax.provenance import environment
from kunlun_jax.train.checkpoint import Checkpointer
from kunlun_jax.train.experiment import Experiment, build_experiment
from kunlun_jax.train.predictions import Predictions
from kunlun_jax.train.preemption import Preempted, PreemptionGuard
from kunlun_jax.train.profiling import StepProfiler


class RunExistsError(FileExistsError):
    """The run directory exists and neither --overwrite nor --resume was given."""


class NonFiniteError(FloatingPointError):
    """Loss or gradients became NaN/Inf with train.nan_policy = stop."""


def prepare_run_dir(runs_dir: Path, name: str, *, overwrite: bool, resume: bool) -> Path:
    """runs_dir/name, created. An existing run is kept unless overwrite (deleted) or resume.

    Multi-host: every process checks, then process 0 alone deletes/creates, then the others
    create their (possibly host-local) directory.
    """
    if not name or name in (".", "..") or Path(name).name != name or "\\" in name:
        raise ConfigError(
            f"run name {name!r} must be one plain directory name (no '/', '.' or '..'): "
            "the run lives in <runs dir>/<name>"
        )
    run_dir = Path(runs_dir) / name
    if run_dir.exists() and not resume and not overwrite:
        raise RunExistsError(
            f"run directory {run_dir} already exists; pass --overwrite to replace it, "
            "--resume to continue it, or --name to start a new run"
        )
    if resume and not run_dir.exists():
        raise FileNotFoundError(f"cannot resume: run directory {run_dir} does not exist")
    if overwrite and not resume and _holds_files_but_no_run(run_dir):
        raise RunExistsError(
            f"{run_dir} holds files but no run (no config.json); --overwrite replaces runs "
            "only: move those files or pick another --name / --runs-dir"
        )
    _barrier("run directory checked")
    if jax.process_index() == 0:
        if run_dir.exists() and not resume:
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    _barrier("run directory created")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _holds_files_but_no_run(run_dir: Path) -> bool:
    """run_dir is a non-empty directory (or a file) without a run's config.json."""
    if not run_dir.exists():
        return False
    if not run_dir.is_dir():
        return True
    return any(run_dir.iterdir()) and not (run_dir / "config.json").is_file()


def finished_run(run_dir: Path, config: Config) -> dict[str, Any] | None:
    """The final eval metrics of a finished training of exactly `config` in `run_dir` (read
    back by study and sweep re-runs), or None where the directory may be (re)trained: absent,
    empty, or an unfinished run of `config`. FileExistsError where training would replace
    something else: a run of another config, or files that are no run."""
    run_dir = Path(run_dir)
    metrics, saved = run_dir / "metrics.json", run_dir / "config.json"
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return None
    if _holds_files_but_no_run(run_dir):
        raise FileExistsError(
            f"{run_dir} holds files but no run (no config.json); move them or pick another "
            "output directory"
        )
    if to_dict(load_config(str(saved))) != to_dict(config):
        raise FileExistsError(
            f"{run_dir} holds a run of another config; pick another output directory (or "
            "remove that run) rather than replace it"
        )
    if not metrics.is_file():
        return None
    final = json.loads(metrics.read_text())
    return final if final.get("steps") == config.train.steps else None


def train_or_read_back(
    config: Config, runs_dir: Path, name: str, *, progress: bool = False
) -> tuple[dict[str, Any], Path, bool]:
    """(final eval metrics, run directory, whether it trained now) of `config` in
    runs_dir/name, for studies and sweeps run again: a finished run of `config` is read back
    (`finished_run`), an unfinished one with a checkpoint is resumed, an empty or absent
    directory (or a run of `config` that saved nothing) is trained from scratch. Raises
    Preempted (the checkpoint saved) on a preemption signal."""
    run_dir = Path(runs_dir) / name
    metrics = finished_run(run_dir, config)
    if metrics is not None:
        return metrics, run_dir, False
    resume = (run_dir / "config.json").is_file() and any((run_dir / "checkpoints").glob("[0-9]*"))
    run_dir = prepare_run_dir(runs_dir, name, overwrite=not resume, resume=resume)
    metrics = train(config, run_dir, resume=resume, progress=progress)
    if metrics.get("preempted"):
        raise Preempted(run_dir, metrics["step"], metrics["signal"])
    return metrics, run_dir, True


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def evaluate(
    predict: Any,
    params: Any,
    source: Any,
    batch_size: int,
    *,
    put: Callable[[Batch], Batch] = lambda b: b,
    base_rates: Sequence[float] | None = None,
    buckets: Sequence[int] = (),
    predictions: Predictions | None = None,
) -> dict[str, float]:
    """NE, AUC, log loss, calibration (and the oracle NE on synthetic data) over `source`.

    predict: a jitted predict step, built once per run so evals reuse its compile.
    put: host batch -> device batch (e.g. `Experiment.global_batch` to shard it).
    buckets: history length buckets (`data.length_buckets`).
    predictions: also gathers every example's labels and probabilities here.
    """
    metrics = TaskMetrics(source.spec.tasks, base_rates)
    for batch, n in eval_batches(source, batch_size, buckets):
        probs = to_host(predict(params, put(batch)))[:n]
        oracle = batch["oracle_p"][:n] if "oracle_p" in batch else None
        metrics.update(batch["label"][:n], probs, oracle)
        if predictions is not None:
            predictions.add(batch["label"][:n], probs)
    return metrics.compute()


def _non_finite_report(step: int, metrics: dict[str, Any]) -> str:
    bad = [
        jax.tree_util.keystr(path)
        for path, ok in jax.tree_util.tree_flatten_with_path(metrics["grad_finite"])[0]
        if not bool(ok)
    ]
    loss = float(metrics["loss"])
    if not bad and math.isfinite(loss) and not math.isfinite(float(metrics["grad_norm"])):
        return (
            f"step {step}: loss = {loss} and gradients finite, but their norm overflows float32 "
            "(the squares would make the optimizer's statistics inf); lower "
            "train.learning_rate or set train.clip_norm"
        )
    if not bad and math.isfinite(loss):
        return (
            f"step {step}: loss = {loss} and gradients finite, but the update made parameters "
            "non-finite (is train.learning_rate too large?)"
        )
    return (
        f"step {step}: loss = {loss}, non-finite gradients in "
        f"{len(bad)} parameter(s): {', '.join(bad[:10]) or 'none (the loss itself)'}"
    )


def run_config(run_dir: Path) -> Config:
    """The config a run directory was trained with (its config.json)."""
    config_file = Path(run_dir) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json)")
    return load_config(str(config_file))


def restore_run(run_dir: Path, config: Config) -> tuple[Experiment, Any, int]:
    """(experiment, train state, step) of a run directory's newest checkpoint, restored into
    abstract targets (no fresh state is initialized beside it); config: `run_config(run_dir)`."""
    run_dir = Path(run_dir)
    exp = build_experiment(config, init_state=False)
    ckpt = Checkpointer(run_dir / "checkpoints")
    try:
        step = ckpt.latest_step()
        if step is None:
            raise FileNotFoundError(f"run {run_dir} has no checkpoint to restore")
        state, _ = ckpt.restore(step, exp.sharded_abstract_state(), exp.data_iter)
    finally:
        ckpt.close()
    return exp, state, step


def evaluate_run(
    run_dir: Path,
    split: str = "eval",
    *,
    base_rates: Sequence[float] | None = None,
    predictions: Path | None = None,
) -> dict[str, float]:
    """Evaluates the newest checkpoint of a run directory on `split` ("eval", or "test" for
    the real datasets); base_rates: per task, the label rate NE normalizes by (default:
    `training_base_rates`); predictions: also writes every example's labels and probabilities
    there as CSV (`Predictions.write`)."""
    config = run_config(run_dir)
    splits = ("eval",) if config.data.source == "synthetic" else ("eval", "test")
    if split not in splits:
        raise ConfigError(
            f"split {split!r}: {config.data.source} data has the splits {list(splits)}"
        )
    exp, state, step = restore_run(run_dir, config)
    source = exp.eval_source if split == "eval" else make_source(config.data, split)[0]
    gathered = None if predictions is None else Predictions(source.spec.tasks)
    with exp.activate():
        metrics = evaluate(
            exp.predict_step(),
            state.params,
            source,
            config.train.batch_size,
            put=exp.global_batch,
            base_rates=training_base_rates(exp) if base_rates is None else base_rates,
            buckets=config.data.length_buckets,
            predictions=gathered,
        )
    if gathered is not None and jax.process_index() == 0:
        gathered.write(predictions)
    return {**metrics, "step": step}


class _RunLog:
    """TensorBoard scalars and progress, from the first process only. Progress is a tqdm bar
    on a terminal; where stderr is no terminal (a log file, a batch job) it is one line on
    stdout every train.log_every steps instead of a stream of carriage returns. Mid-run eval
    metrics are printed either way."""

    def __init__(self, run_dir: Path, config: Config, start: int, progress: bool):
        self.lead = jax.process_index() == 0
        self.writer = SummaryWriter(str(run_dir / "tb")) if self.lead else None
        shown = progress and self.lead
        self.lines = shown and not sys.stderr.isatty()
        self.quiet = not shown
        self.bar = tqdm(
            total=config.train.steps,
            initial=start,
            disable=not shown or self.lines,
            desc=config.name,
            unit="step",
        )
        self.name, self.total = config.name, config.train.steps
        self._since = (start, time.perf_counter())  # step and time of the last line

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def train_point(self, step: int, loss: float, grad_norm: float) -> None:
        """The loss and gradient norm after `step` steps."""
        self.scalars("train", {"loss": loss, "grad_norm": grad_norm}, step)
        self.bar.set_postfix(loss=f"{loss:.4f}")
        if self.lines:
            (last, then), now = self._since, time.perf_counter()
            rate = (step - last) / max(now - then, 1e-9)
            self._since = (step, now)
            print(
                f"{self.name} step {step}/{self.total}: loss {loss:.4f}, grad_norm "
                f"{grad_norm:.4g}, {rate:.2f} steps/s",
                flush=True,
            )

    def eval_point(self, step: int, metrics: dict[str, float]) -> None:
        """Eval metrics after `step` steps (mid-run: the final ones are the caller's to show)."""
        self.scalars("eval", metrics, step)
        if self.quiet:
            return
        shown = ", ".join(
            f"{k} {v:.4f}" for k, v in metrics.items() if k.rsplit("/", 1)[-1] in _EVAL_SHOWN
        )
        self._show(f"{self.name} step {step} eval: {shown}")

    def profiled(self, steps: range, log_dir: Path) -> None:
        """A trace of `steps` was written under `log_dir`."""
        if not self.quiet:
            self._show(
                f"{self.name} steps {steps.start}-{steps.stop - 1} traced: xprof --logdir {log_dir}"
            )

    def _show(self, line: str) -> None:
        """A line on stdout, above the progress bar where there is one."""
        (print if self.lines else self.bar.write)(line)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()


# Of each mid-run eval, printed for every task (all its metrics go to TensorBoard).
_EVAL_SHOWN = ("ne", "auc", "log_loss")


@dataclasses.dataclass
class _Stats:
    skipped: int = 0  # steps whose update was dropped (non-finite, nan_policy = skip)
    examples_per_sec: float = float("nan")  # excluding the first (compiling) step
    preempted: dict[str, Any] | None = None  # {"preempted": True, "step", "signal"}


def train(
    config: Config,
    run_dir: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    devices: list[Any] | None = None,
) -> dict:
    """Trains `config` in `run_dir` (created by prepare_run_dir) and returns the eval metrics.

    Writes config.json, TensorBoard events (tb/), orbax checkpoints (checkpoints/) and
    metrics.json; with train.profile_steps, a jax.profiler trace of those steps (tb/plugins/).
    With resume, continues from the newest intact checkpoint with the same data order.
    SIGTERM/SIGINT finish the current step, save a checkpoint and return
    {"preempted": True, "step": ...} instead of the eval metrics. A new run that fails before
    it starts (no config.json yet) removes its directory, so that a retry is not refused.
    """
    run_dir = Path(run_dir)
    try:
        return _train(config, run_dir, resume=resume, progress=progress, devices=devices)
    except BaseException:
        if not resume and not (run_dir / "config.json").exists() and jax.process_index() == 0:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _train(
    config: Config, run_dir: Path, *, resume: bool, progress: bool, devices: list[Any] | None
) -> dict:
    """`train`'s body: the checkpointer is closed (its saves finished) however it ends."""
    if resume:
        config = _resumed_config(run_dir, config)
    tc = config.train
    exp = build_experiment(config, devices, init_state=not resume)
    if jax.process_index() == 0:
        for note in exp.plan.unsplit_tables:
            print(f"warning: {note}", file=sys.stderr)
    ckpt = Checkpointer(
        run_dir / "checkpoints",
        keep=tc.keep_checkpoints,
        keep_best=tc.keep_best,
        async_save=tc.async_checkpoints,
    )
    try:
        state, stats = exp.state, _Stats()
        if resume:  # restored into abstract targets: no fresh state beside the restored one
            restored = ckpt.restore_latest_good(exp.sharded_abstract_state(), exp.data_iter)
            if restored is None:
                state = exp.initial_state(exp.example)
            else:
                state, stats.skipped = restored[0], restored[1].get("skipped_steps", 0)
        start = int(state.step)
        if start > tc.steps:
            raise ConfigError(
                f"cannot resume {run_dir} with train.steps = {tc.steps}: its checkpoint is at "
                f"step {start}; pass train.steps >= {start}"
            )
        log = _RunLog(run_dir, config, start, progress)
        try:
            return _train_and_evaluate(exp, run_dir, ckpt, log, state, stats, resume=resume)
        finally:
            log.close()
    finally:
        ckpt.close()


def _train_and_evaluate(
    exp: Experiment,
    run_dir: Path,
    ckpt: Checkpointer,
    log: _RunLog,
    state: Any,
    stats: _Stats,
    *,
    resume: bool,
) -> dict:
    """Steps from `state` to train.steps, the final checkpoint, then the final eval and
    metrics.json; or, on a preemption signal, {"preempted": True, "step", "signal"}."""
    config, tc = exp.config, exp.config.train
    start = int(state.step)
    profiler = StepProfiler(tc.profile_steps, run_dir / "tb", start)
    with exp.activate(), PreemptionGuard() as guard:
        if jax.process_index() == 0:  # written once signals are caught (tests rely on it)
            if resume:  # the metrics of an earlier end would read as this run's
                (run_dir / "metrics.json").unlink(missing_ok=True)
            write_atomically(run_dir / "config.json", json.dumps(to_dict(config), indent=2))
        predict = exp.predict_step()
        try:
            state = _train_steps(exp, state, predict, ckpt, log, guard, profiler, start, stats)
        finally:
            profiler.close()
        if stats.preempted is None:
            if ckpt.latest_step() != tc.steps:  # before the eval: its failure loses no steps
                _save(exp, ckpt, tc.steps, state, stats.skipped)
            if guard.requested():  # the eval is left to the resume
                stats.preempted = {"preempted": True, "step": tc.steps, "signal": guard.signal}
        if stats.preempted is not None:
            return stats.preempted
        final = _evaluate(exp, predict, state)
    log.scalars("eval", final, tc.steps)
    ckpt.wait()  # a finished run's metrics.json always has its final checkpoint beside it
    result = {
        **final,
        "config": config.name,
        "environment": environment(),
        "mesh": dict(exp.plan.mesh.shape),
        "steps": tc.steps,
        "skipped_steps": stats.skipped,
        "examples_per_sec": stats.examples_per_sec,
    }
    if jax.process_index() == 0:
        write_atomically(run_dir / "metrics.json", json.dumps(result, indent=2))
    return result


def _evaluate(exp: Experiment, predict: Any, state: Any) -> dict[str, float]:
    return evaluate(
        predict,
        state.params,
        exp.eval_source,
        exp.config.train.batch_size,
        put=exp.global_batch,
        base_rates=training_base_rates(exp),
        buckets=exp.config.data.length_buckets,
    )


def training_base_rates(exp: Experiment) -> tuple[float, ...] | None:
    """Per task, the training labels' rate, which NE normalizes by (spec), where the data
    has it at hand (the real datasets); None (the evaluated labels' own rate) for synthetic
    data, whose splits come from one generator: its training rate would take a pass over the
    whole training set."""
    return getattr(exp.train_source, "base_rates", None)


def _save(
    exp: Experiment,
    ckpt: Checkpointer,
    step: int,
    state: Any,
    skipped: int,
    meta: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
) -> None:
    """Saves `state` after `step` steps with the data iterator; skipped: steps dropped so
    far (restored by a resume); metrics (with "ne") rank it for keep_best."""
    meta = {"step": step, "skipped_steps": skipped, **(meta or {})}
    ckpt.save(step, state, exp.data_iter, meta, metrics)


def _train_steps(
    exp: Experiment,
    state: Any,
    predict: Any,
    ckpt: Checkpointer,
    log: _RunLog,
    guard: PreemptionGuard,
    profiler: StepProfiler,
    start: int,
    stats: _Stats,
) -> Any:
    """Steps start..train.steps, or until a preemption signal (then saved and recorded in
    `stats`); returns the state. Traced steps (`profiler`) are not timed."""
    tc = exp.config.train
    step_fn = exp.train_step()
    base_key = jax.random.key(tc.seed + 1)
    timed_examples, timed_seconds = 0, 0.0
    for step in range(start, tc.steps):
        local = next(exp.data_iter)
        t0 = time.perf_counter()  # timed: the batch's checks and transfer, and the step
        with profiler.annotate(step):
            batch = exp.device_batch(local, f"the batch of train step {step}")
            state, metrics = step_fn(state, batch, jax.random.fold_in(base_key, step))
        traced = profiler.active
        if profiler.step_done(step, (state, metrics)):
            log.profiled(range(profiler.begin, step + 1), profiler.log_dir)
        if not bool(metrics["finite"]):
            if tc.nan_policy == "stop":
                raise NonFiniteError(_non_finite_report(step, metrics))
            stats.skipped += 1
        if step > start and not traced:  # the first step includes compilation
            timed_seconds += time.perf_counter() - t0
            timed_examples += tc.batch_size
        log.bar.update(1)
        done = step + 1
        if done % tc.log_every == 0 or done == tc.steps:
            log.train_point(done, float(metrics["loss"]), float(metrics["grad_norm"]))
        if tc.eval_every and done % tc.eval_every == 0 and done < tc.steps:
            evaluated = _evaluate(exp, predict, state)
            log.eval_point(done, evaluated)
            if tc.keep_best:
                _save(exp, ckpt, done, state, stats.skipped, {"eval": evaluated}, evaluated)
        if tc.checkpoint_every and done % tc.checkpoint_every == 0 and ckpt.latest_step() != done:
            _save(exp, ckpt, done, state, stats.skipped)
        if guard.requested():
            if ckpt.latest_step() != done:
                _save(exp, ckpt, done, state, stats.skipped, {"preempted": True})
            stats.preempted = {"preempted": True, "step": done, "signal": guard.signal}
            return state
    if timed_seconds:
        stats.examples_per_sec = timed_examples / timed_seconds
    return state


# train.* fields a resume may change: none alters the optimizer state, the batches or the
# numbers of the steps already taken (a changed `steps` keeps the run's schedule length,
# `_resumed_config`).
RESUMABLE_TRAIN_FIELDS = (
    "steps",
    "eval_every",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "keep_best",
    "async_checkpoints",
    "nan_policy",
    "profile_steps",
)


def _resumed_config(run_dir: Path, config: Config) -> Config:
    """`config` for resuming the run in run_dir: its data and model config and its train
    config up to RESUMABLE_TRAIN_FIELDS must be the run's (the mesh may change: checkpoints
    restore onto any mesh). Where train.steps changes, train.decay_steps (0) takes the run's
    schedule length, so the learning rate goes on along the run's own schedule."""
    saved = run_dir / "config.json"
    if not saved.is_file():
        return config
    # Through load_config, so that fields newer than the run take their defaults.
    old_config = load_config(str(saved))
    decay = old_config.train.decay_steps or old_config.train.steps
    if not config.train.decay_steps and config.train.steps != old_config.train.steps:
        train_config = dataclasses.replace(config.train, decay_steps=decay)
        config = dataclasses.replace(config, train=train_config)
    old, new = to_dict(old_config), to_dict(config)
    changed = [f"{section}.*" for section in ("data", "model") if old[section] != new[section]]
    changed += [
        f"train.{key}"
        for key, value in new["train"].items()
        if key not in (*RESUMABLE_TRAIN_FIELDS, "decay_steps") and old["train"][key] != value
    ]
    if (config.train.decay_steps or config.train.steps) != decay:
        changed.append("train.decay_steps")
    if changed:
        raise ConfigError(
            f"cannot resume {run_dir}: {', '.join(changed)} "
            f"{'differs' if len(changed) == 1 else 'differ'} from the run's config (a "
            f"resume continues the same optimization and data order; only train."
            f"{{{', '.join(RESUMABLE_TRAIN_FIELDS)}}} may change); resume with --config {saved}, "
            "or start a new run with --name"
        )
    return config
