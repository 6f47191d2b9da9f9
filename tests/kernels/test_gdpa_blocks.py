"""Block-skipping bookkeeping (`pallas_kernels.common.blocks`) against a brute-force mask.

The kernels visit exactly the ranges these helpers return, so "tight" here means: every
(q-block, kv-block) tile holding a visible position is visited, and no other tile is.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pallas_kernels.common import blocks
from pallas_kernels.common.tpu import TileGrid, TileMask


def _mask(tq: int, tkv: int, q_len: int, kv_len: int, window: int | None, causal: bool):
    i, j = np.arange(tq)[:, None], np.arange(tkv)[None, :]
    return np.asarray(
        blocks.visible(i, j, q_len=q_len, kv_len=kv_len, window=window, causal=causal)
    )


def _tiles_with_visible(mask: np.ndarray, block_q: int, block_kv: int) -> np.ndarray:
    """[nq, nkv] bool: tile holds at least one visible position."""
    nq, nkv = mask.shape[0] // block_q, mask.shape[1] // block_kv
    return mask.reshape(nq, block_q, nkv, block_kv).any(axis=(1, 3))


def _in_ranges(lo: np.ndarray, hi: np.ndarray, n: int) -> np.ndarray:
    """[len(lo), n] bool: inner block j lies in outer block i's range [lo[i], hi[i])."""
    return (np.arange(n) >= lo[:, None]) & (np.arange(n) < hi[:, None])


def _tiles_all_visible(mask: np.ndarray, block_q: int, block_kv: int) -> np.ndarray:
    nq, nkv = mask.shape[0] // block_q, mask.shape[1] // block_kv
    return mask.reshape(nq, block_q, nkv, block_kv).all(axis=(1, 3))


_T = 24  # one sequence length (padded) for all examples: eager jnp ops compile once per shape


@st.composite
def _configs(draw):
    block_q = draw(st.sampled_from((1, 2, 3, 4, 6, 8)))
    block_kv = draw(st.sampled_from((1, 2, 3, 4, 6, 8)))
    nq, nkv = _T // block_q, _T // block_kv
    q_len, kv_len = draw(st.integers(0, _T)), draw(st.integers(0, _T))
    window = draw(st.one_of(st.none(), st.integers(0, 12)))
    return block_q, block_kv, nq, nkv, q_len, kv_len, window, draw(st.booleans())


@settings(max_examples=100, deadline=None, derandomize=True)
@given(_configs())
def test_block_ranges_are_tight(config):
    block_q, block_kv, nq, nkv, q_len, kv_len, window, causal = config
    mask = _mask(nq * block_q, nkv * block_kv, q_len, kv_len, window, causal)
    needed = _tiles_with_visible(mask, block_q, block_kv)
    kw = dict(
        block_q=block_q, block_kv=block_kv, q_len=q_len, kv_len=kv_len, window=window, causal=causal
    )
    kv_steps = blocks.max_kv_blocks(block_q, block_kv, nkv, window=window, causal=causal)
    q_steps = blocks.max_q_blocks(block_q, block_kv, nq, window=window, causal=causal)

    # The helpers are elementwise: check all outer blocks in one call. Arrays always have _T
    # entries (ids past the last block get empty ranges), so jnp compiles once per shape.
    ids = np.arange(_T)
    lo, hi = (np.broadcast_to(x, _T)[:nq] for x in blocks.kv_block_range(ids, **kw))
    visited = _in_ranges(lo, hi, nkv)
    np.testing.assert_array_equal(visited, needed)
    assert (hi - lo <= kv_steps).all()
    # Steps past a range fetch its last block again (in bounds): no new DMA for skipped steps.
    fetched = np.asarray(blocks.block_index(lo[:, None], ids, hi[:, None], nkv))[:, :kv_steps]
    assert ((fetched >= 0) & (fetched < nkv)).all()
    for qi in range(nq):
        n = hi[qi] - lo[qi]
        assert list(fetched[qi, :n]) == list(range(lo[qi], hi[qi]))
        assert len(set(fetched[qi, max(n - 1, 0) :])) == 1

    lo, hi = (np.broadcast_to(x, _T)[:nkv] for x in blocks.q_block_range(ids, **kw))
    visited = _in_ranges(lo, hi, nq)
    np.testing.assert_array_equal(visited, needed.T)
    assert (hi - lo <= q_steps).all()


@settings(max_examples=100, deadline=None, derandomize=True)
@given(_configs())
def test_block_unmasked_exactly_when_all_visible(config):
    block_q, block_kv, nq, nkv, q_len, kv_len, window, causal = config
    mask = _mask(nq * block_q, nkv * block_kv, q_len, kv_len, window, causal)
    full = _tiles_all_visible(mask, block_q, block_kv)
    got = blocks.block_unmasked(
        np.arange(nq)[:, None] * block_q,
        np.arange(nkv)[None, :] * block_kv,
        block_q=block_q,
        block_kv=block_kv,
        q_len=q_len,
        kv_len=kv_len,
        window=window,
        causal=causal,
    )
    np.testing.assert_array_equal(np.broadcast_to(got, full.shape), full)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(_configs())
def test_unmasked_ranges_hold_exactly_the_wholly_visible_blocks(config):
    block_q, block_kv, nq, nkv, q_len, kv_len, window, causal = config
    mask = _mask(nq * block_q, nkv * block_kv, q_len, kv_len, window, causal)
    full = _tiles_all_visible(mask, block_q, block_kv)
    kw = dict(
        block_q=block_q, block_kv=block_kv, q_len=q_len, kv_len=kv_len, window=window, causal=causal
    )
    ids = np.arange(_T)  # as in test_block_ranges_are_tight: one compile per shape
    lo, hi = (np.broadcast_to(x, _T)[:nq] for x in blocks.unmasked_kv_block_range(ids, **kw))
    assert (lo <= hi).all()
    np.testing.assert_array_equal(_in_ranges(lo, hi, nkv), full)
    lo, hi = (np.broadcast_to(x, _T)[:nkv] for x in blocks.unmasked_q_block_range(ids, **kw))
    assert (lo <= hi).all()
    np.testing.assert_array_equal(_in_ranges(lo, hi, nq), full.T)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(_configs())
def test_tiles_inside_the_lengths_need_only_the_window_mask(config):
    """`TileGrid.tile_at` flags a tile inside_lengths exactly when it lies inside both
    lengths, and there the window / causal mask alone (`TileMask(inside_lengths=True)`, the
    kernels' cheaper masked variant) is the brute-force mask, in both tile orientations."""
    block_q, block_kv, nq, nkv, q_len, kv_len, window, causal = config
    mask = _mask(nq * block_q, nkv * block_kv, q_len, kv_len, window, causal)
    grid = TileGrid(1, 1, block_q, block_kv, nq, nkv, window, causal)
    qi, kj = np.arange(nq)[:, None], np.arange(nkv)[None, :]
    tile = grid.tile_at(qi, kj - grid.inner_range(qi, q_len, kv_len, True)[0], q_len, kv_len, True)
    inside = ((qi + 1) * block_q <= q_len) & ((kj + 1) * block_kv <= kv_len)
    np.testing.assert_array_equal(np.broadcast_to(tile.inside_lengths, inside.shape), inside)
    for i, j in zip(*np.nonzero(inside), strict=True):
        want = mask[i * block_q : (i + 1) * block_q, j * block_kv : (j + 1) * block_kv]
        for q_outer, shape, oriented in ((True, want.shape, want), (False, want.T.shape, want.T)):
            first = dict(first_q=int(i) * block_q, first_kv=int(j) * block_kv)
            tile_mask = TileMask(
                **first, q_len=q_len, kv_len=kv_len, window=window, causal=causal,
                q_outer=q_outer, inside_lengths=True,
            )  # fmt: skip
            np.testing.assert_array_equal(np.asarray(tile_mask(shape)), oriented)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(
    ("block_q", "block_kv", "window"), [(4, 4, 3), (8, 4, 5), (4, 8, 9), (6, 4, 2)]
)
def test_static_step_bound_is_attained(block_q, block_kv, window, causal):
    """With full lengths and enough blocks, some outer block needs exactly the grid extent."""
    nq = nkv = 24
    kw = dict(window=window, causal=causal)
    lens = dict(block_q=block_q, block_kv=block_kv, q_len=nq * block_q, kv_len=nkv * block_kv)
    kv_spans = [np.subtract(*blocks.kv_block_range(i, **lens, **kw)[::-1]) for i in range(nq)]
    q_spans = [np.subtract(*blocks.q_block_range(j, **lens, **kw)[::-1]) for j in range(nkv)]
    assert max(kv_spans) == blocks.max_kv_blocks(block_q, block_kv, nkv, **kw)
    assert max(q_spans) == blocks.max_q_blocks(block_q, block_kv, nq, **kw)


def test_window_shrinks_the_grid():
    """T=4096 self-attention, window 100: 3 of 32 kv blocks of 128 per q block (2 causal)."""
    assert blocks.max_kv_blocks(128, 128, 32, window=100, causal=False) == 3
    assert blocks.max_kv_blocks(128, 128, 32, window=100, causal=True) == 2
    assert blocks.max_kv_blocks(512, 512, 8, window=100, causal=True) == 2
    assert blocks.max_kv_blocks(128, 128, 32, window=None, causal=True) == 32


def test_padded_rows_visit_nothing():
    """A batch row of real length 100 in a 4096 pad visits 1 of 32 kv blocks per real q block
    and none for the 31 fully padded q blocks."""
    kw = dict(block_q=128, block_kv=128, q_len=100, kv_len=100, window=None, causal=False)
    spans = [tuple(int(x) for x in blocks.kv_block_range(qi, **kw)) for qi in range(32)]
    assert spans[0] == (0, 1)
    assert all(hi == lo for lo, hi in spans[1:])
