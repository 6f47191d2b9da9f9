"""The data source: random-access examples of one split of a prepared dataset, every history cut
out of per-user CSR timelines with binary searches, vectorized over a batch."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kunlun_jax.data import records
from kunlun_jax.data.jagged import newest_first_positions
from kunlun_jax.data.movielens.prepare import Prepared, build, feature_spec, load
from kunlun_jax.data.movielens.protocol import (
    DEFAULT_MAX_LEN,
    DEFAULT_TASKS,
    LIKE_HALF_STARS,
    PAD,
    SPLITS,
    STREAMS,
    TASK_HALF_STARS,
)
from kunlun_jax.data.spec import Batch, FeatureSpec, task_columns
from kunlun_jax.data.validate import DataError


class _Timeline:
    """Selected events grouped by user (or item), in time order within a group: a CSR layout.

    For M selected events of N: `events` [M + 1] are their positions in the time-sorted event
    arrays, grouped and increasing within a group, plus a trailing 0 (a safe gather target for
    padding); the sorted keys group * N + position [M] find a group's events before a position
    with one binary search.
    """

    def __init__(self, group: np.ndarray, num_groups: int, select: np.ndarray):
        self._n = len(group)
        pos = np.flatnonzero(select)
        order = pos[np.argsort(group[pos], kind="stable")]
        self._key = group[order].astype(np.int64) * self._n + order
        self._start = np.searchsorted(self._key, np.arange(num_groups, dtype=np.int64) * self._n)
        self.events = np.append(order, 0)

    def span(self, group: np.ndarray, bound: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(start, end) [B]: `events[start:end]` are group[b]'s events at positions < bound[b]."""
        end = np.searchsorted(self._key, group.astype(np.int64) * self._n + bound)
        return self._start[group], end


class MovieLensSource:
    """Random-access ranking examples of one split of a prepared MovieLens dataset.

    `src[i]` is example i (the split's i-th rating in time order) in the `kunlun_jax.data.spec`
    format without batch axis; `src.batch(indices)` gives the same examples stacked [B, ...],
    vectorized (feed grain with `batch_fn=src.batch`). Deterministic and thread-safe.
    """

    def __init__(
        self,
        prepared: str | Path | Prepared,
        split: str = "train",
        *,
        max_len: int = DEFAULT_MAX_LEN,
        tasks: Sequence[str] = DEFAULT_TASKS,
    ):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.prepared = prepared if isinstance(prepared, Prepared) else load(Path(prepared))
        self.split = split
        self.max_len = max_len
        manifest, a = self.prepared.manifest, self.prepared.arrays
        self.feature_spec = feature_spec(manifest, max_len, tasks)
        counts = manifest["counts"]
        k = SPLITS.index(split)
        self._start = sum(counts[s] for s in SPLITS[:k])
        self._len = counts[split]
        liked = a["event_half_stars"] >= LIKE_HALF_STARS
        self._by_user = {
            s: _Timeline(a["event_user"], counts["users"], sel)
            for s, sel in zip(STREAMS, (liked, ~liked), strict=True)
        }
        self._by_item = {
            s: _Timeline(a["event_item"], counts["items"], sel)
            for s, sel in zip(STREAMS, (liked, ~liked), strict=True)
        }

    @property
    def spec(self) -> FeatureSpec:
        """The FeatureSpec (as `SyntheticSource.spec`)."""
        return self.feature_spec

    @property
    def base_rates(self) -> tuple[float, ...]:
        """The fraction of positive labels in this split, per task (`spec.tasks`)."""
        stars = self.prepared.arrays["event_half_stars"][self._start : self._start + self._len]
        return tuple(float(np.mean(stars >= TASK_HALF_STARS[t])) for t in self.spec.tasks)

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return (
            f"MovieLensSource({self.prepared.manifest['dataset']!r}, split={self.split!r}, "
            f"examples={self._len}, max_len={self.max_len})"
        )

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Example `index` (negative counts from the end) without batch axis."""
        return _first(self.batch([index]))

    def batch(self, indices: Sequence[int]) -> Batch:
        """The examples at `indices` stacked along a leading batch axis [B, ...]."""
        a = self.prepared.arrays
        p = self._positions(indices)
        user, item, ts = a["event_user"][p], a["event_item"][p], a["event_ts"][p]
        bound = np.searchsorted(a["event_ts"], ts, "left")  # events before it: strictly older
        seqs, user_counts, item_counts = {}, {}, {}
        for s in STREAMS:
            start, end = self._by_user[s].span(user, bound)
            user_counts[s] = end - start
            seqs[s] = self._history(self._by_user[s], start, end, ts)
            start, end = self._by_item[s].span(item, bound)
            item_counts[s] = end - start
        n_user = user_counts["liked"] + user_counts["other"]
        n_item = item_counts["liked"] + item_counts["other"]
        history = np.stack(
            [
                np.log1p(n_user),
                (user_counts["liked"] + 1) / (n_user + 2),
                np.log1p(n_item),
                (item_counts["liked"] + 1) / (n_item + 2),
            ],
            axis=1,
        )
        return {
            "sparse": np.concatenate([a["user_table"][user], a["item_table"][item]], axis=1),
            "dense": np.concatenate([a["item_genres"][item], history], axis=1).astype(np.float32),
            "label": self._labels(a["event_half_stars"][p]),
            "seqs": seqs,
        }

    def _labels(self, half_stars: np.ndarray) -> np.ndarray:
        """float32 [B] (one task) or [B, K]: each task's label of ratings `half_stars` [B]."""
        thresholds = np.array([TASK_HALF_STARS[t] for t in self.spec.tasks])
        return task_columns((half_stars[:, None] >= thresholds).astype(np.float32))

    def lengths(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        """{stream: int32 [B]} the history lengths of `batch(indices)`, without building it."""
        a = self.prepared.arrays
        p = self._positions(indices)
        bound = np.searchsorted(a["event_ts"], a["event_ts"][p], "left")
        out = {}
        for s in STREAMS:
            start, end = self._by_user[s].span(a["event_user"][p], bound)
            out[s] = np.minimum(end - start, self.max_len).astype(np.int32)
        return out

    def _positions(self, indices: Sequence[int]) -> np.ndarray:
        """Positions [B] in the time-sorted event arrays of examples `indices` of this split."""
        index = np.asarray(indices, np.int64).reshape(-1)
        index = np.where(index < 0, index + self._len, index)
        bad = (index < 0) | (index >= self._len)
        if bad.any():
            i = np.asarray(indices).reshape(-1)[np.argmax(bad)]
            raise IndexError(f"index {i} out of range for {self._len} examples")
        return self._start + index

    def _history(
        self, timeline: _Timeline, start: np.ndarray, end: np.ndarray, ts: np.ndarray
    ) -> dict[str, np.ndarray]:
        """The stream arrays (spec format, [B, T]) of events[start:end], newest first."""
        a = self.prepared.arrays
        positions, length = newest_first_positions(start, end, self.max_len)
        real = positions >= 0
        pos = timeline.events[positions]  # -1: the trailing 0, a safe gather target
        ids = a["item_table"][a["event_item"][pos]]
        return {
            "item": np.where(real, ids[..., 0], PAD),
            "side": np.where(real, ids[..., 1], PAD),
            "dt": np.where(real, ts[:, None] - a["event_ts"][pos], 0).astype(np.float32),
            "length": length,
        }


def _first(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The first example of a batch: every array without its leading axis."""
    return {k: _first(v) if isinstance(v, Mapping) else v[0] for k, v in batch.items()}


@functools.lru_cache(maxsize=2)
def _build_cached(name: str, src: str) -> Prepared:
    return build(name, Path(src))


def open_source(
    name: str,
    path: str | Path,
    split: str,
    *,
    max_len: int = DEFAULT_MAX_LEN,
    tasks: Sequence[str] = DEFAULT_TASKS,
) -> MovieLensSource:
    """Split `split` of MovieLens `name` from `path`: a prepared directory (with manifest.json)
    or a raw one. A raw directory is prepared in memory, never written to (nothing is added next
    to the user's data); the result is cached per process, so the train and eval sources parse
    it once (ML-100K: under a second; ML-1M: seconds, so prefer `prepare` once for it)."""
    if not str(path):
        raise ValueError(
            f"data.path is empty: set data.path to a raw {name} directory or one made by "
            f"`kunlun-jax data prepare {name} <raw dir> <out dir>`"
        )
    path = Path(path).expanduser()
    if records.is_prepared(path):
        data = load(path)
        if (held := data.manifest.get("dataset")) != name:
            raise DataError(
                f"{path} holds {held!r}, but data.source is {name!r}: set "
                f"data.source={held}, or data.path to a prepared {name}"
            )
    else:
        data = _build_cached(name, str(path.resolve()))
    return MovieLensSource(data, split, max_len=max_len, tasks=tasks)
