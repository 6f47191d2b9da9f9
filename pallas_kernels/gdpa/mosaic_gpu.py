"""GDPA forward and backward as Pallas Mosaic GPU (Hopper wgmma + TMA) kernels.

Status: **never run on a GPU** (none was lent while this was written). Checked on CPU two ways:
values and gradients against the reference in the Mosaic GPU interpreter, and a lowering for
sm_90 (`tests/kernels/test_gdpa_mosaic_gpu_lowering.py`: layout and SMEM-transform inference
and the lowering to wgmma / TMA instructions run in Python; only the final PTX compile needs
the CUDA toolchain). It runs as `gdpa(backend="pallas_mosaic_gpu")` and "auto" never picks
it until it has been measured on hardware.

Three kernels, each one warpgroup per program, the streamed operand double-buffered by TMA
(block j + 1 is in flight while block j is computed) and only the blocks the mask lets
through visited (`common.blocks` ranges from lengths, window, causality):

    forward  (b, h, q tile of 64):   S = Q Kᵀ, P = M ⊙ Act(α S) → SMEM, O += P V      (K, V stream)
    dQ       (b, h, q tile of 64):   S, dP = dO Vᵀ, dS = M ⊙ Act'(α S) dP, dQ += dS K (K, V stream)
    dK / dV  (b, h, kv block of 64): Sᵀ = K Qᵀ, dPᵀ = V dOᵀ, dV += Pᵀ dO, dK += dSᵀ Q (Q, dO stream)

β (O, dV) and αβ (dQ, dK) scale the fp32 accumulators once at the end (`blockwise.GdpaSpec`).
Score tiles go through SMEM because both wgmma operands must be in SMEM for the interpreter.
Inputs are zero-padded to Tq, Tkv multiples of the blocks and D to 64 or 128: the [64, D]
fp32 accumulators (two in the dK/dV kernel) must fit a warpgroup's registers.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.common import blocks
from pallas_kernels.common.activations import get_activation
from pallas_kernels.common.inputs import check_attention_inputs, pad_attention_inputs
from pallas_kernels.gdpa.blockwise import GdpaSpec

BLOCK_Q = 64  # one warpgroup's wgmma M: query tiles, and the kv blocks of the dK/dV kernel
BLOCK_KV_CHOICES = (64, 128)  # kv block of the forward and dQ kernels (the wgmma N)
DEFAULT_BLOCK_KV = 64  # not tuned: no Hopper measurement yet
MAX_HEAD_DIM = 128  # padded D: larger fp32 accumulators would spill out of registers
DIM_ALIGN = 64  # D padding: one 128-byte swizzle row of bf16/f16
DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
SLOTS = 2  # buffers of the streamed operand


@dataclasses.dataclass(frozen=True)
class _Config:
    """The custom_vjp's non-differentiable configuration."""

    spec: GdpaSpec
    block_kv: int
    interpret: bool


def gdpa_mosaic_gpu(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    activation: str = "silu",
    qk_scale: float = 1.0,
    out_scale: float = 1.0,
    q_lengths: jax.Array | None = None,
    kv_lengths: jax.Array | None = None,
    window: int | None = None,
    causal: bool = False,
    block_kv: int | None = None,
    interpret: bool = False,
) -> jax.Array:
    """GDPA with the semantics of `reference.gdpa_reference`, forward and backward as Mosaic
    GPU kernels behind a `custom_vjp`; lengths get no gradient.

    q: [B, Tq, H, D]; k, v: [B, Tkv, H, D] in bf16 or f16, D <= 128; lengths int [B] (None =
    full). block_kv: 64 or 128 (None: 64), the kv block of the forward and dQ kernels. Returns
    [B, Tq, H, D] in q's dtype. interpret: run in the Mosaic GPU interpreter (CPU).
    """
    check_attention_inputs("GDPA", q, k, v, q_lengths, kv_lengths, window)
    if jnp.dtype(q.dtype) not in DTYPES:
        raise ValueError(f"the Mosaic GPU GDPA kernels take bf16 or f16 inputs, got {q.dtype}")
    get_activation(activation)  # a clear error for an unknown name
    block_kv = DEFAULT_BLOCK_KV if block_kv is None else block_kv
    if block_kv not in BLOCK_KV_CHOICES:
        raise ValueError(f"block_kv must be one of {BLOCK_KV_CHOICES}, got {block_kv}")
    _, tq, _, d = q.shape
    d_pad = blocks.round_up(d, DIM_ALIGN)
    if d_pad > MAX_HEAD_DIM:
        raise ValueError(
            f"head dim D={d} is above the Mosaic GPU kernels' {MAX_HEAD_DIM} (their fp32 "
            "accumulators would spill out of registers); use backend='pallas_triton'"
        )
    if tq == 0 or k.shape[1] == 0:  # nothing to attend: no grid to launch
        return jnp.zeros_like(q)
    padded = pad_attention_inputs(
        q,
        k,
        v,
        q_lengths,
        kv_lengths,
        tq_pad=blocks.round_up(tq, BLOCK_Q),
        tkv_pad=blocks.round_up(k.shape[1], block_kv),
        d_pad=d_pad,
    )
    spec = GdpaSpec(
        activation,
        float(qk_scale),
        float(out_scale),
        None if window is None else int(window),
        bool(causal),
        erf_free=True,  # Mosaic GPU has no erf lowering
    )
    return _gdpa(_Config(spec, block_kv, interpret), *padded)[:, :tq, :, :d]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _gdpa(cfg: _Config, q, k, v, q_lens, kv_lens) -> jax.Array:
    """Forward kernel on inputs padded to the kernels' multiples."""
    return _forward_kernel(cfg, q.shape, jnp.dtype(q.dtype))(q, k, v, q_lens, kv_lens)


def _gdpa_fwd(cfg: _Config, q, k, v, q_lens, kv_lens):
    return _gdpa(cfg, q, k, v, q_lens, kv_lens), (q, k, v, q_lens, kv_lens)


def _gdpa_bwd(cfg: _Config, residuals, do):
    q, k, v, q_lens, kv_lens = residuals
    do = do.astype(q.dtype)
    dtype = jnp.dtype(q.dtype)
    dq = _dq_kernel(cfg, q.shape, dtype)(q, k, v, do, q_lens, kv_lens)
    dk, dv = _dkdv_kernel(cfg, q.shape, k.shape[1], dtype)(q, k, v, do, q_lens, kv_lens)
    return dq, dk, dv, None, None


_gdpa.defvjp(_gdpa_fwd, _gdpa_bwd)


def _forward_kernel(cfg: _Config, shape, dtype):
    """O [B, Tq, H, D]: grid (b, h, q tile); K and V stream through SLOTS buffers."""
    b, tq, h, d = shape
    spec, bkv = cfg.spec, cfg.block_kv

    def body(q_gmem, k_gmem, v_gmem, ql_gmem, kvl_gmem, o_gmem, *scratch):
        q_smem, k_smem, v_smem, p_smem, q_bar, k_bar, v_bar = scratch
        bi, hi, qi = lax.axis_index("b"), lax.axis_index("h"), lax.axis_index("q")
        q_len, kv_len = ql_gmem[bi], kvl_gmem[bi]
        rows = pl.ds(qi * BLOCK_Q, BLOCK_Q)
        _load_tiles(q_bar, (q_gmem.at[bi, rows, hi], q_smem))
        lo, hi_kv = spec.kv_block_range(qi, BLOCK_Q, bkv, q_len, kv_len)
        fetch = _fetcher(bi, hi, bkv, (k_gmem, k_smem, k_bar), (v_gmem, v_smem, v_bar))

        def step(j, slot, acc_ref):
            plgpu.barrier_wait(k_bar.at[slot])
            s = _matmul(q_smem, k_smem.at[slot].transpose((1, 0)), (BLOCK_Q, bkv))
            real = _visible(spec, qi * BLOCK_Q, j * bkv, s.shape, q_len, kv_len, rows_are_q=True)
            p_smem[...] = jnp.where(real, spec.probs(s), 0.0).astype(dtype)  # masked: exactly 0
            plgpu.commit_smem()
            plgpu.barrier_wait(v_bar.at[slot])
            plgpu.wgmma(acc_ref, p_smem, v_smem.at[slot])

        (acc,) = _pipelined(lo, hi_kv, fetch, step, [(BLOCK_Q, d)])
        _store(q_smem, acc * spec.out_scale, o_gmem.at[bi, rows, hi])  # Q tile is free now

    return plgpu.kernel(
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
        grid_names=("b", "h", "q"),
        interpret=_interpret(cfg),
    )


def _dq_kernel(cfg: _Config, shape, dtype):
    """dQ [B, Tq, H, D]: the forward's loop with dP = dO Vᵀ and dQ += dS K."""
    b, tq, h, d = shape
    spec, bkv = cfg.spec, cfg.block_kv

    def body(q_gmem, k_gmem, v_gmem, do_gmem, ql_gmem, kvl_gmem, dq_gmem, *scratch):
        q_smem, do_smem, k_smem, v_smem, ds_smem, tile_bar, k_bar, v_bar = scratch
        bi, hi, qi = lax.axis_index("b"), lax.axis_index("h"), lax.axis_index("q")
        q_len, kv_len = ql_gmem[bi], kvl_gmem[bi]
        rows = pl.ds(qi * BLOCK_Q, BLOCK_Q)
        tile = (bi, rows, hi)
        _load_tiles(tile_bar, (q_gmem.at[tile], q_smem), (do_gmem.at[tile], do_smem))
        lo, hi_kv = spec.kv_block_range(qi, BLOCK_Q, bkv, q_len, kv_len)
        fetch = _fetcher(bi, hi, bkv, (k_gmem, k_smem, k_bar), (v_gmem, v_smem, v_bar))

        def step(j, slot, acc_ref):
            plgpu.barrier_wait(k_bar.at[slot])
            s = _matmul(q_smem, k_smem.at[slot].transpose((1, 0)), (BLOCK_Q, bkv))
            plgpu.barrier_wait(v_bar.at[slot])
            dp = _matmul(do_smem, v_smem.at[slot].transpose((1, 0)), (BLOCK_Q, bkv))
            real = _visible(spec, qi * BLOCK_Q, j * bkv, s.shape, q_len, kv_len, rows_are_q=True)
            ds_smem[...] = jnp.where(real, spec.score_grad(s, dp), 0.0).astype(dtype)
            plgpu.commit_smem()
            plgpu.wgmma(acc_ref, ds_smem, k_smem.at[slot])

        (acc,) = _pipelined(lo, hi_kv, fetch, step, [(BLOCK_Q, d)])
        _store(q_smem, acc * spec.grad_scale, dq_gmem.at[bi, rows, hi])

    q_tile = plgpu.SMEM((BLOCK_Q, d), dtype)
    kv_blocks = plgpu.SMEM((SLOTS, bkv, d), dtype)
    return plgpu.kernel(
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
        grid_names=("b", "h", "q"),
        interpret=_interpret(cfg),
    )


def _dkdv_kernel(cfg: _Config, shape, tkv: int, dtype):
    """(dK, dV) [B, Tkv, H, D]: grid (b, h, kv block of 64); Q and dO stream, the transposed
    score tiles [kv, q] make Pᵀ and dSᵀ direct wgmma left operands."""
    b, _, h, d = shape
    spec, block = cfg.spec, BLOCK_Q

    def body(q_gmem, k_gmem, v_gmem, do_gmem, ql_gmem, kvl_gmem, dk_gmem, dv_gmem, *scratch):
        k_smem, v_smem, q_smem, do_smem, pt_smem, dst_smem, kv_bar, q_bar, do_bar = scratch
        bi, hi, ki = lax.axis_index("b"), lax.axis_index("h"), lax.axis_index("kv")
        q_len, kv_len = ql_gmem[bi], kvl_gmem[bi]
        rows = pl.ds(ki * block, block)
        _load_tiles(kv_bar, (k_gmem.at[bi, rows, hi], k_smem), (v_gmem.at[bi, rows, hi], v_smem))
        lo, hi_q = spec.q_block_range(ki, block, block, q_len, kv_len)
        fetch = _fetcher(bi, hi, block, (q_gmem, q_smem, q_bar), (do_gmem, do_smem, do_bar))

        def step(j, slot, dk_ref, dv_ref):
            plgpu.barrier_wait(q_bar.at[slot])
            st = _matmul(k_smem, q_smem.at[slot].transpose((1, 0)), (block, block))
            plgpu.barrier_wait(do_bar.at[slot])
            dpt = _matmul(v_smem, do_smem.at[slot].transpose((1, 0)), (block, block))
            real = _visible(spec, ki * block, j * block, st.shape, q_len, kv_len, rows_are_q=False)
            pt_smem[...] = jnp.where(real, spec.probs(st), 0.0).astype(dtype)
            dst_smem[...] = jnp.where(real, spec.score_grad(st, dpt), 0.0).astype(dtype)
            plgpu.commit_smem()
            plgpu.wgmma(dk_ref, dst_smem, q_smem.at[slot])
            plgpu.wgmma(dv_ref, pt_smem, do_smem.at[slot])

        dk, dv = _pipelined(lo, hi_q, fetch, step, [(block, d)] * 2)
        # K and V are not read any more: they stage the results.
        _store(k_smem, dk * spec.grad_scale, dk_gmem.at[bi, rows, hi])
        _store(v_smem, dv * spec.out_scale, dv_gmem.at[bi, rows, hi])

    tile = plgpu.SMEM((block, d), dtype)
    streamed = plgpu.SMEM((SLOTS, block, d), dtype)
    score_t = plgpu.SMEM((block, block), dtype)
    kv_shape = jax.ShapeDtypeStruct((b, tkv, h, d), dtype)
    return plgpu.kernel(
        body,
        out_type=(kv_shape, kv_shape),
        scratch_types=[
            *(tile, tile, streamed, streamed, score_t, score_t),  # K, V, Q, dO, Pᵀ, dSᵀ
            plgpu.Barrier(num_barriers=2),
            plgpu.Barrier(num_barriers=SLOTS),
            plgpu.Barrier(num_barriers=SLOTS),
        ],
        grid=(b, h, tkv // block),
        grid_names=("b", "h", "kv"),
        interpret=_interpret(cfg),
    )


def _interpret(cfg: _Config):
    return plgpu.InterpretGPUParams() if cfg.interpret else False


def _load_tiles(barriers, *copies) -> None:
    """TMA each (gmem window, smem) pair with its own barrier of `barriers`, then wait all."""
    for i, (gmem, smem) in enumerate(copies):
        plgpu.copy_gmem_to_smem(gmem, smem, barriers.at[i])
    for i in range(len(copies)):
        plgpu.barrier_wait(barriers.at[i])


def _fetcher(bi, hi, rows: int, *streams) -> Callable[[jax.Array, jax.Array], None]:
    """fetch(j, slot): TMA block j ([rows, D] of head (bi, hi)) of every (gmem, smem, barrier)
    stream into buffer `slot`; each stream signals its own barrier."""

    def fetch(j, slot):
        block = pl.ds(j * rows, rows)
        for gmem, smem, barrier in streams:
            plgpu.copy_gmem_to_smem(gmem.at[bi, block, hi], smem.at[slot], barrier.at[slot])

    return fetch


def _pipelined(lo, hi, fetch, step, acc_shapes) -> tuple[jax.Array, ...]:
    """step(j, slot, *acc_refs) for j in [lo, hi) while block j + 1 is fetched into the other
    buffer; returns the fp32 wgmma accumulators (zero-initialized, one per shape).

    `step` waits for its block's barriers and issues wgmmas into the accumulators; all of
    them are waited for before the next step refills the buffer they read.
    """

    def run(*acc_refs):
        @pl.when(hi > lo)
        def _():
            fetch(lo, 0)

        @pl.loop(lo, hi)
        def _(j):
            slot = lax.rem(j - lo, SLOTS)

            @pl.when(j + 1 < hi)
            def _():
                fetch(j + 1, 1 - slot)

            step(j, slot, *acc_refs)
            plgpu.wgmma_wait(0)

        return tuple(ref[...] for ref in acc_refs)

    return pl.run_scoped(run, *(plgpu.ACC(shape, jnp.float32) for shape in acc_shapes))


def _visible(spec: GdpaSpec, first_row, first_col, shape, q_len, kv_len, *, rows_are_q: bool):
    """bool tile (WGMMA layout) of the mask; rows_are_q: [q, kv] tile, else [kv, q]."""
    rows = first_row + plgpu.broadcasted_iota(jnp.int32, shape, 0, layout=plgpu.Layout.WGMMA)
    cols = first_col + plgpu.broadcasted_iota(jnp.int32, shape, 1, layout=plgpu.Layout.WGMMA)
    q_idx, kv_idx = (rows, cols) if rows_are_q else (cols, rows)
    return spec.visible(q_idx, kv_idx, q_len, kv_len)


def _matmul(a_smem, b_smem, shape: tuple[int, int]) -> jax.Array:
    """a @ b of two SMEM operands through a scoped fp32 wgmma accumulator of `shape`."""

    def run(acc_ref):
        plgpu.wgmma(acc_ref, a_smem, b_smem)
        return acc_ref[...]

    return pl.run_scoped(run, plgpu.ACC(shape, jnp.float32))


def _store(staging_smem, value: jax.Array, out_gmem) -> None:
    """value (fp32) → staging SMEM in the output dtype → TMA to out_gmem, waited."""
    staging_smem[...] = value.astype(staging_smem.dtype)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(staging_smem, out_gmem)
    plgpu.wait_smem_to_gmem(0)
