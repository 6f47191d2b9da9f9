"""GDPA forward as a Pallas Mosaic-TPU kernel (runs on CPU with interpret mode).

Grid (B, H, q-blocks, kv-steps), kv innermost and "arbitrary" (`common.tpu.TileGrid`): step t
of q block i visits kv block lo_i + t, where [lo_i, hi_i) is the tight range of kv blocks the
mask lets query block i see (`common.blocks.kv_block_range`, from the scalar-prefetched
lengths). The kv-step extent is the static bound `max_kv_blocks`, so a sliding window shrinks
the grid itself; steps past hi_i (padding, causal) do no compute, and their index maps repeat
the last block, so the pipeline issues no DMA for them. Interior tiles skip the mask
arithmetic entirely; masked tiles zero the values past kv_len (`TileMask.zero_past_length`), so
whatever the padding holds (NaN, inf) contributes exactly zero. A step may take several heads
(`TileGrid.of(heads=)`, the tuning table's `heads`): one step's index arithmetic and DMA issue
then serve them all.

Inputs are padded by the caller to block multiples; lengths int32 [B] mark the real rows.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.common.tiles import BlockSizes
from pallas_kernels.common.tpu import TileGrid, TileMask, TpuLayout, grid_and_layout
from pallas_kernels.gdpa.blockwise import GdpaSpec, cost_estimate, mm, mm_nt


def _fwd_kernel(
    q_lens_ref,
    kv_lens_ref,
    q_ref,
    k_ref,
    v_ref,
    o_ref,
    acc_ref,
    *,
    spec: GdpaSpec,
    tiles: TileGrid,
    layout: TpuLayout,
) -> None:
    """Tiles hold heads_per_block heads (head j's via `layout.head`); acc_ref: each head's
    fp32 accumulator [heads, block_q, D] in VMEM."""
    heads = tiles.heads_per_block

    def init() -> None:
        acc_ref[...] = jnp.zeros_like(acc_ref)

    def accumulate(mask: TileMask | None) -> None:
        for j in range(heads):  # straight-line code: the heads' chains interleave
            q, k, v = (layout.head(ref, j)[...] for ref in (q_ref, k_ref, v_ref))
            s = mm_nt(q, k)
            p = spec.probs(s)
            if mask is not None:
                p = jnp.where(mask(s.shape), p, 0.0)
                v = mask.zero_past_length(v)  # keys past kv_len: zero (0 · NaN is NaN)
            acc_ref[j] += mm(p.astype(v.dtype), v)

    def finish() -> None:
        for j in range(heads):
            layout.head(o_ref, j)[...] = (acc_ref[j] * spec.acc_scale).astype(o_ref.dtype)

    tiles.visit(
        q_lens_ref, kv_lens_ref, q_outer=True, init=init, accumulate=accumulate, finish=finish
    )


def gdpa_fwd_tpu(
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
    """O [B, Tq, H, D] from q [B, Tq, H, D], k/v [B, Tkv, H, D] (T multiples of the forward
    tiles of `sizes`) and int32 lengths [B] (already clipped to [0, T]); up to `sizes.heads`
    heads per grid step, compiled with a scoped-VMEM limit of `sizes.vmem_limit_mib`."""
    tiles, layout = grid_and_layout(q, k, spec, sizes, backward=False)
    block_q, block_kv = tiles.block_q, tiles.block_kv
    q_index, kv_index, o_index = tiles.index_maps(q_outer=True)
    (out,) = tiles.pallas_call(
        functools.partial(_fwd_kernel, spec=spec, tiles=tiles, layout=layout),
        q_outer=True,
        in_specs=[
            layout.spec(block_q, q_index),
            layout.spec(block_kv, kv_index),
            layout.spec(block_kv, kv_index),
        ],
        out_specs=[layout.spec(block_q, o_index)],
        out_shape=[jax.ShapeDtypeStruct(layout.to_kernel(q).shape, q.dtype)],
        scratch_shapes=[pltpu.VMEM((tiles.heads_per_block, block_q, q.shape[3]), jnp.float32)],
        cost_estimate=cost_estimate(q, k, "fwd"),
        name="gdpa_fwd_tpu",
        interpret=interpret,
    )(q_lens, kv_lens, layout.to_kernel(q), layout.to_kernel(k), layout.to_kernel(v))
    return layout.from_kernel(out)
