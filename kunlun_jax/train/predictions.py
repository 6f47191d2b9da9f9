"""Per-example predictions of an evaluated split, as a CSV file for offline analysis."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kunlun_jax.outputs import write_atomically


class Predictions:
    """Labels and probabilities gathered batch by batch, in the split's example order."""

    def __init__(self, tasks: Sequence[str]):
        self.tasks = tuple(tasks)
        self._labels: list[np.ndarray] = []
        self._probs: list[np.ndarray] = []

    def add(self, labels: np.ndarray, probs: np.ndarray) -> None:
        """labels, probs: [n] (one task) or [n, K] of the next n examples."""
        k = len(self.tasks)
        self._labels.append(np.asarray(labels, np.float32).reshape(-1, k))
        self._probs.append(np.asarray(probs, np.float32).reshape(-1, k))

    def write(self, path: Path) -> int:
        """Writes `index,<task>_label,<task>_prob,...` (index: the example's position in the
        split: for MovieLens its rating's rank in time order) atomically; returns the rows."""
        labels, probs = np.concatenate(self._labels), np.concatenate(self._probs)
        columns = [np.arange(len(labels))]
        header = ["index"]
        for k, task in enumerate(self.tasks):
            columns += [labels[:, k], probs[:, k]]
            header += [f"{task}_label", f"{task}_prob"]
        text = io.StringIO()
        formats = ["%d"] + ["%g", "%.9g"] * len(self.tasks)  # 9 digits: float32 round-trips
        np.savetxt(
            text,
            np.stack(columns, 1),
            fmt=formats,
            delimiter=",",
            comments="",
            header=",".join(header),
        )
        write_atomically(path, text.getvalue())
        return len(labels)
