"""GDPA forward and backward kernels for Blackwell (sm_100): tcgen05 MMAs into tensor memory.

Status: **never run on a GPU** (no Blackwell GPU is lent to this project). Checked on CPU in
the Mosaic GPU interpreter (which executes tcgen05 MMAs, TMEM loads and stores, TMA and
barriers) and by a lowering for sm_100 (see `mosaic_gpu.py`). Same three kernels as Hopper's
(`mosaic_gpu_hopper.py`), one warpgroup per program, the streamed operand double-buffered by
TMA, only the blocks the mask leaves visited; what changes is where the accumulators live:

    forward  (b, h, q tile of 128):   S = Q Kᵀ → TMEM → P = M ⊙ Act(α S) → SMEM, O_tmem += P V
    dQ       (b, h, q tile of 128):   S, dP = dO Vᵀ → TMEM, dS → SMEM, dQ_tmem += dS K
    dK / dV  (b, h, kv block of 128): Sᵀ, dPᵀ → TMEM, Pᵀ → SMEM, dV_tmem += Pᵀ dO, then
                                      dSᵀ → the same SMEM, dK_tmem += dSᵀ Q

The MMA M is 128 (one CTA's tcgen05 tile), so query tiles and dK/dV kv blocks are 128 rows;
fp32 accumulators and score tiles take at most 512 TMEM columns (dK/dV at D = 128). Score
tiles reach registers SCORE_COLUMNS columns at a time: a whole [128, 128] fp32 Sᵀ and dPᵀ
would be 256 registers a thread, and the dK/dV kernel spilled ~3 KB a thread. Every MMA
is waited for before its result is read or its operands are refilled; the forward keeps the
MMAs strictly in order (no warp specialization yet).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.gdpa.mosaic_gpu_common import (
    SLOTS,
    MosaicConfig,
    fetcher,
    load_tiles,
    mosaic_kernel,
    program_tile,
    store_scores,
    store_tile,
    stream_blocks,
)

BLOCK_Q = 128  # tcgen05 M on one CTA: query tiles
DKDV_BLOCK = 128  # kv rows of the dK/dV kernel, and the query blocks it streams
DKDV_Q_BLOCK = DKDV_BLOCK  # one tcgen05 M: no other choice (tiles: `mosaic_gpu.block_sizes`)
DKDV_Q_BLOCKS = (DKDV_Q_BLOCK,)
SCORE_COLUMNS = 32  # score columns in registers at once (an S and a dP slice: 64 a thread)
_LAYOUT = plgpu.Layout.TCGEN05  # registers of a TMEM load
_store_scores = functools.partial(store_scores, layout=_LAYOUT)


def forward_kernel(cfg: MosaicConfig, shape, dtype):
    """O [B, Tq, H, D]: grid (b, h, q tile); K and V stream through SLOTS buffers."""
    b, tq, h, d = shape
    spec, bkv = cfg.spec, cfg.block_kv

    def body(q_gmem, k_gmem, v_gmem, ql_gmem, kvl_gmem, o_gmem, *scratch):
        q_smem, k_smem, v_smem, p_smem, s_tmem, o_tmem, q_bar, k_bar, v_bar, mma_bar = scratch
        bi, hi, qi, q_len, kv_len, rows = program_tile(ql_gmem, kvl_gmem, "q", BLOCK_Q)
        load_tiles(q_bar, (q_gmem.at[bi, rows, hi], q_smem))
        lo, hi_kv = spec.kv_block_range(qi, BLOCK_Q, bkv, q_len, kv_len)
        _zero(o_tmem)

        def step(j, slot):
            plgpu.barrier_wait(k_bar.at[slot])
            _mma_into(s_tmem, q_smem, k_smem.at[slot].T, mma_bar)
            tile = (spec, qi * BLOCK_Q, j * bkv, q_len, kv_len)
            _store_score_columns(tile, p_smem, spec.probs, s_tmem, rows_are_q=True)  # masked: 0
            plgpu.commit_smem()
            plgpu.barrier_wait(v_bar.at[slot])
            _mma(o_tmem, p_smem, v_smem.at[slot], mma_bar)

        fetch = fetcher(bi, hi, bkv, (k_gmem, k_smem, k_bar), (v_gmem, v_smem, v_bar))
        stream_blocks(lo, hi_kv, fetch, step)
        store_tile(q_smem, _load(o_tmem) * spec.acc_scale, o_gmem.at[bi, rows, hi])

    return mosaic_kernel(
        cfg,
        body,
        kind="fwd",
        out_type=jax.ShapeDtypeStruct(shape, dtype),
        scratch_types=[
            plgpu.SMEM((BLOCK_Q, d), dtype),  # Q tile, then O tile
            plgpu.SMEM((SLOTS, bkv, d), dtype),  # K blocks
            plgpu.SMEM((SLOTS, bkv, d), dtype),  # V blocks
            plgpu.SMEM((BLOCK_Q, bkv), dtype),  # P
            plgpu.TMEM((BLOCK_Q, bkv), jnp.float32),  # S
            plgpu.TMEM((BLOCK_Q, d), jnp.float32),  # O accumulator
            plgpu.Barrier(num_barriers=1),
            plgpu.Barrier(num_barriers=SLOTS),
            plgpu.Barrier(num_barriers=SLOTS),
            plgpu.Barrier(orders_tensor_core=True),
        ],
        grid=(b, h, tq // BLOCK_Q),
        row_axis="q",
    )


def dq_kernel(cfg: MosaicConfig, shape, dtype):
    """dQ [B, Tq, H, D]: the forward's loop with dP = dO Vᵀ and dQ += dS K."""
    b, tq, h, d = shape
    spec, bkv = cfg.spec, cfg.block_kv

    def body(q_gmem, k_gmem, v_gmem, do_gmem, ql_gmem, kvl_gmem, dq_gmem, *scratch):
        (q_smem, do_smem, k_smem, v_smem, ds_smem, s_tmem, dp_tmem, dq_tmem) = scratch[:8]
        tile_bar, k_bar, v_bar, mma_bar = scratch[8:]
        bi, hi, qi, q_len, kv_len, rows = program_tile(ql_gmem, kvl_gmem, "q", BLOCK_Q)
        tile = (bi, rows, hi)
        load_tiles(tile_bar, (q_gmem.at[tile], q_smem), (do_gmem.at[tile], do_smem))
        lo, hi_kv = spec.kv_block_range(qi, BLOCK_Q, bkv, q_len, kv_len)
        _zero(dq_tmem)

        def step(j, slot):
            plgpu.barrier_wait(k_bar.at[slot])
            _mma_into(s_tmem, q_smem, k_smem.at[slot].T, mma_bar)
            plgpu.barrier_wait(v_bar.at[slot])
            _mma_into(dp_tmem, do_smem, v_smem.at[slot].T, mma_bar)
            tile = (spec, qi * BLOCK_Q, j * bkv, q_len, kv_len)
            _store_score_columns(tile, ds_smem, spec.score_grad, s_tmem, dp_tmem, rows_are_q=True)
            plgpu.commit_smem()
            _mma(dq_tmem, ds_smem, k_smem.at[slot], mma_bar)

        fetch = fetcher(bi, hi, bkv, (k_gmem, k_smem, k_bar), (v_gmem, v_smem, v_bar))
        stream_blocks(lo, hi_kv, fetch, step)
        store_tile(q_smem, _load(dq_tmem) * spec.acc_grad_scale, dq_gmem.at[bi, rows, hi])

    q_tile = plgpu.SMEM((BLOCK_Q, d), dtype)
    kv_blocks = plgpu.SMEM((SLOTS, bkv, d), dtype)
    scores = plgpu.TMEM((BLOCK_Q, bkv), jnp.float32)
    return mosaic_kernel(
        cfg,
        body,
        kind="dq",
        out_type=jax.ShapeDtypeStruct(shape, dtype),
        scratch_types=[
            q_tile,  # Q, then dQ
            q_tile,  # dO
            kv_blocks,  # K
            kv_blocks,  # V
            plgpu.SMEM((BLOCK_Q, bkv), dtype),  # dS
            scores,  # S
            scores,  # dP
            plgpu.TMEM((BLOCK_Q, d), jnp.float32),  # dQ accumulator
            plgpu.Barrier(num_barriers=2),
            plgpu.Barrier(num_barriers=SLOTS),
            plgpu.Barrier(num_barriers=SLOTS),
            plgpu.Barrier(orders_tensor_core=True),
        ],
        grid=(b, h, tq // BLOCK_Q),
        row_axis="q",
    )


def dkdv_kernel(cfg: MosaicConfig, shape, tkv: int, dtype):
    """(dK, dV) [B, Tkv, H, D]: grid (b, h, kv block of 128); Q and dO stream, the transposed
    score tiles [kv, q] make Pᵀ and dSᵀ direct MMA left operands (one SMEM buffer, in turn)."""
    b, _, h, d = shape
    spec, block = cfg.spec, DKDV_BLOCK

    def body(q_gmem, k_gmem, v_gmem, do_gmem, ql_gmem, kvl_gmem, dk_gmem, dv_gmem, *scratch):
        (k_smem, v_smem, q_smem, do_smem, score_smem, st_tmem, dpt_tmem) = scratch[:7]
        dk_tmem, dv_tmem, kv_bar, q_bar, do_bar, mma_bar = scratch[7:]
        bi, hi, ki, q_len, kv_len, rows = program_tile(ql_gmem, kvl_gmem, "kv", block)
        load_tiles(kv_bar, (k_gmem.at[bi, rows, hi], k_smem), (v_gmem.at[bi, rows, hi], v_smem))
        lo, hi_q = spec.q_block_range(ki, block, block, q_len, kv_len)
        _zero(dk_tmem)
        _zero(dv_tmem)

        def step(j, slot):
            plgpu.barrier_wait(q_bar.at[slot])
            _mma_into(st_tmem, k_smem, q_smem.at[slot].T, mma_bar)
            plgpu.barrier_wait(do_bar.at[slot])
            _mma_into(dpt_tmem, v_smem, do_smem.at[slot].T, mma_bar)
            tile = (spec, ki * block, j * block, q_len, kv_len)
            _store_score_columns(tile, score_smem, spec.probs, st_tmem, rows_are_q=False)  # Pᵀ
            plgpu.commit_smem()
            _mma(dv_tmem, score_smem, do_smem.at[slot], mma_bar)
            _store_score_columns(
                tile, score_smem, spec.score_grad, st_tmem, dpt_tmem, rows_are_q=False
            )  # dSᵀ
            plgpu.commit_smem()
            _mma(dk_tmem, score_smem, q_smem.at[slot], mma_bar)

        fetch = fetcher(bi, hi, block, (q_gmem, q_smem, q_bar), (do_gmem, do_smem, do_bar))
        stream_blocks(lo, hi_q, fetch, step)
        # K and V are not read any more: they stage the results.
        store_tile(k_smem, _load(dk_tmem) * spec.acc_grad_scale, dk_gmem.at[bi, rows, hi])
        store_tile(v_smem, _load(dv_tmem) * spec.acc_scale, dv_gmem.at[bi, rows, hi])

    tile = plgpu.SMEM((block, d), dtype)
    streamed = plgpu.SMEM((SLOTS, block, d), dtype)
    scores = plgpu.TMEM((block, block), jnp.float32)
    acc = plgpu.TMEM((block, d), jnp.float32)
    kv_shape = jax.ShapeDtypeStruct((b, tkv, h, d), dtype)
    return mosaic_kernel(
        cfg,
        body,
        kind="dkdv",
        out_type=(kv_shape, kv_shape),
        scratch_types=[
            *(tile, tile, streamed, streamed),  # K, V, Q, dO
            plgpu.SMEM((block, block), dtype),  # Pᵀ, then dSᵀ
            *(scores, scores, acc, acc),  # Sᵀ, dPᵀ, dK, dV in TMEM
            plgpu.Barrier(num_barriers=2),
            plgpu.Barrier(num_barriers=SLOTS),
            plgpu.Barrier(num_barriers=SLOTS),
            plgpu.Barrier(orders_tensor_core=True),
        ],
        grid=(b, h, tkv // block),
        row_axis="kv",
    )


def _store_score_columns(tile, smem, score_of, *tmems, rows_are_q: bool) -> None:
    """smem[:, c] = score_of(*(t[:, c] for t in tmems)), masked (`store_scores` of `tile`:
    spec, first row, first column, q_len, kv_len), for each slice c of SCORE_COLUMNS columns
    of the fp32 TMEM score tiles: at most two [128, SCORE_COLUMNS] slices are in registers."""
    spec, first_row, first_col, q_len, kv_len = tile
    columns = min(SCORE_COLUMNS, smem.shape[1])
    for first in range(0, smem.shape[1], columns):
        cols = pl.ds(first, columns)
        values = [plgpu.async_load_tmem(t.at[:, cols], layout=_LAYOUT) for t in tmems]
        plgpu.wait_load_tmem()
        scores = (smem.at[:, cols], score_of(*values))
        _store_scores(
            spec, first_row, first_col + first, q_len, kv_len, scores, rows_are_q=rows_are_q
        )


def _mma_into(out_tmem, a_smem, b_smem, barrier) -> None:
    """out_tmem = a @ b on the tensor core (overwritten), waited for."""
    plgpu.tcgen05_mma(out_tmem, a_smem, b_smem, barrier, accumulate=False)
    plgpu.barrier_wait(barrier)


def _mma(acc_tmem, a_smem, b_smem, barrier) -> None:
    """acc_tmem += a @ b on the tensor core, waited for (its operands are free after)."""
    plgpu.tcgen05_mma(acc_tmem, a_smem, b_smem, barrier, accumulate=True)
    plgpu.barrier_wait(barrier)


def _load(tmem) -> jax.Array:
    """TMEM → registers, waited (the TMEM may be overwritten after)."""
    value = plgpu.async_load_tmem(tmem, layout=_LAYOUT)
    plgpu.wait_load_tmem()
    return value


def _zero(tmem) -> None:
    """Zero an fp32 TMEM accumulator (a row that sees no key keeps these zeros)."""
    plgpu.async_store_tmem(tmem, plgpu.layout_cast(jnp.zeros(tmem.shape, jnp.float32), _LAYOUT))
    plgpu.commit_tmem()
