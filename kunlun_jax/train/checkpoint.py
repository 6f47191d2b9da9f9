"""Orbax checkpoints of the train state together with the grain iterator state.

Saves are async and atomic: orbax writes into a temporary directory and renames it when
complete, so an interrupted save never looks like a finished checkpoint. Each checkpoint also
records per-leaf checksums of the state (exact integers, the same on any mesh). A resume takes
the newest checkpoint that reads back and matches them; newer ones that failed where it
succeeded are reported and moved aside to `<run>/corrupt_checkpoints/` (never deleted). When
every checkpoint fails, none is moved: a failure they all share (a changed model or optimizer,
another process count) says nothing about the files.

Restores take a target state whose leaves carry the shardings wanted now, so a checkpoint
written on one mesh restores onto another (e.g. 8 devices -> 4).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from jax import lax
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from kunlun_jax.parallel.distributed import any_process

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint of a run could not be restored intact."""


def _checksum(x: jax.Array) -> jax.Array:
    """Σ_i bits(x_i)·(2i + 1) mod 2³² over the flat index i, in uint32: integer addition,
    so every mesh and summation order gives the same value; a truncated, zero-filled or
    shuffled array changes it."""
    if x.dtype == jnp.bool_:
        bits = x.astype(jnp.uint32)
    else:
        unsigned = jnp.dtype(f"uint{8 * x.dtype.itemsize}")
        bits = lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
    index = lax.broadcasted_iota(jnp.uint32, (x.size,), 0).reshape(x.shape)
    return jnp.sum(bits * (2 * index + 1), dtype=jnp.uint32)


@jax.jit
def _leaf_checksums(tree: Any) -> list[jax.Array]:
    """`_checksum` of every leaf, one program per tree structure (compiled once, not per save)."""
    return [_checksum(x) for x in jax.tree.leaves(tree)]


def checksums(state: Any) -> list[int]:
    """Per-leaf checksums of the state (`_checksum`, on device), as Python ints."""
    return [int(c) for c in _leaf_checksums(state)]


class Checkpointer:
    """The newest `keep` checkpoints (+ the `keep_best` lowest-NE ones) of (state, data
    iterator, metadata) under `directory`."""

    def __init__(
        self, directory: Path, *, keep: int = 2, keep_best: int = 0, async_save: bool = True
    ):
        self.directory = Path(directory).absolute()
        keep_policies: list[Any] = [policies.LatestN(n=keep)]
        if keep_best:
            keep_policies.append(
                policies.BestN(
                    get_metric_fn=lambda m: m["ne"],
                    reverse=True,  # keeps the last n of the sorted list: the lowest NE
                    n=keep_best,
                    keep_checkpoints_without_metrics=False,
                )
            )
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                create=True,
                enable_async_checkpointing=async_save,
                preservation_policy=policies.AnyPreservationPolicy(keep_policies),
            ),
        )

    def save(
        self,
        step: int,
        state: Any,
        data_iter: Any,
        meta: dict[str, Any],
        metrics: dict[str, float] | None = None,
    ) -> None:
        """Starts saving (async); `metrics` (with "ne") rank the checkpoint for keep_best."""
        meta = {**meta, "checksums": checksums(state)}
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(data_iter),
                meta=ocp.args.JsonSave(meta),
            ),
            metrics=metrics,
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def restore(self, step: int, target_state: Any, data_iter: Any) -> tuple[Any, dict[str, Any]]:
        """Restores step into `target_state`'s structure/shardings and `data_iter` in place;
        raises CheckpointError if it cannot be read or does not match its checksums."""
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target_state),
                    data=grain.checkpoint.CheckpointRestore(data_iter),
                    meta=ocp.args.JsonRestore(),
                ),
            )
        except Exception as e:
            if _out_of_memory(e):  # not the checkpoint's fault: keep it where it is
                raise
            raise CheckpointError(f"checkpoint {step} could not be read: {e}") from e
        expected = restored.meta.get("checksums")
        if expected is not None and checksums(restored.state) != expected:
            raise CheckpointError(f"checkpoint {step} does not match its recorded checksums")
        return restored.state, restored.meta

    def restore_latest_good(
        self, target_state: Any, data_iter: Any
    ) -> tuple[Any, dict[str, Any]] | None:
        """The newest checkpoint that restores intact on every process (None if the run has
        none); the newer ones that failed are moved to `<run>/corrupt_checkpoints/` with a
        warning. CheckpointError, moving nothing, when none restores."""
        steps = self.all_steps()
        quarantined = self.directory.parent / "corrupt_checkpoints"
        if not steps and quarantined.is_dir() and any(quarantined.iterdir()):
            raise CheckpointError(
                f"{self.directory} has no checkpoint left to resume from, but {quarantined} "
                "holds ones an earlier resume could not restore; move back the ones to retry, "
                "or start a new run with --name"
            )
        failed: list[tuple[int, CheckpointError]] = []
        for step in reversed(steps):
            try:
                restored, error = self.restore(step, target_state, data_iter), None
            except CheckpointError as e:
                restored, error = None, e
            if any_process(error is not None):  # every process takes the same checkpoint
                error = error or CheckpointError(f"checkpoint {step} failed on another process")
                failed.append((step, error))
                continue
            for bad, bad_error in failed:
                self._quarantine(bad, bad_error)
            return restored
        if steps:
            errors = "; ".join(str(e).splitlines()[0][:300] for _, e in failed)
            raise CheckpointError(
                f"none of the checkpoints {steps} in {self.directory} could be restored, and "
                "none was moved: a failure every checkpoint shares usually means the model, "
                "optimizer or number of processes changed since they were written (resume "
                f"with the run's own config and process count). Errors: {errors}"
            )
        return None

    def _quarantine(self, step: int, error: Exception) -> None:
        dest = self.directory.parent / "corrupt_checkpoints" / f"{step}-{int(time.time())}"
        log.warning("%s; an older one restored, so it is moved to %s", error, dest)
        if jax.process_index() == 0:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(self.directory / str(step)), dest)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"quarantine checkpoint {step}")
        self._manager.reload()

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def _out_of_memory(error: BaseException | None) -> bool:
    """Whether `error` (or an error that caused it) is running out of host or device memory."""
    while error is not None:
        if isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False
