"""grain input pipelines: a shuffled, checkpointable train iterator and exact eval batches."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grain
import numpy as np

from kunlun_jax.config import DataConfig
from kunlun_jax.data.spec import Batch, FeatureSpec


def make_source(cfg: DataConfig, split: str) -> tuple[Any, FeatureSpec]:
    """A random-access source of single examples for `split` and its spec.

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
    source: Any, batch_size: int, *, seed: int, num_threads: int = 2
) -> grain.DatasetIterator:
    """Endless shuffled batches (reshuffled every epoch) with get_state()/set_state()."""
    if len(source) < batch_size:
        raise ValueError(
            f"train.batch_size ({batch_size}) exceeds the training set ({len(source)} examples)"
        )
    ds = _batched(
        _examples(source).shuffle(seed=seed).repeat(None), source, batch_size, drop_remainder=True
    )
    return iter(
        ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=4))
    )


def eval_batches(source: Any, batch_size: int) -> Iterator[tuple[Batch, int]]:
    """Every example exactly once, in order, as (batch, n_real): the last batch is padded to
    `batch_size` by repeating its last example (static shapes), n_real counts the real rows."""
    for batch in _batched(_examples(source), source, batch_size, drop_remainder=False):
        n = len(batch["label"])
        if n < batch_size:
            batch = _pad_rows(batch, batch_size)
        yield batch, n


def _examples(source: Any) -> grain.MapDataset:
    """Indices if the source batches itself (vectorized `source.batch(indices)`), else examples."""
    if hasattr(source, "batch"):
        return grain.MapDataset.range(len(source))
    return grain.MapDataset.source(source)


def _batched(
    ds: grain.MapDataset, source: Any, batch_size: int, *, drop_remainder: bool
) -> grain.MapDataset:
    batch_fn = source.batch if hasattr(source, "batch") else None
    return ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=batch_fn)


def _pad_rows(tree: Any, size: int) -> Any:
    if isinstance(tree, dict):
        return {k: _pad_rows(v, size) for k, v in tree.items()}
    arr = np.asarray(tree)
    pad = np.repeat(arr[-1:], size - arr.shape[0], axis=0)
    return np.concatenate([arr, pad], axis=0)
