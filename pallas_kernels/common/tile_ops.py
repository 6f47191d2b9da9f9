"""Tile-level matmuls, absolute positions and padding zeroing, used inside every blocked kernel
body."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.common.blocks import Int

_NT_DIMS = (((1,), (1,)), ((), ()))


def mm(a: jax.Array, b: jax.Array) -> jax.Array:
    """A·B with fp32 accumulation and result (MXU / tensor cores)."""
    return jnp.dot(a, b, preferred_element_type=jnp.float32)


def mm_nt(a: jax.Array, b: jax.Array) -> jax.Array:
    """A·Bᵀ with fp32 accumulation and result, without materializing Bᵀ."""
    return jax.lax.dot_general(a, b, _NT_DIMS, preferred_element_type=jnp.float32)


def tile_positions(
    first_row: Int, first_col: Int, shape: tuple[int, int], *, rows_are_q: bool
) -> tuple[jax.Array, jax.Array]:
    """Absolute (q_idx, kv_idx) int32 arrays for a 2-D tile of `shape`.

    rows_are_q: the tile is [q, kv] (forward, dQ) rather than [kv, q] (dK/dV kernel).
    """
    rows = first_row + jax.lax.broadcasted_iota(jnp.int32, shape, 0)
    cols = first_col + jax.lax.broadcasted_iota(jnp.int32, shape, 1)
    return (rows, cols) if rows_are_q else (cols, rows)


def before_length(first: Int, length: Int, shape: tuple[int, ...], axis: int = 0) -> jax.Array:
    """bool `shape`: the position along `axis` (absolute: `first` + index) is below `length`."""
    return first + jax.lax.broadcasted_iota(jnp.int32, shape, axis) < length


def zero_past(x: jax.Array, first: Int, length: Int, axis: int = 0) -> jax.Array:
    """x with its positions along `axis` (absolute: `first` + index) at or past `length`
    zeroed. A select, not a product: NaN or inf there become 0 too (0 · NaN is NaN, so masking
    the scores alone does not stop them in the next matmul)."""
    return jnp.where(before_length(first, length, x.shape, axis), x, jnp.zeros_like(x))
