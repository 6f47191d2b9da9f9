"""Orbax checkpoints of the train state together with the grain iterator state.

Saves are async and atomic: orbax writes into a temporary directory and renames it when
complete, so an interrupted save never looks like a finished checkpoint. Each checkpoint also
records a fingerprint of the state (per-leaf sums); a restore whose values do not match it,
or that fails to read, is reported, moved aside to `<run>/corrupt_checkpoints/` (never
deleted) and the next older checkpoint is used instead.

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
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

log = logging.getLogger(__name__)

FINGERPRINT_RTOL = 1e-5  # sums are reduced in a mesh-dependent order


class CheckpointError(RuntimeError):
    """No checkpoint of a run could be restored intact."""


@jax.jit
def _leaf_sums(tree: Any) -> list[jax.Array]:
    """fp32 sum of every leaf, one program per tree structure (compiled once, not per save)."""
    return [jnp.sum(x.astype(jnp.float32)) for x in jax.tree.leaves(tree)]


def fingerprint(state: Any) -> list[float]:
    """Per-leaf sums of the state (fp32 on device, then float): cheap, and a truncated or
    zero-filled array changes them."""
    return [float(s) for s in _leaf_sums(state)]


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
        meta = {**meta, "fingerprint": fingerprint(state)}
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
        raises CheckpointError if it cannot be read or its fingerprint does not match."""
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
        expected = restored.meta.get("fingerprint")
        if expected is not None and not np.allclose(
            fingerprint(restored.state), expected, rtol=FINGERPRINT_RTOL, atol=1e-6
        ):
            raise CheckpointError(f"checkpoint {step} does not match its recorded fingerprint")
        return restored.state, restored.meta

    def restore_latest_good(
        self, target_state: Any, data_iter: Any
    ) -> tuple[Any, dict[str, Any]] | None:
        """The newest checkpoint that restores intact (None if the run has none). Bad ones are
        moved to `<run>/corrupt_checkpoints/` with a warning."""
        steps = self.all_steps()
        quarantined = self.directory.parent / "corrupt_checkpoints"
        if not steps and quarantined.is_dir() and any(quarantined.iterdir()):
            raise CheckpointError(
                f"{self.directory} has no checkpoint left to resume from, but {quarantined} "
                "holds ones an earlier resume could not restore; move back the ones to retry, "
                "or start a new run with --name"
            )
        for step in reversed(steps):
            try:
                return self.restore(step, target_state, data_iter)
            except CheckpointError as e:
                self._quarantine(step, e)
        if steps:
            raise CheckpointError(
                f"none of the checkpoints {steps} in {self.directory} could be restored; they "
                f"were moved to {self.directory.parent / 'corrupt_checkpoints'}"
            )
        return None

    def _quarantine(self, step: int, error: Exception) -> None:
        dest = self.directory.parent / "corrupt_checkpoints" / f"{step}-{int(time.time())}"
        log.warning("%s; moving it to %s and trying an older one", error, dest)
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
