"""Jagged event logs <-> padded newest-first histories."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kunlun_jax.data.jagged import jagged_to_padded, padded_to_jagged
from kunlun_jax.data.validate import DataError


def test_rows_are_padded_newest_first_keeping_the_most_recent():
    values = np.array([1, 2, 3, 10, 20, 30, 40, 50])  # row 0: 1 2 3, row 1: empty, row 2: 10..50
    padded, lengths = jagged_to_padded(values, np.array([0, 3, 3, 8]), 4, pad=-1)
    np.testing.assert_array_equal(padded, [[3, 2, 1, -1], [-1] * 4, [50, 40, 30, 20]])
    np.testing.assert_array_equal(lengths, [3, 0, 4])
    assert lengths.dtype == np.int32


@settings(max_examples=50, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 9), min_size=1, max_size=6),
    max_len=st.integers(1, 12),
    width=st.integers(0, 2),
)
def test_padded_to_jagged_inverts_jagged_to_padded(lengths, max_len, width):
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    values = np.arange(offsets[-1] * max(width, 1), dtype=np.float32)
    values = values.reshape(-1, width) if width else values
    padded, got_lengths = jagged_to_padded(values, offsets, max_len)
    assert padded.shape == (len(lengths), max_len, *values.shape[1:])
    back, back_offsets = padded_to_jagged(padded, got_lengths)
    kept = [values[end - n : end] for end, n in zip(offsets[1:], got_lengths, strict=True)]
    np.testing.assert_array_equal(back, np.concatenate(kept) if kept else back)
    np.testing.assert_array_equal(back_offsets, np.concatenate([[0], np.cumsum(got_lengths)]))


@pytest.mark.parametrize(
    ("offsets", "max_len", "message"),
    [
        ([1, 3], 4, "offsets must rise from 0 to len"),
        ([0, 3, 2, 4], 4, "offsets must rise from 0 to len"),
        ([0, 3], 4, r"len\(values\) = 4"),
        ([[0, 4]], 4, "offsets must be a 1-D integer array"),
        ([0, 4], 0, "max_len must be >= 1"),
    ],
)
@pytest.mark.parametrize("dtype", [np.int64, np.uint32])
def test_bad_offsets_name_the_problem(offsets, max_len, message, dtype):
    with pytest.raises(DataError, match=message):
        jagged_to_padded(np.arange(4), np.array(offsets, dtype), max_len)


def test_lengths_beyond_the_padding_are_refused():
    with pytest.raises(DataError, match=r"lengths must be \[B = 2\] in \[0, T = 3\]"):
        padded_to_jagged(np.zeros((2, 3)), np.array([1, 4]))
