"""SWA backward as two Pallas Mosaic-TPU kernels (runs on CPU in interpret mode).

Flash-attention backward from the forward's logsumexp (no T×T state): per visited tile
P = exp(c·S - lse) is recomputed and, with δ = rowsum(dO ⊙ O) (computed by the caller),
dS = P ⊙ (dP - δ) (`common.softmax`).
- dK/dV kernel, grid (B, H, kv-blocks, q-steps): kv block j walks the tight range of query
  blocks that see it (`common.blocks.q_block_range`), accumulating in fp32 VMEM
      dV_j += Pᵀ dO,   dK_j += c·dSᵀ Q      (tiles computed transposed, [kv, q], so lse and δ
  are used as [1, block_q] rows, as stored).
- dQ kernel, grid (B, H, q-blocks, kv-steps), the forward's kv ranges:  dQ_i += c·dS K.
Both grids are O(T·w) like the forward's; skipping, DMA elision, unmasked interior tiles and
bands work as there (`common.tpu.TileGrid`): a banded kernel writes its outputs from the one
tile, with no accumulators in VMEM scratch. Masked tiles zero the inner operands past their
length (queries, dO and δ for dK/dV; keys and values for dQ) and set dS to exactly 0 where
masked, so nothing in padding reaches a gradient.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.common.softmax import softmax_probs
from pallas_kernels.common.tile_ops import mm, mm_nt
from pallas_kernels.common.tiles import BlockSizes
from pallas_kernels.common.tpu import TileGrid, TileMask, TpuLayout, grid_and_layout
from pallas_kernels.swa.blockwise import SwaSpec, cost_estimate
from pallas_kernels.swa.tpu import head_row, row_spec


def _zero(*refs) -> None:
    """Zero the output tiles of an outer block that sees nothing."""
    for ref in refs:
        ref[...] = jnp.zeros_like(ref)


def _dkdv_kernel(
    q_lens_ref,
    kv_lens_ref,
    q_ref,
    k_ref,
    v_ref,
    do_ref,
    lse_ref,
    delta_ref,
    dk_ref,
    dv_ref,
    *scratch,
    spec: SwaSpec,
    tiles: TileGrid,
    layout: TpuLayout,
) -> None:
    """Tiles hold heads_per_block heads (head j's via `layout.head`). scratch: each head's fp32
    (dK, dV) accumulators [heads, block_kv, D] in VMEM; none for a banded grid."""
    heads = tiles.heads_per_block

    def tile_grads(mask: TileMask | None, j: int = 0) -> tuple[jax.Array, jax.Array]:
        """(dSᵀ Q, Pᵀ dO) of head j's visited [kv, q] tile, fp32 (dK before its scale c)."""
        q, do = layout.head(q_ref, j)[...], layout.head(do_ref, j)[...]
        delta = head_row(delta_ref, j, heads)[...]
        if mask is not None:  # queries past q_len: zero
            q = mask.zero_past_length(q)
            do = mask.zero_past_length(do)
            delta = mask.zero_past_length(delta, axis=1)
        st = mm_nt(layout.head(k_ref, j)[...], q) * spec.scale  # Sᵀ [kv, q]
        vis = None if mask is None else mask(st.shape)
        pt = softmax_probs(st, head_row(lse_ref, j, heads)[...], vis)
        dst = pt * (mm_nt(layout.head(v_ref, j)[...], do) - delta)  # Pᵀ ⊙ (V dOᵀ - δ)
        if vis is not None:  # exactly 0 where masked, even next to a NaN in padding
            dst = jnp.where(vis, dst, 0.0)
        return mm(dst.astype(q.dtype), q), mm(pt.astype(do.dtype), do)

    def write(dk: jax.Array, dv: jax.Array, j: int = 0) -> None:
        layout.head(dk_ref, j)[...] = (dk * spec.scale).astype(dk_ref.dtype)
        layout.head(dv_ref, j)[...] = dv.astype(dv_ref.dtype)

    if tiles.banded:  # the band holds every query that sees the block: no accumulators

        def compute(mask: TileMask | None) -> None:
            for j in range(heads):
                write(*tile_grads(mask, j), j)

        empty = functools.partial(_zero, dk_ref, dv_ref)
        tiles.visit_band(q_lens_ref, kv_lens_ref, q_outer=False, compute=compute, empty=empty)
        return
    dk_acc, dv_acc = scratch

    def accumulate(mask: TileMask | None) -> None:
        for j in range(heads):
            dk, dv = tile_grads(mask, j)
            dk_acc[j] += dk
            dv_acc[j] += dv

    def finish() -> None:
        for j in range(heads):
            write(dk_acc[j], dv_acc[j], j)

    tiles.visit(
        q_lens_ref,
        kv_lens_ref,
        q_outer=False,
        init=functools.partial(_zero, dk_acc, dv_acc),
        accumulate=accumulate,
        finish=finish,
    )


def _dq_kernel(
    q_lens_ref,
    kv_lens_ref,
    q_ref,
    k_ref,
    v_ref,
    do_ref,
    lse_ref,
    delta_ref,
    dq_ref,
    *scratch,
    spec: SwaSpec,
    tiles: TileGrid,
    layout: TpuLayout,
) -> None:
    """Tiles hold heads_per_block heads (head j's via `layout.head`). scratch: each head's fp32
    dQ accumulator [heads, block_q, D] in VMEM; none for a banded grid."""
    heads = tiles.heads_per_block

    def tile_grad(mask: TileMask | None, j: int = 0) -> jax.Array:
        """dS K of head j's visited [q, kv] tile, fp32 (dQ before its scale c)."""
        k, v = layout.head(k_ref, j)[...], layout.head(v_ref, j)[...]
        if mask is not None:  # keys past kv_len: zero
            k = mask.zero_past_length(k)
            v = mask.zero_past_length(v)
        s = mm_nt(layout.head(q_ref, j)[...], k) * spec.scale
        vis = None if mask is None else mask(s.shape)
        lse, delta = (head_row(ref, j, heads)[...].T for ref in (lse_ref, delta_ref))
        p = softmax_probs(s, lse, vis)  # [1, block_q] rows -> columns
        ds = p * (mm_nt(layout.head(do_ref, j)[...], v) - delta)  # P ⊙ (dO Vᵀ - δ)
        if vis is not None:  # exactly 0 where masked, even next to a NaN in padding
            ds = jnp.where(vis, ds, 0.0)
        return mm(ds.astype(k.dtype), k)

    def write(dq: jax.Array, j: int = 0) -> None:
        layout.head(dq_ref, j)[...] = (dq * spec.scale).astype(dq_ref.dtype)

    if tiles.banded:  # the band holds every key the block sees: no accumulator

        def compute(mask: TileMask | None) -> None:
            for j in range(heads):
                write(tile_grad(mask, j), j)

        empty = functools.partial(_zero, dq_ref)
        tiles.visit_band(q_lens_ref, kv_lens_ref, q_outer=True, compute=compute, empty=empty)
        return
    (dq_acc,) = scratch

    def accumulate(mask: TileMask | None) -> None:
        for j in range(heads):
            dq_acc[j] += tile_grad(mask, j)

    def finish() -> None:
        for j in range(heads):
            write(dq_acc[j], j)

    tiles.visit(
        q_lens_ref,
        kv_lens_ref,
        q_outer=True,
        init=functools.partial(_zero, dq_acc),
        accumulate=accumulate,
        finish=finish,
    )


def swa_bwd_tpu(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    do: jax.Array,
    lse: jax.Array,
    delta: jax.Array,
    q_lens: jax.Array,
    kv_lens: jax.Array,
    *,
    spec: SwaSpec,
    sizes: BlockSizes,
    interpret: bool,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(dQ, dK, dV) with the shapes of q, k, v. Inputs as for `swa_fwd_tpu`, with the backward
    tiles of `sizes`; do like q; lse (the forward's) and δ = rowsum(dO ⊙ O): fp32
    [B, H, 1, Tq]."""
    tiles, layout = grid_and_layout(q, k, spec, sizes, backward=True, band=True)
    block_q, block_kv = tiles.block_q, tiles.block_kv
    inputs = (*(layout.to_kernel(x) for x in (q, k, v, do)), lse, delta)

    def call(kernel, q_outer: bool, outs: tuple[jax.Array, ...], kind: str) -> list[jax.Array]:
        """Outputs like `outs` (tiled along the outer axis) from q, k, v, do, lse, δ."""
        q_index, kv_index, out_index = tiles.index_maps(q_outer)
        block_in, band = tiles.inner_rows(q_outer), tiles.banded
        if q_outer:  # q blocks outer, kv tiles (or bands) inner
            block_out, q_rows, kv_rows = block_q, block_q, block_in
        else:
            block_out, q_rows, kv_rows = block_kv, block_in, block_kv
        q_spec = layout.spec(q_rows, q_index, rows=band and not q_outer)
        kv_spec = layout.spec(kv_rows, kv_index, rows=band and q_outer)
        q_row = row_spec(q_rows, q_index, rows=band and not q_outer, heads=tiles.heads_per_block)
        return tiles.pallas_call(
            functools.partial(kernel, spec=spec, tiles=tiles, layout=layout),
            q_outer=q_outer,
            in_specs=[q_spec, kv_spec, kv_spec, q_spec, q_row, q_row],
            out_specs=[layout.spec(block_out, out_index)] * len(outs),
            out_shape=[jax.ShapeDtypeStruct(layout.to_kernel(x).shape, x.dtype) for x in outs],
            scratch_shapes=[]
            if band
            else [
                pltpu.VMEM((tiles.heads_per_block, block_out, q.shape[3]), jnp.float32)
                for _ in outs
            ],
            cost_estimate=cost_estimate(
                outs[0],
                kind,
                block_outer=block_out,
                steps=tiles.steps(q_outer),
                block_inner=block_in,
            ),
            name=f"swa_{kind}_tpu",
            interpret=interpret,
        )(q_lens, kv_lens, *inputs)

    dk, dv = call(_dkdv_kernel, False, (k, v), "dkdv")  # outer kv blocks, inner q steps
    (dq,) = call(_dq_kernel, True, (q,), "dq")  # outer q blocks, inner kv steps
    return tuple(layout.from_kernel(x) for x in (dq, dk, dv))  # type: ignore[return-value]
