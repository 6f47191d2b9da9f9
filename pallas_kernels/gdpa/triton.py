"""GDPA forward as a Pallas Triton (GPU) kernel (runs on CPU with interpret mode).

Grid (q-blocks, B·H). Each program holds one [block_q, D] query tile and runs a fori_loop over
exactly the kv blocks its mask can see, [lo, hi) from `common.blocks.kv_block_range` on the
lengths read in-kernel: padded, out-of-window and non-causal kv blocks are never visited, so a
short jagged row costs its real length, not the padded one. Tiles at ragged edges are masked
elementwise and read the values past kv_len as 0 (`load_tile`), so whatever the padding holds
(NaN, inf) contributes exactly zero. Inputs are padded by the caller to block multiples (and D
to a power of two).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.common import blocks
from pallas_kernels.common.blocks import Int
from pallas_kernels.common.tile_ops import before_length
from pallas_kernels.gdpa.blockwise import GdpaSpec, cost_estimate, mm, mm_nt, tile_positions
from pallas_kernels.gdpa.tuning import BlockSizes

# Lengths stay in global memory; kernels read their batch row's scalar.
LENGTHS_SPEC = pl.BlockSpec(memory_space=pl.ANY)


def head_spec(rows: int, dim: int, num_heads: int, *, tiled: bool) -> pl.BlockSpec:
    """BlockSpec over [B, T, H, D] for grid (i, b·H + h, ...): the [rows, D] tile i of head
    (b, h) (tiled) or that head's whole [T, D] sequence (rows = T) for in-kernel loops."""

    def index_map(i, bh, *_):
        b, h = jax.lax.div(bh, num_heads), jax.lax.rem(bh, num_heads)
        return b, i if tiled else 0, h, 0

    return pl.BlockSpec((None, rows, None, dim), index_map)


def batch_lengths(q_lens_ref, kv_lens_ref, num_heads: int) -> tuple[jax.Array, jax.Array]:
    """(q_len, kv_len) of the batch row this program works on."""
    b = jax.lax.div(pl.program_id(1), num_heads)
    return q_lens_ref[b], kv_lens_ref[b]


def tile_rows(block: int, size: int) -> pl.Slice:
    """Rows of tile `block` of `size` rows, as a slice of a whole-sequence ref."""
    return pl.ds(pl.multiple_of(block * size, size), size)


def load_tile(ref, block: Int, size: int, length: Int, *, masked: bool) -> jax.Array:
    """Tile `block` [size, D] of a whole-sequence ref [T, D]. masked (a tile the mask cuts):
    its rows at or past `length` read as 0, by a masked load (padding may hold NaN or inf,
    and the masked scores' 0 · NaN is NaN in the next matmul)."""
    rows = tile_rows(block, size)
    if not masked:
        return ref[rows, :]
    inside = before_length(block * size, length, (size, ref.shape[1]))
    return pltriton.load(ref.at[rows, :], mask=inside, other=0)


def call_triton(
    kernel,
    *,
    grid: tuple[int, ...],
    in_specs: Sequence[pl.BlockSpec],
    out_specs: Sequence[pl.BlockSpec],
    out_like: Sequence[jax.Array],
    sizes: BlockSizes,
    interpret: bool,
    kind: str,
    cost_like: tuple[jax.Array, jax.Array],
):
    """pallas_call of GDPA kernel `kind` ("fwd", "dkdv", "dq") with the Triton compiler
    params; the first two inputs are the lengths; cost_like: the kernel's (q, k)."""
    warps, stages = sizes.triton_options(backward=kind != "fwd")
    return pl.pallas_call(
        kernel,
        out_shape=[jax.ShapeDtypeStruct(x.shape, x.dtype) for x in out_like],
        grid=grid,
        in_specs=[LENGTHS_SPEC, LENGTHS_SPEC, *in_specs],
        out_specs=list(out_specs),
        compiler_params=pltriton.CompilerParams(num_warps=warps, num_stages=stages),
        interpret=interpret,
        cost_estimate=cost_estimate(*cost_like, kind),
        name=f"gdpa_{kind}_triton",
    )


def _fwd_kernel(
    q_lens_ref,
    kv_lens_ref,
    q_ref,
    k_ref,
    v_ref,
    o_ref,
    *,
    spec: GdpaSpec,
    block_q: int,
    block_kv: int,
    num_heads: int,
    unmasked_loop: bool,
) -> None:
    qi = pl.program_id(0)
    q_len, kv_len = batch_lengths(q_lens_ref, kv_lens_ref, num_heads)
    lo, hi = spec.kv_block_range(qi, block_q, block_kv, q_len, kv_len)
    unmasked = (
        spec.unmasked_kv_block_range(qi, block_q, block_kv, q_len, kv_len)
        if unmasked_loop
        else None
    )
    q = q_ref[...]

    def body(kj, acc, masked: bool):
        v = load_tile(v_ref, kj, block_kv, kv_len, masked=masked)  # masked: 0 past kv_len
        s = mm_nt(q, k_ref[tile_rows(kj, block_kv), :])
        p = spec.probs(s)
        if masked:
            q_idx, kv_idx = tile_positions(qi * block_q, kj * block_kv, s.shape, rows_are_q=True)
            p = jnp.where(spec.visible(q_idx, kv_idx, q_len, kv_len), p, 0.0)
        return acc + mm(p.astype(v.dtype), v)

    zeros = jnp.zeros(o_ref.shape, jnp.float32)
    acc = blocks.masked_split_loop(lo, hi, unmasked, body, zeros)
    o_ref[...] = (acc * spec.acc_scale).astype(o_ref.dtype)


def gdpa_fwd_triton(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_lens: jax.Array,
    kv_lens: jax.Array,
    *,
    spec: GdpaSpec,
    sizes: BlockSizes,
    interpret: bool,
) -> jax.Array:
    """O [B, Tq, H, D] from q [B, Tq, H, D], k/v [B, Tkv, H, D] (T multiples of the blocks,
    D a power of two) and int32 lengths [B] (already clipped to [0, T])."""
    batch, tq, heads, dim = q.shape
    tkv = k.shape[1]
    bq, bkv = sizes.block_q, sizes.block_kv
    kernel = functools.partial(
        _fwd_kernel,
        spec=spec,
        block_q=bq,
        block_kv=bkv,
        num_heads=heads,
        unmasked_loop=sizes.unmasked_loop,
    )
    (out,) = call_triton(
        kernel,
        grid=(tq // bq, batch * heads),
        in_specs=[
            head_spec(bq, dim, heads, tiled=True),
            head_spec(tkv, dim, heads, tiled=False),
            head_spec(tkv, dim, heads, tiled=False),
        ],
        out_specs=[head_spec(bq, dim, heads, tiled=True)],
        out_like=[q],
        sizes=sizes,
        interpret=interpret,
        kind="fwd",
        cost_like=(q, k),
    )(q_lens, kv_lens, q, k, v)
    return out
