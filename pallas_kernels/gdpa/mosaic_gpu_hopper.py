"""GDPA forward and backward kernels for Hopper (sm_90): wgmma + TMA, warp-specialized.

Status: **never run on a GPU** (none was lent while this was written); checked on CPU in the
Mosaic GPU interpreter and by a lowering for sm_90 (see `mosaic_gpu.py`). Three kernels, each
program three warpgroups as in FlashAttention-3: two compute warpgroups own 64 rows each of
the program's 128-row tile, and a producer warpgroup streams the other operand's blocks by TMA
into SLOTS shared buffers, refilling one once both compute warpgroups have released it; every
streamed block is loaded once for 128 rows.

    forward  (b, h, q tile of 128):   S = Q Kᵀ, P = M ⊙ Act(α S) → SMEM, O += P V      (K, V stream)
    dQ       (b, h, q tile of 128):   S, dP = dO Vᵀ, dS = M ⊙ Act'(α S) dP, dQ += dS K (K, V stream)
    dK / dV  (b, h, kv tile of 128,   Sᵀ = K Qᵀ, dPᵀ = V dOᵀ, dV += Pᵀ dO, dK += dSᵀ Q (Q, dO stream
              query split):           in blocks of 64 or 32; several splits when the kv tiles
                                      are too few to fill the GPU, as in the short-K/V FFN:
                                      fp32 partials, summed by the caller)

Accumulators live in registers (wgmma ACC refs; compute warpgroups get 240 registers a
thread, the producer 24, as in FlashAttention-3); score tiles go through SMEM because both
wgmma operands must be in SMEM for the interpreter. The two compute warpgroups ping-pong
(`_PingPong`, as in FlashAttention-3 and jax's `attention_mgpu.py`): one issues its MMAs
while the other computes its activation tile. Each waits for its own MMAs before it releases
a buffer (no intra-warpgroup MMA overlap).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.common import blocks
from pallas_kernels.gdpa.mosaic_gpu_common import (
    SLOTS,
    MosaicConfig,
    consume_blocks,
    fetcher,
    load_tiles,
    mosaic_kernel,
    produce_blocks,
    program_tile,
    store_scores,
    store_tile,
)

WG_ROWS = 64  # one warpgroup's wgmma M
COMPUTE_WGS = 2  # compute warpgroups per program; warpgroup COMPUTE_WGS is the producer
BLOCK_Q = COMPUTE_WGS * WG_ROWS  # query tiles of the forward and dQ programs
DKDV_BLOCK = COMPUTE_WGS * WG_ROWS  # kv tile of a dK/dV program
# Query rows of the blocks the dK/dV kernel streams: the choices and the untuned default. With
# 64 its two fp32 accumulators (dK, dV) and two score tiles (Sᵀ, dPᵀ) leave too few of the 240
# registers, and a few loop-invariant integers spill (pallas_kernels/README.md); 32 spills
# nothing but halves the score MMAs' N (more SMEM operand traffic a FLOP). The autotuner
# measures both.
DKDV_Q_BLOCKS = (32, 64)
DKDV_Q_BLOCK = 64
COMPUTE_REGISTERS, PRODUCER_REGISTERS = 240, 24  # per thread: 2·128·240 + 128·24 <= 64 Ki
_store_scores = functools.partial(store_scores, layout=plgpu.Layout.WGMMA)  # wgmma results


def forward_kernel(cfg: MosaicConfig, shape, dtype):
    """O [B, Tq, H, D]: grid (b, h, q tile); K and V stream through SLOTS buffers."""
    b, tq, h, d = shape
    spec, bkv = cfg.spec, cfg.block_kv

    def body(q_gmem, k_gmem, v_gmem, ql_gmem, kvl_gmem, o_gmem, *scratch):
        q_smem, k_smem, v_smem, p_smem, q_bar, k_bar, v_bar, released, turn = scratch
        bi, hi, qi, q_len, kv_len, _ = program_tile(ql_gmem, kvl_gmem, "q", BLOCK_Q)
        lo, hi_kv = spec.kv_block_range(qi, BLOCK_Q, bkv, q_len, kv_len)
        fetch = fetcher(bi, hi, bkv, (k_gmem, k_smem, k_bar), (v_gmem, v_smem, v_bar))

        def compute(wg):
            first = qi * BLOCK_Q + wg * WG_ROWS
            rows, q_tile, p_tile = pl.ds(first, WG_ROWS), q_smem.at[wg], p_smem.at[wg]
            load_tiles(q_bar, (q_gmem.at[bi, rows, hi], q_tile), group=wg)
            pingpong = _PingPong(turn, wg)

            def step(j, slot, acc_ref):
                plgpu.barrier_wait(k_bar.at[slot])
                (s,) = _matmuls(
                    (q_tile, k_smem.at[slot].transpose((1, 0))),
                    shape=(WG_ROWS, bkv),
                    after_issue=pingpong.pass_turn,
                )
                _store_scores(
                    spec, first, j * bkv, q_len, kv_len, (p_tile, spec.probs(s)), rows_are_q=True
                )  # masked: exactly 0
                plgpu.commit_smem()
                pingpong.elementwise_done()
                plgpu.barrier_wait(v_bar.at[slot])
                pingpong.wait_turn()
                plgpu.wgmma(acc_ref, p_tile, v_smem.at[slot])

            (acc,) = pingpong.around(lambda: _consume(lo, hi_kv, released, step, [(WG_ROWS, d)]))
            store_tile(q_tile, acc * spec.acc_scale, o_gmem.at[bi, rows, hi])  # Q is free now

        _specialize(lo, hi_kv, fetch, released, compute)

    return mosaic_kernel(
        cfg,
        body,
        kind="fwd",
        out_type=jax.ShapeDtypeStruct(shape, dtype),
        scratch_types=[
            plgpu.SMEM((COMPUTE_WGS, WG_ROWS, d), dtype),  # Q tiles, then O tiles
            plgpu.SMEM((SLOTS, bkv, d), dtype),  # K blocks
            plgpu.SMEM((SLOTS, bkv, d), dtype),  # V blocks
            plgpu.SMEM((COMPUTE_WGS, WG_ROWS, bkv), dtype),  # P
            plgpu.Barrier(num_barriers=COMPUTE_WGS),
            *_stream_barriers(),
            _PingPong.scratch(),
        ],
        grid=(b, h, tq // BLOCK_Q),
        row_axis="q",
        warpgroups=COMPUTE_WGS + 1,
    )


def dq_kernel(cfg: MosaicConfig, shape, dtype):
    """dQ [B, Tq, H, D]: the forward's loop with dP = dO Vᵀ and dQ += dS K."""
    b, tq, h, d = shape
    spec, bkv = cfg.spec, cfg.block_kv

    def body(q_gmem, k_gmem, v_gmem, do_gmem, ql_gmem, kvl_gmem, dq_gmem, *scratch):
        q_smem, do_smem, k_smem, v_smem, ds_smem, tile_bar, k_bar, v_bar, released, turn = scratch
        bi, hi, qi, q_len, kv_len, _ = program_tile(ql_gmem, kvl_gmem, "q", BLOCK_Q)
        lo, hi_kv = spec.kv_block_range(qi, BLOCK_Q, bkv, q_len, kv_len)
        fetch = fetcher(bi, hi, bkv, (k_gmem, k_smem, k_bar), (v_gmem, v_smem, v_bar))

        def compute(wg):
            first = qi * BLOCK_Q + wg * WG_ROWS
            tile = (bi, pl.ds(first, WG_ROWS), hi)
            q_tile, do_tile, ds_tile = q_smem.at[wg], do_smem.at[wg], ds_smem.at[wg]
            load_tiles(tile_bar, (q_gmem.at[tile], q_tile), (do_gmem.at[tile], do_tile), group=wg)
            pingpong = _PingPong(turn, wg)

            def step(j, slot, acc_ref):
                plgpu.barrier_wait(k_bar.at[slot])
                plgpu.barrier_wait(v_bar.at[slot])
                s, dp = _matmuls(
                    (q_tile, k_smem.at[slot].transpose((1, 0))),
                    (do_tile, v_smem.at[slot].transpose((1, 0))),
                    shape=(WG_ROWS, bkv),
                    after_issue=pingpong.pass_turn,
                )
                _store_scores(
                    spec,
                    first,
                    j * bkv,
                    q_len,
                    kv_len,
                    (ds_tile, spec.score_grad(s, dp)),
                    rows_are_q=True,
                )
                plgpu.commit_smem()
                pingpong.elementwise_done()
                pingpong.wait_turn()
                plgpu.wgmma(acc_ref, ds_tile, k_smem.at[slot])

            (acc,) = pingpong.around(lambda: _consume(lo, hi_kv, released, step, [(WG_ROWS, d)]))
            store_tile(q_tile, acc * spec.acc_grad_scale, dq_gmem.at[tile])

        _specialize(lo, hi_kv, fetch, released, compute)

    q_tiles = plgpu.SMEM((COMPUTE_WGS, WG_ROWS, d), dtype)
    kv_blocks = plgpu.SMEM((SLOTS, bkv, d), dtype)
    return mosaic_kernel(
        cfg,
        body,
        kind="dq",
        out_type=jax.ShapeDtypeStruct(shape, dtype),
        scratch_types=[
            q_tiles,  # Q, then dQ
            q_tiles,  # dO
            kv_blocks,  # K
            kv_blocks,  # V
            plgpu.SMEM((COMPUTE_WGS, WG_ROWS, bkv), dtype),  # dS
            plgpu.Barrier(num_barriers=2 * COMPUTE_WGS),
            *_stream_barriers(),
            _PingPong.scratch(),
        ],
        grid=(b, h, tq // BLOCK_Q),
        row_axis="q",
        warpgroups=COMPUTE_WGS + 1,
    )


def dkdv_kernel(cfg: MosaicConfig, shape, tkv: int, dtype, splits: int = 1):
    """(dK, dV) [B, Tkv, H, D]: grid (b, h, kv tile of 128, query split); Q and dO stream in
    blocks of cfg.dkdv_block_q rows (one of DKDV_Q_BLOCKS), the transposed score tiles [kv, q]
    make Pᵀ and dSᵀ direct wgmma left operands. With splits > 1 each program covers 1/splits
    of the query blocks and writes fp32 partials [splits, B, Tkv, H, D] (staged through an fp32
    tile) for the caller to sum."""
    b, tq, h, d = shape
    spec, bq = cfg.spec, cfg.dkdv_block_q
    split_blocks = blocks.cdiv(tq // bq, splits)

    def body(q_gmem, k_gmem, v_gmem, do_gmem, ql_gmem, kvl_gmem, dk_gmem, dv_gmem, *scratch):
        k_smem, v_smem, q_smem, do_smem, pt_smem, dst_smem, *barriers = scratch
        kv_bar, q_bar, do_bar, released, turn, *staging_smem = barriers  # staging: splits > 1
        bi, hi, ki, q_len, kv_len, _ = program_tile(ql_gmem, kvl_gmem, "kv", DKDV_BLOCK)
        split = lax.axis_index("split")
        lo, hi_q = blocks.split_range(
            *spec.q_block_range(ki, bq, DKDV_BLOCK, q_len, kv_len), split, split_blocks
        )
        fetch = fetcher(bi, hi, bq, (q_gmem, q_smem, q_bar), (do_gmem, do_smem, do_bar))

        def compute(wg):
            first = ki * DKDV_BLOCK + wg * WG_ROWS
            tile = (bi, pl.ds(first, WG_ROWS), hi)
            k_tile, v_tile, pt_tile, dst_tile = (
                k_smem.at[wg],
                v_smem.at[wg],
                pt_smem.at[wg],
                dst_smem.at[wg],
            )
            load_tiles(kv_bar, (k_gmem.at[tile], k_tile), (v_gmem.at[tile], v_tile), group=wg)
            pingpong = _PingPong(turn, wg)

            def step(j, slot, dk_ref, dv_ref):
                plgpu.barrier_wait(q_bar.at[slot])
                plgpu.barrier_wait(do_bar.at[slot])
                st, dpt = _matmuls(
                    (k_tile, q_smem.at[slot].transpose((1, 0))),
                    (v_tile, do_smem.at[slot].transpose((1, 0))),
                    shape=(WG_ROWS, bq),
                    after_issue=pingpong.pass_turn,
                )
                _store_scores(
                    spec,
                    first,
                    j * bq,
                    q_len,
                    kv_len,
                    (pt_tile, spec.probs(st)),
                    (dst_tile, spec.score_grad(st, dpt)),
                    rows_are_q=False,
                )
                plgpu.commit_smem()
                pingpong.elementwise_done()
                pingpong.wait_turn()
                plgpu.wgmma(dk_ref, dst_tile, q_smem.at[slot])
                plgpu.wgmma(dv_ref, pt_tile, do_smem.at[slot])

            dk, dv = pingpong.around(lambda: _consume(lo, hi_q, released, step, [(WG_ROWS, d)] * 2))
            if splits == 1:  # K and V are not read any more: they stage the results
                store_tile(k_tile, dk * spec.acc_grad_scale, dk_gmem.at[tile])
                store_tile(v_tile, dv * spec.acc_scale, dv_gmem.at[tile])
            else:  # fp32 partials of this split, one after the other through the fp32 tile
                staging = staging_smem[0].at[wg]
                store_tile(staging, dk * spec.acc_grad_scale, dk_gmem.at[(split, *tile)])
                store_tile(staging, dv * spec.acc_scale, dv_gmem.at[(split, *tile)])

        _specialize(lo, hi_q, fetch, released, compute)

    tiles = plgpu.SMEM((COMPUTE_WGS, WG_ROWS, d), dtype)
    streamed = plgpu.SMEM((SLOTS, bq, d), dtype)
    score_t = plgpu.SMEM((COMPUTE_WGS, WG_ROWS, bq), dtype)
    if splits == 1:
        out_type = (jax.ShapeDtypeStruct((b, tkv, h, d), dtype),) * 2
        staging_types = []
    else:
        out_type = (jax.ShapeDtypeStruct((splits, b, tkv, h, d), jnp.float32),) * 2
        staging_types = [plgpu.SMEM((COMPUTE_WGS, WG_ROWS, d), jnp.float32)]
    return mosaic_kernel(
        cfg,
        body,
        kind="dkdv",
        out_type=out_type,
        scratch_types=[
            *(tiles, tiles, streamed, streamed, score_t, score_t),  # K, V, Q, dO, Pᵀ, dSᵀ
            plgpu.Barrier(num_barriers=2 * COMPUTE_WGS),
            *_stream_barriers(),
            _PingPong.scratch(),
            *staging_types,
        ],
        grid=(b, h, tkv // DKDV_BLOCK, splits),
        row_axis="kv",
        warpgroups=COMPUTE_WGS + 1,
        extra_axes=("split",),
    )


def _stream_barriers() -> list:
    """TMA barriers of the two streamed operands (one per buffer) and the buffers' release
    barriers, which complete when every compute warpgroup has arrived."""
    return [
        plgpu.Barrier(num_barriers=SLOTS),
        plgpu.Barrier(num_barriers=SLOTS),
        plgpu.Barrier(num_arrivals=COMPUTE_WGS, num_barriers=SLOTS),
    ]


def _specialize(lo, hi, fetch, released, compute) -> None:
    """Warpgroup COMPUTE_WGS streams blocks [lo, hi) (`produce_blocks`); warpgroups
    0..COMPUTE_WGS-1 run compute(wg)."""
    wg = lax.axis_index("wg")

    @pl.when(wg == COMPUTE_WGS)
    def _():
        plgpu.set_max_registers(PRODUCER_REGISTERS, action="decrease")
        produce_blocks(lo, hi, fetch, released)

    @pl.when(wg < COMPUTE_WGS)
    def _():
        plgpu.set_max_registers(COMPUTE_REGISTERS, action="increase")
        compute(wg)


def _consume(lo, hi, released, step, acc_shapes) -> tuple[jax.Array, ...]:
    """`consume_blocks` with zero-initialized fp32 wgmma accumulators (one per shape) passed to
    step(j, slot, *acc_refs); each step's wgmmas are waited for before its buffer is released.
    Returns the accumulators."""

    def run(*acc_refs):
        def waited_step(j, slot):
            step(j, slot, *acc_refs)
            plgpu.wgmma_wait(0)

        consume_blocks(lo, hi, released, waited_step)
        return tuple(ref[...] for ref in acc_refs)

    return pl.run_scoped(run, *(plgpu.ACC(shape, jnp.float32) for shape in acc_shapes))


def _matmuls(*operands, shape: tuple[int, int], after_issue) -> tuple[jax.Array, ...]:
    """a @ b for each (a_smem, b_smem) of `operands`, through scoped fp32 wgmma accumulators of
    `shape`: every MMA is issued, then after_issue() runs, then the results are read."""

    def run(*acc_refs):
        for acc_ref, (a_smem, b_smem) in zip(acc_refs, operands, strict=True):
            plgpu.wgmma(acc_ref, a_smem, b_smem)
        after_issue()
        return tuple(acc_ref[...] for acc_ref in acc_refs)

    return pl.run_scoped(run, *(plgpu.ACC(shape, jnp.float32) for _ in operands))


class _PingPong:
    """FlashAttention-3's ping-pong between the two compute warpgroups: the tensor core takes
    one warpgroup's MMAs while the other computes its elementwise tile (activation, mask).

    One barrier of COMPUTE_WGS arrivals; every meeting point is a phase both pass. Per step a
    warpgroup passes the turn once its score MMAs are issued (`pass_turn`: arrive + wait),
    arrives when its elementwise tile is done and waits for that phase before issuing its
    update MMAs (`elementwise_done`, `wait_turn`). Warpgroup 1 starts one meeting late and
    warpgroup 0 ends one late (`around`), so both arrive equally often: with equal step counts
    (both loop over the program's block range) neither can wait forever.
    """

    def __init__(self, barrier, wg):
        self.barrier, self.wg = barrier, wg

    @staticmethod
    def scratch():
        """The barrier to allocate for it."""
        return plgpu.Barrier(num_arrivals=COMPUTE_WGS)

    def pass_turn(self) -> None:
        plgpu.barrier_arrive(self.barrier)
        plgpu.barrier_wait(self.barrier)

    def elementwise_done(self) -> None:
        plgpu.barrier_arrive(self.barrier)

    def wait_turn(self) -> None:
        plgpu.barrier_wait(self.barrier)

    def around(self, loop):
        """loop() between warpgroup 1's opening meeting and warpgroup 0's closing one."""
        pl.when(self.wg == 1)(self.pass_turn)
        result = loop()
        pl.when(self.wg == 0)(self.pass_turn)
        return result
