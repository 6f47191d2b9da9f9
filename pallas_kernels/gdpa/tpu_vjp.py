"""GDPA backward as two Pallas Mosaic-TPU kernels (runs on CPU with interpret mode).

No softmax statistics: S = Q Kᵀ is recomputed per tile, nothing T×T is stored.
- dK/dV kernel, grid (B, H, kv-blocks, q-steps): for kv block j it walks the tight range of
  query blocks that see it (`common.blocks.q_block_range`), accumulating in fp32 VMEM
      dV_j += Pᵀ dO,   dK_j += dSᵀ Q      (tiles computed transposed, [kv, q], so every
  matmul is A·B or A·Bᵀ).
- dQ kernel, grid (B, H, q-blocks, kv-steps), same kv ranges as the forward:
      dQ_i += dS K.
Skipping, DMA elision and unmasked interior tiles work as in the forward (`common.tpu`). Masked
tiles set P and dS to exactly 0 where masked and zero the rows past the lengths of the operands
they multiply after the mask (queries and dO for dK/dV, keys for dQ; values and dO past the
lengths only enter dP, whose masked entries the mask drops), so nothing in padding reaches a
gradient.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.common.tiles import BlockSizes
from pallas_kernels.common.tpu import TileGrid, TileMask, TpuLayout, grid_and_layout
from pallas_kernels.gdpa.blockwise import GdpaSpec, cost_estimate, mm, mm_nt


def _dkdv_kernel(
    q_lens_ref,
    kv_lens_ref,
    q_ref,
    k_ref,
    v_ref,
    do_ref,
    dk_ref,
    dv_ref,
    dk_acc,
    dv_acc,
    *,
    spec: GdpaSpec,
    tiles: TileGrid,
    layout: TpuLayout,
) -> None:
    """Tiles hold heads_per_block heads (head j's via `layout.head`); dk_acc, dv_acc: each
    head's fp32 accumulators [heads, block_kv, D] in VMEM."""
    heads = tiles.heads_per_block

    def init() -> None:
        dk_acc[...] = jnp.zeros_like(dk_acc)
        dv_acc[...] = jnp.zeros_like(dv_acc)

    def accumulate(mask: TileMask | None) -> None:
        for j in range(heads):
            q, k, v, do = (layout.head(ref, j)[...] for ref in (q_ref, k_ref, v_ref, do_ref))
            if mask is not None:  # queries and dO past q_len: zero
                q, do = mask.zero_past_length(q), mask.zero_past_length(do)
            st = mm_nt(k, q)  # Sᵀ [kv, q]
            pt = spec.probs(st)
            dst = spec.score_grad(st, mm_nt(v, do))  # dPᵀ = V dOᵀ
            if mask is not None:
                vis = mask(st.shape)
                pt = jnp.where(vis, pt, 0.0)
                dst = jnp.where(vis, dst, 0.0)
            dv_acc[j] += mm(pt.astype(do.dtype), do)
            dk_acc[j] += mm(dst.astype(q.dtype), q)

    def finish() -> None:
        for j in range(heads):
            layout.head(dk_ref, j)[...] = (dk_acc[j] * spec.acc_grad_scale).astype(dk_ref.dtype)
            layout.head(dv_ref, j)[...] = (dv_acc[j] * spec.acc_scale).astype(dv_ref.dtype)

    tiles.visit(
        q_lens_ref, kv_lens_ref, q_outer=False, init=init, accumulate=accumulate, finish=finish
    )


def _dq_kernel(
    q_lens_ref,
    kv_lens_ref,
    q_ref,
    k_ref,
    v_ref,
    do_ref,
    dq_ref,
    dq_acc,
    *,
    spec: GdpaSpec,
    tiles: TileGrid,
    layout: TpuLayout,
) -> None:
    """Tiles hold heads_per_block heads (head j's via `layout.head`); dq_acc: each head's
    fp32 accumulator [heads, block_q, D] in VMEM."""
    heads = tiles.heads_per_block

    def init() -> None:
        dq_acc[...] = jnp.zeros_like(dq_acc)

    def accumulate(mask: TileMask | None) -> None:
        for j in range(heads):
            q, k, v, do = (layout.head(ref, j)[...] for ref in (q_ref, k_ref, v_ref, do_ref))
            if mask is not None:  # keys past kv_len: zero
                k = mask.zero_past_length(k)
            s = mm_nt(q, k)
            ds = spec.score_grad(s, mm_nt(do, v))  # dP = dO Vᵀ
            if mask is not None:
                ds = jnp.where(mask(s.shape), ds, 0.0)
            dq_acc[j] += mm(ds.astype(k.dtype), k)

    def finish() -> None:
        for j in range(heads):
            layout.head(dq_ref, j)[...] = (dq_acc[j] * spec.acc_grad_scale).astype(dq_ref.dtype)

    tiles.visit(
        q_lens_ref, kv_lens_ref, q_outer=True, init=init, accumulate=accumulate, finish=finish
    )


def gdpa_bwd_tpu(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    do: jax.Array,
    q_lens: jax.Array,
    kv_lens: jax.Array,
    *,
    spec: GdpaSpec,
    sizes: BlockSizes,
    interpret: bool,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(dQ, dK, dV) with the shapes of q, k, v; inputs as for `gdpa_fwd_tpu`, with the
    backward tiles of `sizes`; do like q."""
    tiles, layout = grid_and_layout(q, k, spec, sizes, backward=True)
    block_q, block_kv = tiles.block_q, tiles.block_kv
    qkvdo = [layout.to_kernel(x) for x in (q, k, v, do)]

    def call(kernel, q_outer: bool, outs: tuple[jax.Array, ...], kind: str) -> list[jax.Array]:
        """Outputs like `outs` (tiled along the outer axis) from q, k, v, do."""
        q_index, kv_index, out_index = tiles.index_maps(q_outer)
        q_spec, kv_spec = layout.spec(block_q, q_index), layout.spec(block_kv, kv_index)
        block_out = block_q if q_outer else block_kv
        return tiles.pallas_call(
            functools.partial(kernel, spec=spec, tiles=tiles, layout=layout),
            q_outer=q_outer,
            in_specs=[q_spec, kv_spec, kv_spec, q_spec],
            out_specs=[layout.spec(block_out, out_index)] * len(outs),
            out_shape=[jax.ShapeDtypeStruct(layout.to_kernel(x).shape, x.dtype) for x in outs],
            scratch_shapes=[
                pltpu.VMEM((tiles.heads_per_block, block_out, q.shape[3]), jnp.float32)
                for _ in outs
            ],
            cost_estimate=cost_estimate(q, k, kind),
            name=f"gdpa_{kind}_tpu",
            interpret=interpret,
        )(q_lens, kv_lens, *qkvdo)

    dk, dv = call(_dkdv_kernel, False, (k, v), "dkdv")  # outer kv blocks, inner q steps
    (dq,) = call(_dq_kernel, True, (q,), "dq")  # outer q blocks, inner kv steps
    return tuple(layout.from_kernel(x) for x in (dq, dk, dv))  # type: ignore[return-value]
