"""SWA forward as a Pallas Mosaic-TPU flash-attention kernel (runs on CPU in interpret mode).

Grid (B, H, q-blocks, kv-steps), kv innermost and "arbitrary". Step t of q block i visits kv
block lo_i + t, where [lo_i, hi_i) is the tight range of kv blocks the mask lets query block i
see (`common.blocks.kv_block_range`, from the scalar-prefetched lengths). The kv-step extent is
the static bound `max_kv_blocks`, so the grid itself is O(T·w): a q block visits about
(block_q + 2w) / block_kv + 1 kv blocks, never the whole sequence. Steps past hi_i (padding,
causal) do no compute and repeat the last block index, so the pipeline issues no DMA for them;
interior tiles skip the mask arithmetic (the GDPA TPU machinery: `gdpa.tpu`).

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

from pallas_kernels.common import blocks
from pallas_kernels.common.softmax import mask_scores, online_softmax_step, softmax_finish
from pallas_kernels.common.tile_ops import mm_nt, tile_positions
from pallas_kernels.gdpa.tpu import COMPILER_PARAMS, IndexFn, TpuLayout, real_block, run_tile
from pallas_kernels.swa.blockwise import SwaSpec, cost_estimate


def row_spec(block_q: int, index: IndexFn) -> pl.BlockSpec:
    """BlockSpec of [1, block_q] rows of a per-query statistic [B, H, 1, Tq] (lse, δ);
    `index(*grid_ids, *prefetch_refs) -> (b, h, q_block)`. On a real TPU block_q must be a
    multiple of 128 or cover Tq (lane dim)."""

    def index_map(*args):
        b, h, qi = index(*args)
        return b, h, 0, qi

    return pl.BlockSpec((None, None, 1, block_q), index_map)


def _fwd_kernel(
    q_lens_ref,
    kv_lens_ref,
    q_ref,
    k_ref,
    v_ref,
    o_ref,
    lse_ref,
    m_ref,
    l_ref,
    acc_ref,
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
        m_ref[...] = jnp.full_like(m_ref, -jnp.inf)
        l_ref[...] = jnp.zeros_like(l_ref)
        acc_ref[...] = jnp.zeros_like(acc_ref)

    def accumulate(masked: bool) -> None:
        s = mm_nt(q_ref[...], k_ref[...]) * spec.scale
        if masked:
            q_idx, kv_idx = tile_positions(first_row, first_col, s.shape, rows_are_q=True)
            s = mask_scores(s, spec.visible(q_idx, kv_idx, q_len, kv_len))
        m, l_sum, acc = online_softmax_step(s, v_ref[...], m_ref[...], l_ref[...], acc_ref[...])
        m_ref[...], l_ref[...], acc_ref[...] = m, l_sum, acc

    unmasked = blocks.block_unmasked(
        first_row, first_col, block_q=block_q, block_kv=block_kv, **mask_kw
    )
    run_tile(lo + t < hi, unmasked, accumulate)

    @pl.when(t == pl.num_programs(3) - 1)
    def _store():
        o, lse = softmax_finish(m_ref[...], l_ref[...], acc_ref[...])
        o_ref[...] = o.astype(o_ref.dtype)
        lse_ref[...] = lse.T  # [block_q, 1] column -> [1, block_q] row


def swa_fwd_tpu(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_lens: jax.Array,
    kv_lens: jax.Array,
    *,
    spec: SwaSpec,
    block_q: int,
    block_kv: int,
    interpret: bool,
) -> tuple[jax.Array, jax.Array]:
    """(O [B, Tq, H, D], lse [B, H, 1, Tq] fp32) from q [B, Tq, H, D], k/v [B, Tkv, H, D]
    (T multiples of the blocks) and int32 lengths [B] (already clipped to [0, T]).
    lse = +inf on rows that see no key (O = 0 there)."""
    batch, tq, heads, dim = q.shape
    tkv = k.shape[1]
    nq, nkv = tq // block_q, tkv // block_kv
    steps = blocks.max_kv_blocks(block_q, block_kv, nkv, window=spec.window, causal=spec.causal)
    layout = TpuLayout(heads, dim)

    def q_index(b, h, qi, t, q_lens_ref, kv_lens_ref):
        return b, h, real_block(qi, q_lens_ref[b], block_q, nq)

    def kv_index(b, h, qi, t, q_lens_ref, kv_lens_ref):
        lo, hi = blocks.kv_block_range(
            qi,
            block_q=block_q,
            block_kv=block_kv,
            q_len=q_lens_ref[b],
            kv_len=kv_lens_ref[b],
            window=spec.window,
            causal=spec.causal,
        )
        return b, h, blocks.block_index(lo, t, hi, nkv)

    def o_index(b, h, qi, t, q_lens_ref, kv_lens_ref):
        return b, h, qi

    kernel = functools.partial(_fwd_kernel, spec=spec, block_q=block_q, block_kv=block_kv)
    o, lse = pl.pallas_call(
        kernel,
        out_shape=[
            jax.ShapeDtypeStruct(layout.to_kernel(q).shape, q.dtype),
            jax.ShapeDtypeStruct((batch, heads, 1, tq), jnp.float32),
        ],
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2,
            grid=(batch, heads, nq, steps),
            in_specs=[
                layout.spec(block_q, q_index),
                layout.spec(block_kv, kv_index),
                layout.spec(block_kv, kv_index),
            ],
            out_specs=[layout.spec(block_q, o_index), row_spec(block_q, o_index)],
            scratch_shapes=[
                pltpu.VMEM((block_q, 1), jnp.float32),
                pltpu.VMEM((block_q, 1), jnp.float32),
                pltpu.VMEM((block_q, dim), jnp.float32),
            ],
        ),
        compiler_params=COMPILER_PARAMS,
        interpret=interpret,
        cost_estimate=cost_estimate(
            q, "fwd", block_outer=block_q, steps=steps, block_inner=block_kv
        ),
        name="swa_fwd_tpu",
    )(q_lens, kv_lens, layout.to_kernel(q), layout.to_kernel(k), layout.to_kernel(v))
    return layout.from_kernel(o), lse
