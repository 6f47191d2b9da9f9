"""grain input pipelines: a shuffled, checkpointable train iterator and exact eval batches."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from kunlun_jax.config import DataConfig, task_names
from kunlun_jax.data.spec import Batch, FeatureSpec


def make_source(cfg: DataConfig, split: str) -> tuple[Any, FeatureSpec]:
    """A random-access source for `split` and its spec. Sources have `len()`, `[i]` (one
    example) and `batch(indices)` (a batch, vectorized), which the pipelines use.

    Splits: "train" | "eval"; MovieLens also has "test" (a global time split, eval = the
    validation period). For MovieLens, `data.path` is a directory made by `kunlun-jax data
    prepare`, or a raw one, which is then parsed in memory and never written to.
    """
    if cfg.source == "synthetic":
        from kunlun_jax.data.synthetic import SyntheticSource, feature_spec

        n = cfg.num_train if split == "train" else cfg.num_eval
        tasks = task_names(cfg)
        source = SyntheticSource(
            cfg.synthetic, num_examples=n, seed=cfg.seed, split=split, tasks=tasks
        )
        return source, feature_spec(cfg.synthetic, tasks)
    if cfg.source.startswith("movielens-"):
        from kunlun_jax.data.movielens import open_source

        source = open_source(
            cfg.source, cfg.path, split, max_len=cfg.max_len, tasks=task_names(cfg)
        )
        return source, source.feature_spec
    raise ValueError(f"data.source = {cfg.source!r} has no loader")


def bucket_length(longest: int, buckets: Sequence[int], max_len: int) -> int:
    """The padded length for a stream whose longest history in the batch is `longest`: the
    smallest bucket >= longest, or `max_len` (the stored length) when no smaller bucket fits."""
    return min((b for b in buckets if longest <= b < max_len), default=max_len)


def trim_to_buckets(
    batch: Batch, buckets: Sequence[int], lengths: Mapping[str, np.ndarray] | None = None
) -> Batch:
    """`batch` with its history streams [B, T_s] cut to T = `bucket_length` of the longest
    history over all streams (each stream to min(T, T_s)), so a run compiles at most
    len(buckets) + 1 input shapes however many streams there are.

    Histories are newest-first and padded at the end, so cutting drops padding only. lengths:
    {stream: [N]} history lengths to size the bucket from (default: the batch's own); in
    multi-host training they are the whole global batch's, so every host picks the same shape.
    """
    seqs = batch["seqs"]
    lengths = lengths or {name: seq["length"] for name, seq in seqs.items()}
    longest = max(int(np.max(n, initial=0)) for n in lengths.values())
    stored = max(seq["item"].shape[1] for seq in seqs.values())
    t = bucket_length(longest, buckets, stored)
    cut = {
        name: {k: v if k == "length" else v[:, :t] for k, v in seq.items()}
        for name, seq in seqs.items()
    }
    return {**batch, "seqs": cut}


def read_options(num_threads: int | None = None) -> grain.ReadOptions:
    """Batches computed ahead on `num_threads` threads (default: one per CPU core this process
    may run on, at most 16), two per thread. The order of the batches never depends on it, so
    a run resumes exactly on another machine. (grain's own default, 16 threads and 500
    batches, holds gigabytes of batches at production sizes.)"""
    threads = num_threads or min(16, len(os.sched_getaffinity(0)))
    return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads)


def train_iterator(
    source: Any,
    batch_size: int,
    *,
    seed: int,
    rows: np.ndarray | None = None,
    buckets: Sequence[int] = (),
    num_threads: int | None = None,
) -> grain.DatasetIterator:
    """Endless shuffled global batches (reshuffled every epoch) with get_state()/set_state().

    rows: the rows (indices) of every global batch this host reads, in the order it passes them
    on (multi-host training, `distributed.host_rows`; default all).
    The global batch order depends only on `seed`, never on the number of hosts, and a host
    materializes only its own rows (`source.batch(indices)`).
    buckets: pad histories to bucketed lengths (`trim_to_buckets`) instead of the stored
    maximum; a host reading part of each batch sizes them from `source.lengths(indices)` of
    the whole global batch, so all hosts agree on the shapes.
    num_threads: see `read_options`.
    """
    if len(source) < batch_size:
        raise ValueError(
            f"train.batch_size ({batch_size}) exceeds the training set ({len(source)} examples)"
        )
    partial = rows is not None and len(rows) < batch_size

    def load(indices: np.ndarray) -> Batch:
        batch = source.batch(indices[rows] if partial else indices)
        if not buckets:
            return batch
        return trim_to_buckets(batch, buckets, source.lengths(indices) if partial else None)

    ds = (
        grain.MapDataset.range(len(source))
        .shuffle(seed=seed)
        .repeat(None)
        .batch(batch_size, drop_remainder=True)
        .map(load)
    )
    return iter(ds.to_iter_dataset(read_options(num_threads)))


def eval_batches(
    source: Any, batch_size: int, buckets: Sequence[int] = ()
) -> Iterator[tuple[Batch, int]]:
    """Every example exactly once, in order, as (batch, n_real): the last batch is padded to
    `batch_size` by repeating its last example (static shapes), n_real counts the real rows.
    buckets: as in `train_iterator`. Computed ahead as `read_options()` says."""
    ds = grain.MapDataset.range(len(source)).batch(batch_size, drop_remainder=False)
    for batch in ds.map(source.batch).to_iter_dataset(read_options()):
        n = len(batch["label"])
        batch = _padded(batch, batch_size)
        yield (trim_to_buckets(batch, buckets) if buckets else batch), n


def first_batch(source: Any, batch_size: int) -> Batch:
    """`eval_batches`' first batch, computed alone: the example a model is shaped, planned or
    lowered from (no iterator, nothing computed ahead)."""
    return _padded(source.batch(np.arange(min(batch_size, len(source)))), batch_size)


def _padded(batch: Batch, size: int) -> Batch:
    """`batch` padded to `size` rows by repeating its last example (unchanged if it has them)."""
    return _pad_rows(batch, size) if len(batch["label"]) < size else batch


def _pad_rows(tree: Any, size: int) -> Any:
    if isinstance(tree, dict):
        return {k: _pad_rows(v, size) for k, v in tree.items()}
    arr = np.asarray(tree)
    pad = np.repeat(arr[-1:], size - arr.shape[0], axis=0)
    return np.concatenate([arr, pad], axis=0)
