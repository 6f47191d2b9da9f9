"""grain input pipelines: a shuffled, checkpointable train iterator and exact eval batches."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grain
import numpy as np

from kunlun_jax.config import DataConfig
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
        source = SyntheticSource(cfg.synthetic, num_examples=n, seed=cfg.seed, split=split)
        return source, feature_spec(cfg.synthetic)
    if cfg.source.startswith("movielens-"):
        from kunlun_jax.data.movielens import open_source

        source = open_source(cfg.source, cfg.path, split, max_len=cfg.max_len)
        return source, source.feature_spec
    raise ValueError(f"data.source = {cfg.source!r} has no loader")


def train_iterator(
    source: Any, batch_size: int, *, seed: int, rows: slice | None = None, num_threads: int = 2
) -> grain.DatasetIterator:
    """Endless shuffled global batches (reshuffled every epoch) with get_state()/set_state().

    rows: the rows of every global batch this host reads (multi-host training; default all).
    The global batch order depends only on `seed`, never on the number of hosts, and a host
    materializes only its own rows (`source.batch(indices)`).
    """
    if len(source) < batch_size:
        raise ValueError(
            f"train.batch_size ({batch_size}) exceeds the training set ({len(source)} examples)"
        )
    ds = (
        grain.MapDataset.range(len(source))
        .shuffle(seed=seed)
        .repeat(None)
        .batch(batch_size, drop_remainder=True)
    )
    if rows is not None and rows != slice(0, batch_size):
        ds = ds.map(lambda indices: indices[rows])
    ds = ds.map(source.batch)
    return iter(
        ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=4))
    )


def eval_batches(source: Any, batch_size: int) -> Iterator[tuple[Batch, int]]:
    """Every example exactly once, in order, as (batch, n_real): the last batch is padded to
    `batch_size` by repeating its last example (static shapes), n_real counts the real rows."""
    ds = grain.MapDataset.range(len(source)).batch(batch_size, drop_remainder=False)
    for batch in ds.map(source.batch):
        n = len(batch["label"])
        if n < batch_size:
            batch = _pad_rows(batch, batch_size)
        yield batch, n


def _pad_rows(tree: Any, size: int) -> Any:
    if isinstance(tree, dict):
        return {k: _pad_rows(v, size) for k, v in tree.items()}
    arr = np.asarray(tree)
    pad = np.repeat(arr[-1:], size - arr.shape[0], axis=0)
    return np.concatenate([arr, pad], axis=0)
