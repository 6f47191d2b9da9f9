"""Block bookkeeping for blocked attention kernels: which (q-block, kv-block) tiles a mask lets
through, so kernels visit only those and skip fully padded / out-of-window / non-causal ones.

Mask (same predicate as `masks.attention_mask`): query i may see key j iff
    i < q_len  and  j < kv_len  and  |i - j| <= window (if windowed)  and  j <= i (if causal).

The range helpers take scalars that may be Python ints or traced int32 values (kernel program
ids, lengths read from SMEM), so the same code runs in index maps, kernel bodies and tests.
Every returned range is tight: each block in [lo, hi) holds at least one visible position, and
no block outside it does; the `unmasked_*` ranges hold exactly the wholly visible blocks, where
kernels skip the mask (tests/kernels/test_gdpa_blocks.py checks both against the mask).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

Int = int | jax.Array


def cdiv(a: int, b: int) -> int:
    """Ceiling division of non-negative Python ints."""
    return -(-a // b)


def split_range(lo: Int, hi: Int, split: Int, per_split: int) -> tuple[Int, Int]:
    """[lo, hi) ∩ [split·per_split, (split + 1)·per_split): a block range cut to one of the
    splits of a loop (possibly empty: lo >= hi)."""
    return jnp.maximum(lo, split * per_split), jnp.minimum(hi, (split + 1) * per_split)


def round_up(x: int, multiple: int) -> int:
    """Smallest multiple of `multiple` that is >= x."""
    return cdiv(x, multiple) * multiple


def visible(
    q_idx: jax.Array,
    kv_idx: jax.Array,
    *,
    q_len: Int | None,
    kv_len: Int | None,
    window: int | None,
    causal: bool,
) -> jax.Array:
    """Elementwise mask predicate over broadcastable query/key position arrays; lengths None:
    positions known to lie inside them (no length test)."""
    tests = []
    if q_len is not None:
        tests.append(q_idx < q_len)
    if kv_len is not None:
        tests.append(kv_idx < kv_len)
    if window is not None:
        tests.append(jnp.abs(q_idx - kv_idx) <= window)
    if causal:
        tests.append(kv_idx <= q_idx)
    shape = jnp.broadcast_shapes(jnp.shape(q_idx), jnp.shape(kv_idx))
    if not tests:
        return jnp.ones(shape, bool)
    return jnp.broadcast_to(functools.reduce(jnp.logical_and, tests), shape)


def _block_range(lo_pos: Int, hi_pos: Int, empty: jax.Array, block: int) -> tuple[Int, Int]:
    """Blocks [lo, hi) covering positions [lo_pos, hi_pos); hi == lo when `empty`.

    Positions are clamped to be non-negative first, so truncating division is floor division
    (plain `lax.div` lowers everywhere: Mosaic scalar core, Triton, XLA).
    """
    lo_pos = jnp.maximum(jnp.asarray(lo_pos, jnp.int32), 0)
    hi_pos = jnp.maximum(jnp.asarray(hi_pos, jnp.int32), lo_pos)
    lo = jax.lax.div(lo_pos, block)
    hi = jax.lax.div(hi_pos + block - 1, block)
    return lo, jnp.where(empty | (hi_pos == lo_pos), lo, hi)


def kv_block_range(
    q_block: Int,
    *,
    block_q: int,
    block_kv: int,
    q_len: Int,
    kv_len: Int,
    window: int | None,
    causal: bool,
) -> tuple[Int, Int]:
    """KV blocks [lo, hi) that query block `q_block` must visit (hi == lo: none)."""
    first_row = q_block * block_q
    last_row = jnp.minimum(first_row + block_q, q_len) - 1
    col_lo: Int = 0
    col_hi: Int = kv_len
    if window is not None:
        col_lo = first_row - window
        col_hi = jnp.minimum(col_hi, last_row + window + 1)
    if causal:
        col_hi = jnp.minimum(col_hi, last_row + 1)
    return _block_range(col_lo, col_hi, last_row < first_row, block_kv)


def q_block_range(
    kv_block: Int,
    *,
    block_q: int,
    block_kv: int,
    q_len: Int,
    kv_len: Int,
    window: int | None,
    causal: bool,
) -> tuple[Int, Int]:
    """Query blocks [lo, hi) that key block `kv_block` receives gradient from (hi == lo: none)."""
    first_col = kv_block * block_kv
    last_col = jnp.minimum(first_col + block_kv, kv_len) - 1
    row_lo: Int = 0
    row_hi: Int = q_len
    if window is not None:
        row_lo = first_col - window
        row_hi = jnp.minimum(row_hi, last_col + window + 1)
    if causal:
        row_lo = jnp.maximum(row_lo, first_col)
    return _block_range(row_lo, row_hi, last_col < first_col, block_q)


def _whole_blocks(lo_pos: Int, last_pos: Int, empty: jax.Array, block: int) -> tuple[Int, Int]:
    """Blocks [lo, hi) lying wholly inside positions [lo_pos, last_pos]; hi == lo when
    `empty`. Clamped like `_block_range`, so truncating division is floor division."""
    lo_pos = jnp.maximum(jnp.asarray(lo_pos, jnp.int32), 0)
    end = jnp.maximum(jnp.asarray(last_pos, jnp.int32) + 1, 0)
    lo = jax.lax.div(lo_pos + block - 1, block)
    hi = jnp.maximum(jax.lax.div(end, block), lo)
    return lo, jnp.where(empty, lo, hi)


def unmasked_kv_block_range(
    q_block: Int,
    *,
    block_q: int,
    block_kv: int,
    q_len: Int,
    kv_len: Int,
    window: int | None,
    causal: bool,
) -> tuple[Int, Int]:
    """KV blocks [lo, hi) whose tiles with query block `q_block` are wholly visible (exactly
    the blocks `block_unmasked` holds for: they form one run): kernels skip the mask there."""
    first_row = q_block * block_q
    last_row = first_row + block_q - 1
    col_lo: Int = 0
    col_last: Int = kv_len - 1
    if window is not None:
        col_lo = last_row - window
        col_last = jnp.minimum(col_last, first_row + window)
    if causal:
        col_last = jnp.minimum(col_last, first_row)
    return _whole_blocks(col_lo, col_last, last_row >= q_len, block_kv)


def unmasked_q_block_range(
    kv_block: Int,
    *,
    block_q: int,
    block_kv: int,
    q_len: Int,
    kv_len: Int,
    window: int | None,
    causal: bool,
) -> tuple[Int, Int]:
    """Query blocks [lo, hi) whose tiles with key block `kv_block` are wholly visible."""
    first_col = kv_block * block_kv
    last_col = first_col + block_kv - 1
    row_lo: Int = 0
    row_last: Int = q_len - 1
    if window is not None:
        row_lo = last_col - window
        row_last = jnp.minimum(row_last, first_col + window)
    if causal:
        row_lo = jnp.maximum(row_lo, last_col)
    return _whole_blocks(row_lo, row_last, last_col >= kv_len, block_q)


def masked_split_loop(lo: Int, hi: Int, unmasked: tuple[Int, Int] | None, body, init):
    """fori_loop of body(j, carry, masked) over blocks [lo, hi), `masked` a Python bool: False
    for the blocks of the `unmasked` range (an `unmasked_*_block_range`), True for the rest;
    so only the boundary blocks pay for the mask. unmasked None: one masked loop."""
    if unmasked is None:
        return jax.lax.fori_loop(lo, hi, functools.partial(body, masked=True), init)
    a = jnp.clip(unmasked[0], lo, hi)
    b = jnp.clip(unmasked[1], a, hi)
    carry = jax.lax.fori_loop(lo, a, functools.partial(body, masked=True), init)
    carry = jax.lax.fori_loop(a, b, functools.partial(body, masked=False), carry)
    return jax.lax.fori_loop(b, hi, functools.partial(body, masked=True), carry)


def _max_span_blocks(
    block_outer: int, block_inner: int, num_inner: int, ext_lo: int, ext_hi: int
) -> int:
    """Max over outer blocks of the inner blocks touched by positions
    [first - ext_lo, first + block_outer - 1 + ext_hi], first = m·block_outer.

    The count depends only on first mod block_inner, which cycles with period
    block_inner / gcd(block_outer, block_inner), so scanning one period is exact.
    """
    period = block_inner // math.gcd(block_outer, block_inner)
    most = 0
    for m in range(period):
        first = m * block_outer
        lo = (first - ext_lo) // block_inner
        hi = (first + block_outer - 1 + ext_hi) // block_inner
        most = max(most, hi - lo + 1)
    return min(num_inner, most)


def max_kv_blocks(
    block_q: int, block_kv: int, num_kv_blocks: int, *, window: int | None, causal: bool
) -> int:
    """Static max of hi - lo of `kv_block_range` over q blocks and lengths: the kv-step
    extent of forward / dQ grids (a sliding window shrinks it; lengths cannot)."""
    if window is None:
        return num_kv_blocks
    return _max_span_blocks(block_q, block_kv, num_kv_blocks, window, 0 if causal else window)


def max_q_blocks(
    block_q: int, block_kv: int, num_q_blocks: int, *, window: int | None, causal: bool
) -> int:
    """Static max of hi - lo of `q_block_range`: the q-step extent of dK/dV grids."""
    if window is None:
        return num_q_blocks
    return _max_span_blocks(block_kv, block_q, num_q_blocks, 0 if causal else window, window)


def block_index(lo: Int, step: Int, hi: Int, num_blocks: int) -> Int:
    """Block to fetch at inner step `step` of range [lo, hi), clamped into [0, num_blocks).

    Steps past the range repeat the last block index, so the pipeline issues no new DMA for
    skipped steps (empty ranges repeat one in-bounds block).
    """
    return jnp.clip(jnp.minimum(lo + step, hi - 1), 0, num_blocks - 1)


def block_unmasked(
    first_row: Int,
    first_col: Int,
    *,
    block_q: int,
    block_kv: int,
    q_len: Int,
    kv_len: Int,
    window: int | None,
    causal: bool,
) -> jax.Array:
    """True when every position of the tile is visible, so the kernel may skip the mask."""
    last_row = first_row + block_q - 1
    last_col = first_col + block_kv - 1
    ok = (last_row < q_len) & (last_col < kv_len)
    if window is not None:
        ok &= (last_row - first_col <= window) & (last_col - first_row <= window)
    if causal:
        ok &= last_col <= first_row
    return ok
