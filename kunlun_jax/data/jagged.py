"""Jagged event logs <-> the padded, newest-first histories of the batch format (`spec.py`).

A jagged stream is what logs and torchrec-style pipelines hold: every row's events
concatenated in time order (oldest first), `values` [N, ...], with `offsets` int [B + 1]
(row b is values[offsets[b]:offsets[b + 1]]). The batch format pads each row to [T] newest
first, with its length; rows longer than T keep their T most recent events.
"""

from __future__ import annotations

import numpy as np

from kunlun_jax.data.validate import DataError


def newest_first_positions(
    start: np.ndarray, end: np.ndarray, max_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """(positions int [B, max_len], lengths int32 [B]): the newest min(end - start, max_len)
    entries of each row's range [start, end) of a time-ordered array, newest first; -1 past a
    row's length."""
    lengths = np.minimum(end - start, max_len)
    slot = np.arange(max_len)
    real = slot[None, :] < lengths[:, None]
    return np.where(real, end[:, None] - 1 - slot[None, :], -1), lengths.astype(np.int32)


def jagged_to_padded(
    values: np.ndarray, offsets: np.ndarray, max_len: int, *, pad: int | float = 0
) -> tuple[np.ndarray, np.ndarray]:
    """values [N, ...] (rows oldest first), offsets int [B + 1] -> (padded [B, max_len, ...]
    newest first, `pad` past each row's length; lengths int32 [B], at most max_len).

    DataError if offsets do not start at 0, decrease, or end anywhere but N."""
    values, offsets = np.asarray(values), np.asarray(offsets)
    if max_len < 1:
        raise DataError(f"max_len must be >= 1, got {max_len}")
    if offsets.ndim != 1 or offsets.size < 1 or offsets.dtype.kind not in "iu":
        raise DataError(
            f"offsets must be a 1-D integer array [B + 1], got {offsets.dtype} {offsets.shape}"
        )
    offsets = offsets.astype(np.int64)  # np.diff of unsigned offsets would wrap, never < 0
    if offsets[0] != 0 or offsets[-1] != len(values) or np.any(np.diff(offsets) < 0):
        raise DataError(
            f"offsets must rise from 0 to len(values) = {len(values)} (row b is "
            f"values[offsets[b]:offsets[b + 1]]), got {offsets[:8].tolist()}..."
        )
    positions, lengths = newest_first_positions(offsets[:-1], offsets[1:], max_len)
    real = (positions >= 0).reshape(positions.shape + (1,) * (values.ndim - 1))
    gathered = (
        values[np.maximum(positions, 0)]
        if len(values)
        else np.zeros(positions.shape + values.shape[1:], values.dtype)
    )
    return np.where(real, gathered, np.asarray(pad, values.dtype)), lengths


def padded_to_jagged(padded: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """padded [B, T, ...] newest first, lengths int [B] -> (values [sum(lengths), ...] with each
    row oldest first, offsets int64 [B + 1]): the inverse of `jagged_to_padded`.

    DataError if a length is negative or longer than T."""
    padded, lengths = np.asarray(padded), np.asarray(lengths)
    b, t = padded.shape[:2]
    if lengths.shape != (b,) or np.any(lengths < 0) or np.any(lengths > t):
        raise DataError(f"lengths must be [B = {b}] in [0, T = {t}], got {lengths[:8].tolist()}")
    slot = np.arange(t)
    real = slot[None, :] < lengths[:, None]
    oldest_first = np.where(real, lengths[:, None] - 1 - slot[None, :], 0)
    values = padded[np.arange(b)[:, None], oldest_first][real]
    return values, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
