"""GDPA forward and backward kernels for Hopper (sm_90): wgmma + TMA, Pallas Mosaic GPU.

Status: **never run on a GPU** (none was lent while this was written); checked on CPU in the
Mosaic GPU interpreter and by a lowering for sm_90 (see `mosaic_gpu.py`). Three kernels, each
one warpgroup per program, the streamed operand double-buffered by TMA:

    forward  (b, h, q tile of 64):   S = Q Kᵀ, P = M ⊙ Act(α S) → SMEM, O += P V      (K, V stream)
    dQ       (b, h, q tile of 64):   S, dP = dO Vᵀ, dS = M ⊙ Act'(α S) dP, dQ += dS K (K, V stream)
    dK / dV  (b, h, kv block of 64): Sᵀ = K Qᵀ, dPᵀ = V dOᵀ, dV += Pᵀ dO, dK += dSᵀ Q (Q, dO stream)

Accumulators live in registers (wgmma ACC refs); score tiles go through SMEM because both
wgmma operands must be in SMEM for the interpreter.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.gdpa.blockwise import GdpaSpec
from pallas_kernels.gdpa.mosaic_gpu_common import (
    SLOTS,
    MosaicConfig,
    fetcher,
    load_tiles,
    mosaic_kernel,
    program_tile,
    store_tile,
    stream_blocks,
    visible_tile,
)

BLOCK_Q = 64  # one warpgroup's wgmma M: query tiles
DKDV_BLOCK = 64  # kv rows of the dK/dV kernel, and the query blocks it streams


def forward_kernel(cfg: MosaicConfig, shape, dtype):
    """O [B, Tq, H, D]: grid (b, h, q tile); K and V stream through SLOTS buffers."""
    b, tq, h, d = shape
    spec, bkv = cfg.spec, cfg.block_kv

    def body(q_gmem, k_gmem, v_gmem, ql_gmem, kvl_gmem, o_gmem, *scratch):
        q_smem, k_smem, v_smem, p_smem, q_bar, k_bar, v_bar = scratch
        bi, hi, qi, q_len, kv_len, rows = program_tile(ql_gmem, kvl_gmem, "q", BLOCK_Q)
        load_tiles(q_bar, (q_gmem.at[bi, rows, hi], q_smem))
        lo, hi_kv = spec.kv_block_range(qi, BLOCK_Q, bkv, q_len, kv_len)
        fetch = fetcher(bi, hi, bkv, (k_gmem, k_smem, k_bar), (v_gmem, v_smem, v_bar))

        def step(j, slot, acc_ref):
            plgpu.barrier_wait(k_bar.at[slot])
            s = _matmul(q_smem, k_smem.at[slot].transpose((1, 0)), (BLOCK_Q, bkv))
            real = _visible(spec, qi * BLOCK_Q, j * bkv, s.shape, q_len, kv_len, True)
            p_smem[...] = jnp.where(real, spec.probs(s), 0.0).astype(dtype)  # masked: exactly 0
            plgpu.commit_smem()
            plgpu.barrier_wait(v_bar.at[slot])
            plgpu.wgmma(acc_ref, p_smem, v_smem.at[slot])

        (acc,) = _pipelined(lo, hi_kv, fetch, step, [(BLOCK_Q, d)])
        store_tile(q_smem, acc * spec.out_scale, o_gmem.at[bi, rows, hi])  # Q tile is free now

    return mosaic_kernel(
        cfg,
        body,
        out_type=jax.ShapeDtypeStruct(shape, dtype),
        scratch_types=[
            plgpu.SMEM((BLOCK_Q, d), dtype),  # Q tile, then O tile
            plgpu.SMEM((SLOTS, bkv, d), dtype),  # K blocks
            plgpu.SMEM((SLOTS, bkv, d), dtype),  # V blocks
            plgpu.SMEM((BLOCK_Q, bkv), dtype),  # P
            plgpu.Barrier(num_barriers=1),
            plgpu.Barrier(num_barriers=SLOTS),
            plgpu.Barrier(num_barriers=SLOTS),
        ],
        grid=(b, h, tq // BLOCK_Q),
        row_axis="q",
    )


def dq_kernel(cfg: MosaicConfig, shape, dtype):
    """dQ [B, Tq, H, D]: the forward's loop with dP = dO Vᵀ and dQ += dS K."""
    b, tq, h, d = shape
    spec, bkv = cfg.spec, cfg.block_kv

    def body(q_gmem, k_gmem, v_gmem, do_gmem, ql_gmem, kvl_gmem, dq_gmem, *scratch):
        q_smem, do_smem, k_smem, v_smem, ds_smem, tile_bar, k_bar, v_bar = scratch
        bi, hi, qi, q_len, kv_len, rows = program_tile(ql_gmem, kvl_gmem, "q", BLOCK_Q)
        tile = (bi, rows, hi)
        load_tiles(tile_bar, (q_gmem.at[tile], q_smem), (do_gmem.at[tile], do_smem))
        lo, hi_kv = spec.kv_block_range(qi, BLOCK_Q, bkv, q_len, kv_len)
        fetch = fetcher(bi, hi, bkv, (k_gmem, k_smem, k_bar), (v_gmem, v_smem, v_bar))

        def step(j, slot, acc_ref):
            plgpu.barrier_wait(k_bar.at[slot])
            s = _matmul(q_smem, k_smem.at[slot].transpose((1, 0)), (BLOCK_Q, bkv))
            plgpu.barrier_wait(v_bar.at[slot])
            dp = _matmul(do_smem, v_smem.at[slot].transpose((1, 0)), (BLOCK_Q, bkv))
            real = _visible(spec, qi * BLOCK_Q, j * bkv, s.shape, q_len, kv_len, True)
            ds_smem[...] = jnp.where(real, spec.score_grad(s, dp), 0.0).astype(dtype)
            plgpu.commit_smem()
            plgpu.wgmma(acc_ref, ds_smem, k_smem.at[slot])

        (acc,) = _pipelined(lo, hi_kv, fetch, step, [(BLOCK_Q, d)])
        store_tile(q_smem, acc * spec.grad_scale, dq_gmem.at[bi, rows, hi])

    q_tile = plgpu.SMEM((BLOCK_Q, d), dtype)
    kv_blocks = plgpu.SMEM((SLOTS, bkv, d), dtype)
    return mosaic_kernel(
        cfg,
        body,
        out_type=jax.ShapeDtypeStruct(shape, dtype),
        scratch_types=[
            q_tile,  # Q, then dQ
            q_tile,  # dO
            kv_blocks,  # K
            kv_blocks,  # V
            plgpu.SMEM((BLOCK_Q, bkv), dtype),  # dS
            plgpu.Barrier(num_barriers=2),
            plgpu.Barrier(num_barriers=SLOTS),
            plgpu.Barrier(num_barriers=SLOTS),
        ],
        grid=(b, h, tq // BLOCK_Q),
        row_axis="q",
    )


def dkdv_kernel(cfg: MosaicConfig, shape, tkv: int, dtype):
    """(dK, dV) [B, Tkv, H, D]: grid (b, h, kv block of 64); Q and dO stream, the transposed
    score tiles [kv, q] make Pᵀ and dSᵀ direct wgmma left operands."""
    b, _, h, d = shape
    spec, block = cfg.spec, DKDV_BLOCK

    def body(q_gmem, k_gmem, v_gmem, do_gmem, ql_gmem, kvl_gmem, dk_gmem, dv_gmem, *scratch):
        k_smem, v_smem, q_smem, do_smem, pt_smem, dst_smem, kv_bar, q_bar, do_bar = scratch
        bi, hi, ki, q_len, kv_len, rows = program_tile(ql_gmem, kvl_gmem, "kv", block)
        load_tiles(kv_bar, (k_gmem.at[bi, rows, hi], k_smem), (v_gmem.at[bi, rows, hi], v_smem))
        lo, hi_q = spec.q_block_range(ki, block, block, q_len, kv_len)
        fetch = fetcher(bi, hi, block, (q_gmem, q_smem, q_bar), (do_gmem, do_smem, do_bar))

        def step(j, slot, dk_ref, dv_ref):
            plgpu.barrier_wait(q_bar.at[slot])
            st = _matmul(k_smem, q_smem.at[slot].transpose((1, 0)), (block, block))
            plgpu.barrier_wait(do_bar.at[slot])
            dpt = _matmul(v_smem, do_smem.at[slot].transpose((1, 0)), (block, block))
            real = _visible(spec, ki * block, j * block, st.shape, q_len, kv_len, False)
            pt_smem[...] = jnp.where(real, spec.probs(st), 0.0).astype(dtype)
            dst_smem[...] = jnp.where(real, spec.score_grad(st, dpt), 0.0).astype(dtype)
            plgpu.commit_smem()
            plgpu.wgmma(dk_ref, dst_smem, q_smem.at[slot])
            plgpu.wgmma(dv_ref, pt_smem, do_smem.at[slot])

        dk, dv = _pipelined(lo, hi_q, fetch, step, [(block, d)] * 2)
        # K and V are not read any more: they stage the results.
        store_tile(k_smem, dk * spec.grad_scale, dk_gmem.at[bi, rows, hi])
        store_tile(v_smem, dv * spec.out_scale, dv_gmem.at[bi, rows, hi])

    tile = plgpu.SMEM((block, d), dtype)
    streamed = plgpu.SMEM((SLOTS, block, d), dtype)
    score_t = plgpu.SMEM((block, block), dtype)
    kv_shape = jax.ShapeDtypeStruct((b, tkv, h, d), dtype)
    return mosaic_kernel(
        cfg,
        body,
        out_type=(kv_shape, kv_shape),
        scratch_types=[
            *(tile, tile, streamed, streamed, score_t, score_t),  # K, V, Q, dO, Pᵀ, dSᵀ
            plgpu.Barrier(num_barriers=2),
            plgpu.Barrier(num_barriers=SLOTS),
            plgpu.Barrier(num_barriers=SLOTS),
        ],
        grid=(b, h, tkv // block),
        row_axis="kv",
    )


def _pipelined(lo, hi, fetch, step, acc_shapes) -> tuple[jax.Array, ...]:
    """`stream_blocks` with zero-initialized fp32 wgmma accumulators (one per shape) passed to
    step(j, slot, *acc_refs); each step's wgmmas are waited for. Returns the accumulators."""

    def run(*acc_refs):
        def waited_step(j, slot):
            step(j, slot, *acc_refs)
            plgpu.wgmma_wait(0)

        stream_blocks(lo, hi, fetch, waited_step)
        return tuple(ref[...] for ref in acc_refs)

    return pl.run_scoped(run, *(plgpu.ACC(shape, jnp.float32) for shape in acc_shapes))


def _visible(spec: GdpaSpec, first_row, first_col, shape, q_len, kv_len, rows_are_q: bool):
    layout = plgpu.Layout.WGMMA
    return visible_tile(
        spec, first_row, first_col, shape, q_len, kv_len, rows_are_q=rows_are_q, layout=layout
    )


def _matmul(a_smem, b_smem, shape: tuple[int, int]) -> jax.Array:
    """a @ b of two SMEM operands through a scoped fp32 wgmma accumulator of `shape`."""

    def run(acc_ref):
        plgpu.wgmma(acc_ref, a_smem, b_smem)
        return acc_ref[...]

    return pl.run_scoped(run, plgpu.ACC(shape, jnp.float32))
