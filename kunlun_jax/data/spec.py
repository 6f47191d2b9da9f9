"""The batch format every dataset produces and every model consumes, and its validation.

One example (a batch adds a leading `B` axis to every array):

    {
      "sparse": int32 [F]          one id per sparse feature, 0 <= id < sparse_vocab_sizes[f]
      "dense":  float32 [n_dense]  finite dense features
      "label":  float32 [] or [K]  label in {0, 1} (a click); with K > 1 tasks (spec.tasks),
                                   one label per task in that order
      "seqs": {stream_name: {
          "item":   int32 [T]      item ids, newest event first; 0 is padding (T <= max_len:
                                   the stored length, or a shorter bucket, data.length_buckets)
          "side":   int32 [T]      one categorical side feature per event (category, rating, ...)
          "dt":     float32 [T]    seconds between the event and the request (>= 0)
          "length": int32 []       number of real events; positions >= length are padding
      }},
      optional "oracle_p": float32 [] or [K]  the probability each label was drawn from
                                   (synthetic data only; the label's shape)
    }

Histories are stored newest-first, so keeping the `T_e` most recent events of a stream is a
slice `[:, :T_e]` with `length = min(length, T_e)`. Item id 0 is reserved for padding in every
stream vocabulary. Padded positions may hold any in-range ids and any times, NaN and Inf
included (`validate_batch` checks the times of real events only): no padded value reaches an
output or a gradient (Kunlun zeroes padded times first, `model.common.real_times`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

Batch = dict[str, Any]


class BatchError(ValueError):
    """A batch does not match its FeatureSpec; the message names the field and the fix."""


def task_columns(columns: Any) -> Any:
    """Per-task columns [B, K] (numpy or jax) in the label's shape: [B] for one task (K = 1),
    else [B, K] unchanged."""
    return columns[:, 0] if columns.shape[1] == 1 else columns


@dataclasses.dataclass(frozen=True)
class StreamSpec:
    name: str
    item_vocab_size: int  # including the padding id 0
    side_vocab_size: int
    max_len: int  # T: padded length of this stream in the stored data
    item_feature: str = ""  # sparse feature whose table also embeds this stream's items ("" = own)
    side_feature: str = ""  # sparse feature whose table also embeds the side ids ("" = own)


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    sparse_names: tuple[str, ...]
    sparse_vocab_sizes: tuple[int, ...]
    num_dense: int
    streams: tuple[StreamSpec, ...]
    # The labels the model predicts, one logit each; one task: label and logits are [B], more:
    # [B, K] in this order. The first is the primary task (the unprefixed eval metrics).
    tasks: tuple[str, ...] = ("click",)

    @property
    def stream_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.streams)

    def stream(self, name: str) -> StreamSpec:
        for s in self.streams:
            if s.name == name:
                return s
        raise KeyError(f"no stream {name!r}; streams are {list(self.stream_names)}")


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise BatchError(message)


def _check_array(batch: Mapping[str, Any], key: str, dtype_kind: str, shape: tuple) -> np.ndarray:
    _check(key in batch, f"batch is missing field {key!r}")
    arr = np.asarray(batch[key])
    _check(
        arr.dtype.kind in dtype_kind,
        f"batch field {key!r} has dtype {arr.dtype}; expected "
        f"{'an integer' if dtype_kind == 'iu' else 'a floating'} dtype",
    )
    _check(
        arr.shape == shape,
        f"batch field {key!r} has shape {arr.shape}; expected {shape}",
    )
    return arr


def _finite_in_float32(x: np.ndarray) -> bool:
    """No NaN or Inf in x, nor values that become Inf in float32 (the device batch's dtype)."""
    with np.errstate(over="ignore"):
        return bool(np.all(np.isfinite(x.astype(np.float32))))


def validate_batch(batch: Mapping[str, Any], spec: FeatureSpec) -> None:
    """Checks shapes, dtypes, id ranges, lengths and labels of a host (numpy) batch.

    Raises BatchError naming the offending field. Meant for the input boundary (data loaders,
    user-supplied batches), not for the jitted step.
    """
    label = np.asarray(batch.get("label"))
    k = len(spec.tasks)
    expected = "[B]" if k == 1 else f"[B, {k}] (one column per task: {list(spec.tasks)})"
    _check(
        "label" in batch and label.ndim == (1 if k == 1 else 2),
        f"batch field 'label' must have shape {expected}",
    )
    b = label.shape[0]
    _check(b > 0, "batch is empty (B = 0)")
    label = _check_array(batch, "label", "f", (b,) if k == 1 else (b, k))
    _check(
        bool(np.all((label == 0) | (label == 1))),
        "batch field 'label' must hold only 0 or 1 (binarize ratings before batching)",
    )
    sparse = _check_array(batch, "sparse", "iu", (b, len(spec.sparse_vocab_sizes)))
    vocab = np.asarray(spec.sparse_vocab_sizes)
    bad = (sparse < 0) | (sparse >= vocab[None, :])
    if bad.any():
        f = int(np.argwhere(bad)[0][1])
        raise BatchError(
            f"batch field 'sparse' column {f} ({spec.sparse_names[f]!r}) has id "
            f"{int(sparse[bad][0])} outside [0, {vocab[f]}); map unknown ids to an OOV bucket"
        )
    if "oracle_p" in batch:  # the synthetic source's true click probability
        oracle = _check_array(batch, "oracle_p", "f", label.shape)
        _check(
            bool(np.all((oracle >= 0) & (oracle <= 1))), "batch field 'oracle_p' must be in [0, 1]"
        )
    dense = _check_array(batch, "dense", "f", (b, spec.num_dense))
    _check(
        _finite_in_float32(dense),
        "batch field 'dense' holds NaN or Inf (or values beyond float32's range, the model's)",
    )
    seqs = batch.get("seqs", {})
    _check(
        set(seqs) == set(spec.stream_names),
        f"batch streams {sorted(seqs)} do not match the spec's {sorted(spec.stream_names)}",
    )
    for s in spec.streams:
        where = f"seqs.{s.name}"
        _check(
            isinstance(seqs[s.name], Mapping),
            f"batch field {where!r} must be a dict of item, side, dt and length arrays",
        )
        seq = {f"{where}.{k}": v for k, v in seqs[s.name].items()}
        shape = np.shape(seq.get(f"{where}.item"))  # bucketed batches: any padded T <= max_len
        t = shape[1] if len(shape) == 2 and 0 < shape[1] <= s.max_len else s.max_len
        item = _check_array(seq, f"{where}.item", "iu", (b, t))
        side = _check_array(seq, f"{where}.side", "iu", (b, t))
        dt = _check_array(seq, f"{where}.dt", "f", (b, t))
        length = _check_array(seq, f"{where}.length", "iu", (b,))
        _check(
            bool(np.all((length >= 0) & (length <= t))),
            f"{where}.length must be in [0, {t}] (the padded length); truncate longer histories",
        )
        _check(
            bool(np.all((item >= 0) & (item < s.item_vocab_size))),
            f"{where}.item has ids outside [0, {s.item_vocab_size})",
        )
        _check(
            bool(np.all((side >= 0) & (side < s.side_vocab_size))),
            f"{where}.side has ids outside [0, {s.side_vocab_size})",
        )
        real = np.arange(t)[None, :] < length[:, None]
        _check(bool(np.all(item[real] > 0)), f"{where}.item uses padding id 0 for a real event")
        _check(
            _finite_in_float32(dt[real]) and bool(np.all(dt[real] >= 0)),
            f"{where}.dt must be finite in float32 and >= 0 (events after the request time?)",
        )
        _check(
            bool(np.all(np.diff(np.where(real, dt, 0.0), axis=1)[real[:, 1:]] >= 0)),
            f"{where}.dt must be non-decreasing along the sequence (newest event first)",
        )
