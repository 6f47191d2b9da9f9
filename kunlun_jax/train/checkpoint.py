"""Orbax checkpoints of the train state together with the grain iterator state.

Saves are async and atomic (orbax writes to a temporary directory and renames it when
complete), so an interrupted save never looks like a finished checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grain
import orbax.checkpoint as ocp


class Checkpointer:
    """Keeps the newest `keep` checkpoints of (state, data iterator, metadata) under `directory`."""

    def __init__(self, directory: Path, *, keep: int = 2):
        self._manager = ocp.CheckpointManager(
            Path(directory).absolute(),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def save(self, step: int, state: Any, data_iter: Any, meta: dict[str, Any]) -> None:
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(data_iter),
                meta=ocp.args.JsonSave(meta),
            ),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def restore(self, step: int, target_state: Any, data_iter: Any) -> tuple[Any, dict[str, Any]]:
        """Restores the state into `target_state`'s structure/shardings and `data_iter` in place."""
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target_state),
                data=grain.checkpoint.CheckpointRestore(data_iter),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return restored.state, restored.meta

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
