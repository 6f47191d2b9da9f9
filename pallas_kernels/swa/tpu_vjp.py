"""SWA backward as two Pallas Mosaic-TPU kernels (runs on CPU in interpret mode).

Flash-attention backward from the forward's logsumexp (no T×T state): per visited tile
P = exp(c·S - lse) is recomputed and, with δ = rowsum(dO ⊙ O) (computed by the caller),
dS = P ⊙ (dP - δ) (`common.softmax`).
- dK/dV kernel, grid (B, H, kv-blocks, q-steps): kv block j walks the tight range of query
  blocks that see it (`common.blocks.q_block_range`), accumulating in fp32 VMEM
      dV_j += Pᵀ dO,   dK_j += c·dSᵀ Q      (tiles computed transposed, [kv, q], so lse and δ
  are used as [1, block_q] rows, as stored).
- dQ kernel, grid (B, H, q-blocks, kv-steps), the forward's kv ranges:  dQ_i += c·dS K.
Both grids are O(T·w) like the forward's; skipping, DMA elision and unmasked interior tiles
work as there (`tpu.py`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.common import blocks
from pallas_kernels.common.softmax import softmax_probs
from pallas_kernels.common.tile_ops import mm, mm_nt, tile_positions
from pallas_kernels.gdpa.tpu import COMPILER_PARAMS, TpuLayout, real_block, run_tile
from pallas_kernels.swa.blockwise import SwaSpec, cost_estimate
from pallas_kernels.swa.tpu import row_spec


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
    dk_acc,
    dv_acc,
    *,
    spec: SwaSpec,
    block_q: int,
    block_kv: int,
) -> None:
    b, kj, t = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    q_len, kv_len = q_lens_ref[b], kv_lens_ref[b]
    mask_kw = dict(q_len=q_len, kv_len=kv_len, window=spec.window, causal=spec.causal)
    lo, hi = blocks.q_block_range(kj, block_q=block_q, block_kv=block_kv, **mask_kw)
    first_row, first_col = (lo + t) * block_q, kj * block_kv

    @pl.when(t == 0)
    def _init():
        dk_acc[...] = jnp.zeros_like(dk_acc)
        dv_acc[...] = jnp.zeros_like(dv_acc)

    def accumulate(masked: bool) -> None:
        q, do = q_ref[...], do_ref[...]
        st = mm_nt(k_ref[...], q) * spec.scale  # Sᵀ [kv, q]
        vis = None
        if masked:
            q_idx, kv_idx = tile_positions(first_col, first_row, st.shape, rows_are_q=False)
            vis = spec.visible(q_idx, kv_idx, q_len, kv_len)
        pt = softmax_probs(st, lse_ref[...], vis)
        dst = pt * (mm_nt(v_ref[...], do) - delta_ref[...])  # dSᵀ = Pᵀ ⊙ (V dOᵀ - δ)
        dv_acc[...] += mm(pt.astype(do.dtype), do)
        dk_acc[...] += mm(dst.astype(q.dtype), q)

    unmasked = blocks.block_unmasked(
        first_row, first_col, block_q=block_q, block_kv=block_kv, **mask_kw
    )
    run_tile(lo + t < hi, unmasked, accumulate)

    @pl.when(t == pl.num_programs(3) - 1)
    def _store():
        dk_ref[...] = (dk_acc[...] * spec.scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_acc[...].astype(dv_ref.dtype)


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
    dq_acc,
    *,
    spec: SwaSpec,
    block_q: int,
    block_kv: int,
) -> None:
    b, qi, t = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    q_len, kv_len = q_lens_ref[b], kv_lens_ref[b]
    mask_kw = dict(q_len=q_len, kv_len=kv_len, window=spec.window, causal=spec.causal)
    lo, hi = blocks.kv_block_range(qi, block_q=block_q, block_kv=block_kv, **mask_kw)
    first_row, first_col = qi * block_q, (lo + t) * block_kv

    @pl.when(t == 0)
    def _init():
        dq_acc[...] = jnp.zeros_like(dq_acc)

    def accumulate(masked: bool) -> None:
        k = k_ref[...]
        s = mm_nt(q_ref[...], k) * spec.scale
        vis = None
        if masked:
            q_idx, kv_idx = tile_positions(first_row, first_col, s.shape, rows_are_q=True)
            vis = spec.visible(q_idx, kv_idx, q_len, kv_len)
        p = softmax_probs(s, lse_ref[...].T, vis)  # [1, block_q] rows -> columns
        ds = p * (mm_nt(do_ref[...], v_ref[...]) - delta_ref[...].T)  # P ⊙ (dO Vᵀ - δ)
        dq_acc[...] += mm(ds.astype(k.dtype), k)

    unmasked = blocks.block_unmasked(
        first_row, first_col, block_q=block_q, block_kv=block_kv, **mask_kw
    )
    run_tile(lo + t < hi, unmasked, accumulate)

    @pl.when(t == pl.num_programs(3) - 1)
    def _store():
        dq_ref[...] = (dq_acc[...] * spec.scale).astype(dq_ref.dtype)


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
    batch, tq, heads, dim = q.shape
    tkv = k.shape[1]
    nq, nkv = tq // block_q, tkv // block_kv
    layout = TpuLayout(heads, dim)
    mask_kw = dict(block_q=block_q, block_kv=block_kv, window=spec.window, causal=spec.causal)
    kernel_kw = dict(spec=spec, block_q=block_q, block_kv=block_kv)
    inputs = (*(layout.to_kernel(x) for x in (q, k, v, do)), lse, delta)

    def call(kernel, grid, in_specs, out_specs, out_like, scratch, kind, outer, blocks_oi):
        block_outer, block_inner = blocks_oi
        return pl.pallas_call(
            functools.partial(kernel, **kernel_kw),
            out_shape=[jax.ShapeDtypeStruct(layout.to_kernel(x).shape, x.dtype) for x in out_like],
            grid_spec=pltpu.PrefetchScalarGridSpec(
                num_scalar_prefetch=2,
                grid=grid,
                in_specs=in_specs,
                out_specs=out_specs,
                scratch_shapes=[pltpu.VMEM((rows, dim), jnp.float32) for rows in scratch],
            ),
            compiler_params=COMPILER_PARAMS,
            interpret=interpret,
            cost_estimate=cost_estimate(
                outer, kind, block_outer=block_outer, steps=grid[3], block_inner=block_inner
            ),
            name=f"swa_{kind}_tpu",
        )(q_lens, kv_lens, *inputs)

    # dK/dV: outer kv blocks, inner q steps.
    def kv_outer(b, h, kj, t, q_lens_ref, kv_lens_ref):
        return b, h, real_block(kj, kv_lens_ref[b], block_kv, nkv)

    def q_inner(b, h, kj, t, q_lens_ref, kv_lens_ref):
        lo, hi = blocks.q_block_range(kj, q_len=q_lens_ref[b], kv_len=kv_lens_ref[b], **mask_kw)
        return b, h, blocks.block_index(lo, t, hi, nq)

    def kv_out(b, h, kj, t, q_lens_ref, kv_lens_ref):
        return b, h, kj

    q_steps = blocks.max_q_blocks(block_q, block_kv, nq, window=spec.window, causal=spec.causal)
    q_spec, kv_spec = layout.spec(block_q, q_inner), layout.spec(block_kv, kv_outer)
    q_row = row_spec(block_q, q_inner)
    dk, dv = call(
        _dkdv_kernel,
        (batch, heads, nkv, q_steps),
        [q_spec, kv_spec, kv_spec, q_spec, q_row, q_row],
        [layout.spec(block_kv, kv_out)] * 2,
        (k, v),
        (block_kv, block_kv),
        "dkdv",
        k,
        (block_kv, block_q),
    )

    # dQ: outer q blocks, inner kv steps.
    def q_outer(b, h, qi, t, q_lens_ref, kv_lens_ref):
        return b, h, real_block(qi, q_lens_ref[b], block_q, nq)

    def kv_inner(b, h, qi, t, q_lens_ref, kv_lens_ref):
        lo, hi = blocks.kv_block_range(qi, q_len=q_lens_ref[b], kv_len=kv_lens_ref[b], **mask_kw)
        return b, h, blocks.block_index(lo, t, hi, nkv)

    def q_out(b, h, qi, t, q_lens_ref, kv_lens_ref):
        return b, h, qi

    kv_steps = blocks.max_kv_blocks(block_q, block_kv, nkv, window=spec.window, causal=spec.causal)
    q_spec, kv_spec = layout.spec(block_q, q_outer), layout.spec(block_kv, kv_inner)
    q_row = row_spec(block_q, q_outer)
    (dq,) = call(
        _dq_kernel,
        (batch, heads, nq, kv_steps),
        [q_spec, kv_spec, kv_spec, q_spec, q_row, q_row],
        [layout.spec(block_q, q_out)],
        (q,),
        (block_q,),
        "dq",
        q,
        (block_q, block_kv),
    )
    return tuple(layout.from_kernel(x) for x in (dq, dk, dv))  # type: ignore[return-value]
