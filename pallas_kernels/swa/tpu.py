"""SWA forward as a Pallas Mosaic-TPU flash-attention kernel (runs on CPU in interpret mode).

Grid (B, H, q-blocks, kv-steps), kv innermost and "arbitrary" (`common.tpu.TileGrid`, shared
with GDPA). Step t of q block i visits kv block lo_i + t, where [lo_i, hi_i) is the tight range
of kv blocks the mask lets query block i see (`common.blocks.kv_block_range`, from the
scalar-prefetched lengths). The kv-step extent is the static bound `max_kv_blocks`, so the grid
itself is O(T·w): a q block visits about (block_q + 2w) / block_kv + 1 kv blocks, never the
whole sequence. Steps past hi_i (padding, causal) do no compute and repeat the last block
index, so the pipeline issues no DMA for them; interior tiles skip the mask arithmetic.
Banded (`TileGrid.can_band`: a window, 128-row tiles): one step per q block over a band of
keys [i·block_q - w, (i+1)·block_q + w), its first row element-indexed (rounded down to 128),
in place of several block steps: fewer steps, no more rows, and no running statistics: one
softmax over the band (`softmax_tile`) writes O and lse, with no VMEM scratch to initialize,
rescale and read back. The masked tile zeroes the values past kv_len (a band reaches past the
lengths; 0 · NaN would not vanish).
A step may take several heads (`TileGrid.of(heads=)`): their tiles are straight-line code one
after another, so one step's index arithmetic and DMA issue serve them all and the scheduler
interleaves their dependent chains.

Per visited tile: the online-softmax update of `common.softmax` on fp32 VMEM statistics. The
kernel writes O and the logsumexp residual lse [B, H, 1, Tq] (fp32, lane-dense rows) for the
backward (`tpu_vjp.py`). Inputs are padded by the caller to block multiples.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.common.softmax import (
    mask_scores,
    online_softmax_step,
    softmax_finish,
    softmax_tile,
)
from pallas_kernels.common.tile_ops import mm_nt
from pallas_kernels.common.tiles import BlockSizes
from pallas_kernels.common.tpu import (
    IndexFn,
    TileGrid,
    TileMask,
    TpuLayout,
    grid_and_layout,
    head_block_dim,
    head_block_index,
)
from pallas_kernels.swa.blockwise import SwaSpec, cost_estimate


def row_spec(block_q: int, index: IndexFn, *, rows: bool = False, heads: int = 1) -> pl.BlockSpec:
    """BlockSpec of [1, block_q] rows of a per-query statistic [B, H, 1, Tq] (lse, δ) for
    `heads` heads (`head_row` picks one); `index(*grid_ids, *prefetch_refs) -> (b, head block,
    q_block)`, or with rows=True (b, head block, first query) for a band. On a real TPU block_q
    and a band's first query must be multiples of 128 (lane dim), or the block cover Tq."""

    def index_map(*args):
        b, h, qi = index(*args)
        return b, head_block_index(h, heads, rows), 0, qi

    row = (pl.Element(1), pl.Element(block_q)) if rows else (1, block_q)
    return pl.BlockSpec((None, head_block_dim(heads, rows), *row), index_map)


def head_row(ref, j: int, heads: int):
    """Head j's [1, block_q] row of a `row_spec` ref of `heads` heads."""
    return ref.at[j] if heads > 1 else ref


def _fwd_kernel(
    q_lens_ref,
    kv_lens_ref,
    q_ref,
    k_ref,
    v_ref,
    o_ref,
    lse_ref,
    *scratch,
    spec: SwaSpec,
    tiles: TileGrid,
    layout: TpuLayout,
) -> None:
    """Tiles hold heads_per_block heads (head j's via `layout.head`). scratch: the running
    (m, l, acc) of each head, [heads, block_q, 1 / D] fp32 in VMEM; none for a banded grid."""
    heads = tiles.heads_per_block

    def scores(mask: TileMask | None, j: int = 0) -> tuple[jax.Array, jax.Array]:
        """(masked scores [block_q, kv rows] fp32, values) of head j's visited tile."""
        q, k = layout.head(q_ref, j)[...], layout.head(k_ref, j)[...]
        s = mm_nt(q, k) * spec.scale
        v = layout.head(v_ref, j)[...]
        if mask is not None:
            s = mask_scores(s, mask(s.shape))
            v = mask.zero_past_length(v)  # keys past kv_len: zero
        return s, v

    def write(o: jax.Array, lse: jax.Array, j: int = 0) -> None:
        layout.head(o_ref, j)[...] = o.astype(o_ref.dtype)
        head_row(lse_ref, j, heads)[...] = lse.T  # [block_q, 1] column -> [1, block_q] row

    if tiles.banded:  # the band holds every key the block sees: one softmax, no scratch

        def empty() -> None:
            o_ref[...] = jnp.zeros_like(o_ref)
            lse_ref[...] = jnp.full_like(lse_ref, jnp.inf)

        def compute(mask: TileMask | None) -> None:
            for j in range(heads):  # straight-line code: the heads' chains interleave
                write(*softmax_tile(*scores(mask, j)), j)

        tiles.visit_band(q_lens_ref, kv_lens_ref, q_outer=True, compute=compute, empty=empty)
        return
    m_ref, l_ref, acc_ref = scratch

    def init() -> None:
        m_ref[...] = jnp.full_like(m_ref, -jnp.inf)
        l_ref[...] = jnp.zeros_like(l_ref)
        acc_ref[...] = jnp.zeros_like(acc_ref)

    def accumulate(mask: TileMask | None) -> None:
        for j in range(heads):
            state = online_softmax_step(*scores(mask, j), m_ref[j], l_ref[j], acc_ref[j])
            m_ref[j], l_ref[j], acc_ref[j] = state

    def finish() -> None:
        for j in range(heads):
            write(*softmax_finish(m_ref[j], l_ref[j], acc_ref[j]), j)

    tiles.visit(
        q_lens_ref, kv_lens_ref, q_outer=True, init=init, accumulate=accumulate, finish=finish
    )


def swa_fwd_tpu(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_lens: jax.Array,
    kv_lens: jax.Array,
    *,
    spec: SwaSpec,
    sizes: BlockSizes,
    interpret: bool,
) -> tuple[jax.Array, jax.Array]:
    """(O [B, Tq, H, D], lse [B, H, 1, Tq] fp32) from q [B, Tq, H, D], k/v [B, Tkv, H, D]
    (T multiples of the forward tiles of `sizes`) and int32 lengths [B] (already clipped to
    [0, T]). lse = +inf on rows that see no key (O = 0 there). Up to `sizes.heads` heads per
    grid step (`TileGrid.of`), compiled with a scoped-VMEM limit of `sizes.vmem_limit_mib`."""
    batch, tq, num_heads, dim = q.shape
    tiles, layout = grid_and_layout(q, k, spec, sizes, backward=False, band=True)
    block_q = tiles.block_q
    q_index, kv_index, o_index = tiles.index_maps(q_outer=True)
    kv_rows = tiles.inner_rows(q_outer=True)
    o, lse = tiles.pallas_call(
        functools.partial(_fwd_kernel, spec=spec, tiles=tiles, layout=layout),
        q_outer=True,
        in_specs=[
            layout.spec(block_q, q_index),
            layout.spec(kv_rows, kv_index, rows=tiles.banded),
            layout.spec(kv_rows, kv_index, rows=tiles.banded),
        ],
        out_specs=[
            layout.spec(block_q, o_index),
            row_spec(block_q, o_index, heads=tiles.heads_per_block),
        ],
        out_shape=[
            jax.ShapeDtypeStruct(layout.to_kernel(q).shape, q.dtype),
            jax.ShapeDtypeStruct((batch, num_heads, 1, tq), jnp.float32),
        ],
        scratch_shapes=[]
        if tiles.banded
        else [
            pltpu.VMEM((tiles.heads_per_block, block_q, cols), jnp.float32) for cols in (1, 1, dim)
        ],
        cost_estimate=cost_estimate(
            q, "fwd", block_outer=block_q, steps=tiles.steps(True), block_inner=kv_rows
        ),
        name="swa_fwd_tpu",
        interpret=interpret,
    )(q_lens, kv_lens, layout.to_kernel(q), layout.to_kernel(k), layout.to_kernel(v))
    return layout.from_kernel(o), lse
