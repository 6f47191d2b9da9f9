"""Triton-language tile helpers shared by the `jax_triton` kernels (GDPA, SWA).

Layout: [B, T, H, D] arrays, contiguous; lengths int32 [B] already clipped to [0, T]. Nothing
is padded: rows past a length and head-dim lanes past D are masked loads (BLOCK_D is the next
power of two >= D), so padded inputs are never read. Block ranges and the mask predicate
restate `common/blocks.py` (tight ranges: padded, out-of-window and non-causal blocks are
never visited, and wholly visible blocks skip the mask); WINDOW < 0 means no window.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _block_range(lo_pos, hi_pos, empty, BLOCK: tl.constexpr):
    """Blocks [lo, hi) covering positions [lo_pos, hi_pos); hi == lo when `empty`."""
    lo_pos = tl.maximum(lo_pos, 0)
    hi_pos = tl.maximum(hi_pos, lo_pos)
    lo = lo_pos // BLOCK
    hi = (hi_pos + BLOCK - 1) // BLOCK
    return lo, tl.where(empty | (hi_pos == lo_pos), lo, hi)


@triton.jit
def kv_block_range(
    qi,
    q_len,
    kv_len,
    BLOCK_Q: tl.constexpr,
    BLOCK_KV: tl.constexpr,
    WINDOW: tl.constexpr,
    CAUSAL: tl.constexpr,
):
    """KV blocks [lo, hi) query block `qi` sees (`common.blocks.kv_block_range`)."""
    first_row = qi * BLOCK_Q
    last_row = tl.minimum(first_row + BLOCK_Q, q_len) - 1
    col_lo = first_row * 0
    col_hi = kv_len
    if WINDOW >= 0:
        col_lo = first_row - WINDOW
        col_hi = tl.minimum(col_hi, last_row + WINDOW + 1)
    if CAUSAL:
        col_hi = tl.minimum(col_hi, last_row + 1)
    return _block_range(col_lo, col_hi, last_row < first_row, BLOCK_KV)


@triton.jit
def q_block_range(
    kj,
    q_len,
    kv_len,
    BLOCK_Q: tl.constexpr,
    BLOCK_KV: tl.constexpr,
    WINDOW: tl.constexpr,
    CAUSAL: tl.constexpr,
):
    """Query blocks [lo, hi) that key block `kj` gets gradient from (`blocks.q_block_range`)."""
    first_col = kj * BLOCK_KV
    last_col = tl.minimum(first_col + BLOCK_KV, kv_len) - 1
    row_lo = first_col * 0
    row_hi = q_len
    if WINDOW >= 0:
        row_lo = first_col - WINDOW
        row_hi = tl.minimum(row_hi, last_col + WINDOW + 1)
    if CAUSAL:
        row_lo = tl.maximum(row_lo, first_col)
    return _block_range(row_lo, row_hi, last_col < first_col, BLOCK_Q)


@triton.jit
def _whole_blocks(lo_pos, last_pos, empty, BLOCK: tl.constexpr):
    """Blocks [lo, hi) wholly inside positions [lo_pos, last_pos]; hi == lo when `empty`."""
    lo_pos = tl.maximum(lo_pos, 0)
    end = tl.maximum(last_pos + 1, 0)
    lo = (lo_pos + BLOCK - 1) // BLOCK
    hi = tl.maximum(end // BLOCK, lo)
    return lo, tl.where(empty, lo, hi)


@triton.jit
def unmasked_kv_block_range(
    qi,
    q_len,
    kv_len,
    BLOCK_Q: tl.constexpr,
    BLOCK_KV: tl.constexpr,
    WINDOW: tl.constexpr,
    CAUSAL: tl.constexpr,
):
    """KV blocks [lo, hi) wholly visible to query block `qi` (`blocks.unmasked_kv_block_range`)."""
    first_row = qi * BLOCK_Q
    last_row = first_row + BLOCK_Q - 1
    col_lo = first_row * 0
    col_last = kv_len - 1
    if WINDOW >= 0:
        col_lo = last_row - WINDOW
        col_last = tl.minimum(col_last, first_row + WINDOW)
    if CAUSAL:
        col_last = tl.minimum(col_last, first_row)
    return _whole_blocks(col_lo, col_last, last_row >= q_len, BLOCK_KV)


@triton.jit
def unmasked_q_block_range(
    kj,
    q_len,
    kv_len,
    BLOCK_Q: tl.constexpr,
    BLOCK_KV: tl.constexpr,
    WINDOW: tl.constexpr,
    CAUSAL: tl.constexpr,
):
    """Query blocks [lo, hi) wholly visible to key block `kj` (`blocks.unmasked_q_block_range`)."""
    first_col = kj * BLOCK_KV
    last_col = first_col + BLOCK_KV - 1
    row_lo = first_col * 0
    row_last = q_len - 1
    if WINDOW >= 0:
        row_lo = last_col - WINDOW
        row_last = tl.minimum(row_last, first_col + WINDOW)
    if CAUSAL:
        row_lo = tl.maximum(row_lo, last_col)
    return _whole_blocks(row_lo, row_last, last_col >= kv_len, BLOCK_Q)


@triton.jit
def split_at_unmasked(lo, hi, whole, UNMASKED_LOOP: tl.constexpr):
    """Blocks [lo, hi) cut at the wholly visible run `whole` = (lo', hi') into (lo, a, c, hi):
    [lo, a) and [c, hi) masked, [a, c) not. Without UNMASKED_LOOP every block is masked (a
    kernel with one loop body: fewer registers)."""
    if UNMASKED_LOOP:
        a = tl.minimum(tl.maximum(whole[0], lo), hi)
        c = tl.minimum(tl.maximum(whole[1], a), hi)
    else:
        a = hi
        c = hi
    return lo, a, c, hi


@triton.jit
def split_count(ranges, MASKED: tl.constexpr):
    """How many blocks of `ranges` = (lo, a, c, hi) (`split_at_unmasked`) are masked
    ([lo, a) and [c, hi)) or, without MASKED, wholly visible ([a, c))."""
    lo, a, c, hi = ranges
    return (a - lo) + (hi - c) if MASKED else c - a


@triton.jit
def split_block(t, ranges, MASKED: tl.constexpr):
    """The t-th of those blocks, in order."""
    lo, a, c, _ = ranges
    return tl.where(t < a - lo, lo + t, c + (t - (a - lo))) if MASKED else a + t


@triton.jit
def visible(q_idx, kv_idx, q_len, kv_len, WINDOW: tl.constexpr, CAUSAL: tl.constexpr):
    """Mask predicate over broadcastable position tiles (`common.blocks.visible`)."""
    ok = (q_idx < q_len) & (kv_idx < kv_len)
    if WINDOW >= 0:
        ok = ok & (tl.abs(q_idx - kv_idx) <= WINDOW)
    if CAUSAL:
        ok = ok & (kv_idx <= q_idx)
    return ok


@triton.jit
def _offsets(b, h, rows, dims, T: tl.constexpr, H: tl.constexpr, D: tl.constexpr):
    """Element offsets of rows `rows` × lanes `dims` of head (b, h) in a [B, T, H, D] array."""
    return ((b.to(tl.int64) * T + rows[:, None]) * H + h) * D + dims[None, :]


@triton.jit
def load_rows(ptr, b, h, rows, dims, length, T: tl.constexpr, H: tl.constexpr, D: tl.constexpr):
    """[rows, BLOCK_D] tile of head (b, h); rows >= length and lanes >= D read as 0."""
    mask = (rows[:, None] < length) & (dims[None, :] < D)
    return tl.load(ptr + _offsets(b, h, rows, dims, T, H, D), mask=mask, other=0.0)


@triton.jit
def store_rows(ptr, b, h, rows, dims, value, T: tl.constexpr, H: tl.constexpr, D: tl.constexpr):
    """Write an fp32 tile to rows < T, lanes < D of head (b, h), in the array's dtype."""
    mask = (rows[:, None] < T) & (dims[None, :] < D)
    tl.store(ptr + _offsets(b, h, rows, dims, T, H, D), value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def program_head(Q_LENS, KV_LENS, H: tl.constexpr):
    """(row-block index, b, h, q_len, kv_len) of this program on a (row blocks, B·H) grid."""
    b = tl.program_id(1) // H
    return tl.program_id(0), b, tl.program_id(1) % H, tl.load(Q_LENS + b), tl.load(KV_LENS + b)
