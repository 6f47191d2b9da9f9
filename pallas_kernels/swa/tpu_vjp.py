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
from pallas_kernels.common.tpu import TileGrid, TileMask, TpuLayout
from pallas_kernels.swa.blockwise import SwaSpec, cost_estimate
from pallas_kernels.swa.tpu import row_spec


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
) -> None:
    """scratch: the fp32 (dK, dV) accumulators in VMEM, none for a banded grid."""

    def tile_grads(mask: TileMask | None) -> tuple[jax.Array, jax.Array]:
        """(dSᵀ Q, Pᵀ dO) of the visited [kv, q] tile, fp32 (dK before its scale c)."""
        q, do, delta = q_ref[...], do_ref[...], delta_ref[...]
        if mask is not None:  # queries past q_len: zero
            q = mask.zero_past_length(q)
            do = mask.zero_past_length(do)
            delta = mask.zero_past_length(delta, axis=1)
        st = mm_nt(k_ref[...], q) * spec.scale  # Sᵀ [kv, q]
        vis = None if mask is None else mask(st.shape)
        pt = softmax_probs(st, lse_ref[...], vis)
        dst = pt * (mm_nt(v_ref[...], do) - delta)  # dSᵀ = Pᵀ ⊙ (V dOᵀ - δ)
        if vis is not None:  # exactly 0 where masked, even next to a NaN in padding
            dst = jnp.where(vis, dst, 0.0)
        return mm(dst.astype(q.dtype), q), mm(pt.astype(do.dtype), do)

    def write(dk: jax.Array, dv: jax.Array) -> None:
        dk_ref[...] = (dk * spec.scale).astype(dk_ref.dtype)
        dv_ref[...] = dv.astype(dv_ref.dtype)

    if tiles.banded:  # the band holds every query that sees the block: no accumulators

        def compute(mask: TileMask | None) -> None:
            write(*tile_grads(mask))

        empty = functools.partial(_zero, dk_ref, dv_ref)
        tiles.visit_band(q_lens_ref, kv_lens_ref, q_outer=False, compute=compute, empty=empty)
        return
    dk_acc, dv_acc = scratch

    def accumulate(mask: TileMask | None) -> None:
        dk, dv = tile_grads(mask)
        dk_acc[...] += dk
        dv_acc[...] += dv

    tiles.visit(
        q_lens_ref,
        kv_lens_ref,
        q_outer=False,
        init=functools.partial(_zero, dk_acc, dv_acc),
        accumulate=accumulate,
        finish=lambda: write(dk_acc[...], dv_acc[...]),
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
) -> None:
    """scratch: the fp32 dQ accumulator in VMEM, none for a banded grid."""

    def tile_grad(mask: TileMask | None) -> jax.Array:
        """dS K of the visited [q, kv] tile, fp32 (dQ before its scale c)."""
        k, v = k_ref[...], v_ref[...]
        if mask is not None:  # keys past kv_len: zero
            k = mask.zero_past_length(k)
            v = mask.zero_past_length(v)
        s = mm_nt(q_ref[...], k) * spec.scale
        vis = None if mask is None else mask(s.shape)
        p = softmax_probs(s, lse_ref[...].T, vis)  # [1, block_q] rows -> columns
        ds = p * (mm_nt(do_ref[...], v) - delta_ref[...].T)  # P ⊙ (dO Vᵀ - δ)
        if vis is not None:  # exactly 0 where masked, even next to a NaN in padding
            ds = jnp.where(vis, ds, 0.0)
        return mm(ds.astype(k.dtype), k)

    def write(dq: jax.Array) -> None:
        dq_ref[...] = (dq * spec.scale).astype(dq_ref.dtype)

    if tiles.banded:  # the band holds every key the block sees: no accumulator

        def compute(mask: TileMask | None) -> None:
            write(tile_grad(mask))

        empty = functools.partial(_zero, dq_ref)
        tiles.visit_band(q_lens_ref, kv_lens_ref, q_outer=True, compute=compute, empty=empty)
        return
    (dq_acc,) = scratch

    def accumulate(mask: TileMask | None) -> None:
        dq_acc[...] += tile_grad(mask)

    tiles.visit(
        q_lens_ref,
        kv_lens_ref,
        q_outer=True,
        init=functools.partial(_zero, dq_acc),
        accumulate=accumulate,
        finish=lambda: write(dq_acc[...]),
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
    block_q: int,
    block_kv: int,
    interpret: bool,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(dQ, dK, dV) with the shapes of q, k, v. Inputs as for `swa_fwd_tpu`; do like q;
    lse (the forward's) and δ = rowsum(dO ⊙ O): fp32 [B, H, 1, Tq]."""
    layout = TpuLayout(q.shape[2], q.shape[3])
    tiles = TileGrid.of(
        q, k, block_q=block_q, block_kv=block_kv, window=spec.window, causal=spec.causal, band=True
    )
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
        q_row = row_spec(q_rows, q_index, rows=band and not q_outer)
        return tiles.pallas_call(
            functools.partial(kernel, spec=spec, tiles=tiles),
            q_outer=q_outer,
            in_specs=[q_spec, kv_spec, kv_spec, q_spec, q_row, q_row],
            out_specs=[layout.spec(block_out, out_index)] * len(outs),
            out_shape=[jax.ShapeDtypeStruct(layout.to_kernel(x).shape, x.dtype) for x in outs],
            scratch_shapes=[]
            if band
            else [pltpu.VMEM((block_out, q.shape[3]), jnp.float32) for _ in outs],
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
