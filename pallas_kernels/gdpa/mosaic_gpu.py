"""GDPA forward as a Pallas Mosaic GPU (Hopper wgmma) kernel for the personalized-FFN regime.

Status: **forward only, checked in the Mosaic GPU interpreter on CPU, never run on a GPU**
(no GPU was lent while it was written). It is not selected by `gdpa(backend="auto")`; the
Triton-lowered kernel stays the GPU path until this one is compiled, measured and given a
backward. Known gaps before it can run on hardware: the SMEM operands of `wgmma` carry no
tiling / swizzle transforms yet (Hopper needs them; the interpreter does not), and nothing
overlaps the copies with compute (one TMA round per tile, no warp specialization).

Regime: cross-attention with short K/V (Kunlun's GDPA FFN: Tkv = n_sum, 8-256), so a tile's
whole K and V live in shared memory. One program per (batch row, head, 64-row query tile):

    TMA  Q tile [64, D], K [Tkv, D], V [Tkv, D] -> SMEM
    S  = wgmma(Q, Kᵀ)                              fp32 accumulator [64, Tkv]
    P  = where(row < q_len & col < kv_len, out_scale · Act(qk_scale · S), 0)  -> SMEM (bf16/f16)
    O  = wgmma(P, V)                               fp32 accumulator [64, D]  -> SMEM -> TMA out

Inputs are zero-padded to Tq, Tkv, D multiples of 64 (wgmma's M, and its K for bf16/f16 in
whole 64-element swizzle rows); padding is masked, so padded query rows come out zero.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.common.activations import get_activation
from pallas_kernels.common.blocks import round_up
from pallas_kernels.common.inputs import check_attention_inputs, pad_attention_inputs

BLOCK_Q = 64  # one warpgroup's wgmma M
ALIGN = 64  # Tkv and D padding: wgmma K/N granularity used here
SMEM_BUDGET_BYTES = 200 * 1024  # H100/H200 allow 227 KiB per block; leave room for barriers
DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def smem_bytes(tkv: int, d: int, itemsize: int) -> int:
    """Shared memory of one program: Q and O tiles [64, D], K and V [Tkv, D], P [64, Tkv]."""
    return itemsize * (2 * BLOCK_Q * d + 2 * tkv * d + BLOCK_Q * tkv)


def gdpa_forward_mosaic_gpu(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    activation: str = "silu",
    qk_scale: float = 1.0,
    out_scale: float = 1.0,
    q_lengths: jax.Array | None = None,
    kv_lengths: jax.Array | None = None,
    interpret: bool = False,
) -> jax.Array:
    """GDPA forward (semantics of `reference.gdpa_reference`, no window / causal mask).

    q: [B, Tq, H, D]; k, v: [B, Tkv, H, D] in bf16 or f16; lengths int [B] (None = full).
    Returns [B, Tq, H, D] in q's dtype. interpret: run in the Mosaic GPU interpreter (CPU).
    Raises ValueError when K/V do not fit in shared memory (use the Triton kernel then).
    """
    check_attention_inputs("GDPA", q, k, v, q_lengths, kv_lengths, None)
    if jnp.dtype(q.dtype) not in DTYPES:
        raise ValueError(f"the Mosaic GPU GDPA kernel takes bf16 or f16 inputs, got {q.dtype}")
    act, _ = get_activation(activation)
    b, tq, h, d = q.shape
    tq_pad, tkv_pad, d_pad = round_up(tq, BLOCK_Q), round_up(k.shape[1], ALIGN), round_up(d, ALIGN)
    need = smem_bytes(tkv_pad, d_pad, jnp.dtype(q.dtype).itemsize)
    if need > SMEM_BUDGET_BYTES:
        raise ValueError(
            f"k/v length {k.shape[1]} with head dim {d} needs {need} bytes of shared memory "
            f"(> {SMEM_BUDGET_BYTES}); this kernel keeps K/V whole, for short K/V: use "
            "backend='triton' for long ones"
        )
    qp, kp, vp, q_lens, kv_lens = pad_attention_inputs(
        q, k, v, q_lengths, kv_lengths, tq_pad=tq_pad, tkv_pad=tkv_pad, d_pad=d_pad
    )
    kernel = _build(
        (b, tq_pad, h, d_pad),
        tkv_pad,
        jnp.dtype(q.dtype),
        functools.partial(_scaled_activation, act, qk_scale, out_scale),
        interpret,
    )
    return kernel(qp, kp, vp, q_lens, kv_lens)[:, :tq, :, :d]


def _scaled_activation(act, qk_scale: float, out_scale: float, s: jax.Array) -> jax.Array:
    return out_scale * act(qk_scale * s)


def _build(shape: tuple[int, int, int, int], tkv: int, dtype, score, interpret: bool):
    b, tq, h, d = shape

    def body(q_gmem, k_gmem, v_gmem, ql_gmem, kvl_gmem, o_gmem, *scratch):
        q_smem, k_smem, v_smem, p_smem, o_smem, barriers = scratch
        bi, hi, qi = lax.axis_index("b"), lax.axis_index("h"), lax.axis_index("q")
        rows = pl.ds(qi * BLOCK_Q, BLOCK_Q)
        plgpu.copy_gmem_to_smem(q_gmem.at[bi, rows, hi], q_smem, barriers.at[0])
        plgpu.copy_gmem_to_smem(k_gmem.at[bi, :, hi], k_smem, barriers.at[1])
        plgpu.copy_gmem_to_smem(v_gmem.at[bi, :, hi], v_smem, barriers.at[2])
        plgpu.barrier_wait(barriers.at[0])
        plgpu.barrier_wait(barriers.at[1])

        def qk(acc_ref):
            plgpu.wgmma(acc_ref, q_smem, k_smem.transpose((1, 0)))
            return acc_ref[...]

        s = pl.run_scoped(qk, plgpu.ACC((BLOCK_Q, tkv), jnp.float32))
        row = plgpu.broadcasted_iota(jnp.int32, s.shape, 0, layout=plgpu.Layout.WGMMA)
        col = plgpu.broadcasted_iota(jnp.int32, s.shape, 1, layout=plgpu.Layout.WGMMA)
        real = (row + qi * BLOCK_Q < ql_gmem[bi]) & (col < kvl_gmem[bi])
        p_smem[...] = jnp.where(real, score(s), 0.0).astype(dtype)  # masked: exactly 0
        plgpu.commit_smem()
        plgpu.barrier_wait(barriers.at[2])

        def pv(acc_ref):
            plgpu.wgmma(acc_ref, p_smem, v_smem)
            return acc_ref[...]

        o_smem[...] = pl.run_scoped(pv, plgpu.ACC((BLOCK_Q, d), jnp.float32)).astype(dtype)
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(o_smem, o_gmem.at[bi, rows, hi])
        plgpu.wait_smem_to_gmem(0)

    return plgpu.kernel(
        body,
        out_type=jax.ShapeDtypeStruct(shape, dtype),
        scratch_types=[
            plgpu.SMEM((BLOCK_Q, d), dtype),  # Q tile
            plgpu.SMEM((tkv, d), dtype),  # K
            plgpu.SMEM((tkv, d), dtype),  # V
            plgpu.SMEM((BLOCK_Q, tkv), dtype),  # P
            plgpu.SMEM((BLOCK_Q, d), dtype),  # O tile
            plgpu.Barrier(num_barriers=3),
        ],
        grid=(b, h, tq // BLOCK_Q),
        grid_names=("b", "h", "q"),
        interpret=plgpu.InterpretGPUParams() if interpret else False,
    )
