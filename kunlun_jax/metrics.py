"""Ranking metrics: NE (normalized entropy), AUC, log loss, calibration — streaming over batches.

NE = mean log loss / H(p̄), with H the binary entropy and p̄ the base rate (by default of the
evaluated labels; pass the training base rate to follow the paper's definition exactly).
`StreamingMetrics` streams one task's predictions; `TaskMetrics` one stream per task.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

_EPS = 1e-7


def binary_entropy(p: np.ndarray | float) -> np.ndarray:
    """H(p) = -p log p - (1-p) log(1-p) in nats, elementwise; H(0) = H(1) = 0."""
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return -(p * np.log(p) + (1 - p) * np.log1p(-p))


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean binary cross-entropy in nats; probabilities are clipped to [1e-7, 1 - 1e-7]."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def normalized_entropy(
    labels: np.ndarray, probs: np.ndarray, base_rate: float | None = None
) -> float:
    """Log loss divided by the entropy of the base rate (labels' mean unless given)."""
    p_bar = float(np.mean(labels)) if base_rate is None else base_rate
    return log_loss(labels, probs) / float(binary_entropy(p_bar))


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the Mann–Whitney rank statistic, ties counted as 1/2.

    Returns NaN when only one class is present.
    """
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    # Average ranks over ties (1-based).
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


@dataclasses.dataclass
class StreamingMetrics:
    """Accumulates (label, probability) batches and reports NE, AUC, log loss, calibration.

    Exact: keeps the predictions (eval sets here fit in memory; 1e7 examples ≈ 160 MB).
    """

    base_rate: float | None = None  # training base rate for NE; None = evaluated labels' mean
    _labels: list[np.ndarray] = dataclasses.field(default_factory=list)
    _probs: list[np.ndarray] = dataclasses.field(default_factory=list)
    _oracle: list[np.ndarray] = dataclasses.field(default_factory=list)

    def update(
        self, labels: np.ndarray, probs: np.ndarray, oracle_p: np.ndarray | None = None
    ) -> None:
        """Adds a batch: labels [B] in {0,1}, probs [B] in [0,1], optional true probs [B]."""
        labels = np.asarray(labels, dtype=np.float64).reshape(-1)
        probs = np.asarray(probs, dtype=np.float64).reshape(-1)
        if labels.shape != probs.shape:
            raise ValueError(f"labels {labels.shape} and probs {probs.shape} differ in shape")
        if not np.all(np.isfinite(probs)):
            raise ValueError("predicted probabilities contain NaN or Inf")
        self._labels.append(labels)
        self._probs.append(probs)
        if oracle_p is not None:
            self._oracle.append(np.asarray(oracle_p, dtype=np.float64).reshape(-1))

    @property
    def count(self) -> int:
        return sum(len(x) for x in self._labels)

    def compute(self) -> dict[str, float]:
        """{'ne', 'auc', 'log_loss', 'calibration', 'base_rate', 'count'} (+ oracle entries).

        With oracle probabilities (synthetic data), also 'oracle_ne' (the Bayes-optimal NE on
        the same examples: E[H(p_true)] / H(p̄)) and 'oracle_log_loss'.
        """
        if not self._labels:
            raise ValueError("no examples were added to the metrics")
        y = np.concatenate(self._labels)
        p = np.concatenate(self._probs)
        p_bar = float(y.mean()) if self.base_rate is None else self.base_rate
        h = float(binary_entropy(p_bar))
        out = {
            "ne": log_loss(y, p) / h,
            "auc": auc(y, p),
            "log_loss": log_loss(y, p),
            "calibration": float(p.mean() / max(y.mean(), _EPS)),
            "base_rate": p_bar,
            "count": float(y.size),
        }
        if self._oracle and sum(len(o) for o in self._oracle) == y.size:
            oracle = np.concatenate(self._oracle)
            out["oracle_log_loss"] = float(np.mean(binary_entropy(oracle)))
            out["oracle_ne"] = out["oracle_log_loss"] / h
        return out


class TaskMetrics:
    """StreamingMetrics per task over labels and probs [B] (one task) or [B, K] (the tasks'
    columns in order). `compute()` gives the first (primary) task's metrics unprefixed and every
    other task's as "<task>/<metric>"; oracle probabilities (synthetic data) have the labels'
    shape."""

    def __init__(self, tasks: Sequence[str], base_rates: Sequence[float] | None = None):
        if base_rates is not None and len(base_rates) != len(tasks):
            raise ValueError(f"{len(base_rates)} base rates for the {len(tasks)} tasks {tasks}")
        self.tasks = tuple(tasks)
        rates = base_rates if base_rates is not None else [None] * len(self.tasks)
        self._per_task = [StreamingMetrics(base_rate=r) for r in rates]

    def update(
        self, labels: np.ndarray, probs: np.ndarray, oracle_p: np.ndarray | None = None
    ) -> None:
        labels, probs = np.asarray(labels), np.asarray(probs)
        k = len(self.tasks)
        expected = (labels.shape[0], k) if k > 1 else (labels.shape[0],)
        if labels.shape != expected or probs.shape != expected:
            raise ValueError(
                f"labels {labels.shape} and probs {probs.shape} must both be "
                f"{'[B]' if k == 1 else f'[B, {k}]'} for the tasks {list(self.tasks)}"
            )
        if oracle_p is not None and np.shape(oracle_p) != expected:
            raise ValueError(
                f"oracle_p {np.shape(oracle_p)} must have the labels' shape {expected}"
            )
        labels, probs = labels.reshape(-1, k), probs.reshape(-1, k)
        oracle = None if oracle_p is None else np.asarray(oracle_p).reshape(-1, k)
        for t, metrics in enumerate(self._per_task):
            metrics.update(labels[:, t], probs[:, t], None if oracle is None else oracle[:, t])

    def compute(self) -> dict[str, float]:
        out = self._per_task[0].compute()
        for name, metrics in zip(self.tasks[1:], self._per_task[1:], strict=True):
            out.update({f"{name}/{key}": value for key, value in metrics.compute().items()})
        return out
