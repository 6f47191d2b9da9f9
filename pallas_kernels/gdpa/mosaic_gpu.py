"""GDPA forward as a Pallas Mosaic GPU (Hopper wgmma) kernel for the personalized-FFN regime.

Status: **forward and backward checked in the Mosaic GPU interpreter on CPU, never run on a
GPU** (no GPU was lent while it was written). It runs as `gdpa(backend="pallas_mosaic_gpu")`
and is never chosen by "auto"; the Triton-lowered kernel stays the GPU path until this one is
compiled and measured. Known gaps before it can run on hardware: the SMEM operands of `wgmma`
carry no tiling / swizzle transforms yet (Hopper needs them; the interpreter does not), and
nothing overlaps the copies with compute (one TMA round per tile, no warp specialization).

Regime: cross-attention with short K/V (Kunlun's GDPA FFN: Tkv = n_sum, 8-256), so a tile's
whole K and V live in shared memory. One program per (batch row, head, 64-row query tile):

    TMA  Q tile [64, D], K [Tkv, D], V [Tkv, D] -> SMEM
    S  = wgmma(Q, Kᵀ)                              fp32 accumulator [64, Tkv]
    P  = where(row < q_len & col < kv_len, out_scale · Act(qk_scale · S), 0)  -> SMEM (bf16/f16)
    O  = wgmma(P, V)                               fp32 accumulator [64, D]  -> SMEM -> TMA out

The backward (`_build_backward`) runs one program per (batch row, head) that walks the query
tiles, recomputes S, writes dQ per tile and accumulates dK, dV in wgmma accumulators.

Inputs are zero-padded to Tq, Tkv, D multiples of 64 (wgmma's M, and its K for bf16/f16 in
whole 64-element swizzle rows); padding is masked, so padded query rows come out zero.
"""

from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class _Static:
    """The custom_vjp's non-differentiable configuration."""

    activation: str
    qk_scale: float
    out_scale: float
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
    interpret: bool = False,
) -> jax.Array:
    """GDPA (semantics of `reference.gdpa_reference`, no window / causal mask), forward and
    backward as Mosaic GPU kernels behind a `custom_vjp`; lengths get no gradient.

    q: [B, Tq, H, D]; k, v: [B, Tkv, H, D] in bf16 or f16; lengths int [B] (None = full).
    Returns [B, Tq, H, D] in q's dtype. interpret: run in the Mosaic GPU interpreter (CPU).
    Raises ValueError when K/V do not fit in shared memory (use the Triton kernel then).
    """
    check_attention_inputs("GDPA", q, k, v, q_lengths, kv_lengths, None)
    if jnp.dtype(q.dtype) not in DTYPES:
        raise ValueError(f"the Mosaic GPU GDPA kernel takes bf16 or f16 inputs, got {q.dtype}")
    get_activation(activation)  # a clear error for an unknown name
    _, tq, _, d = q.shape
    if tq == 0 or k.shape[1] == 0:  # nothing to attend: no grid to launch
        return jnp.zeros_like(q)
    tq_pad, tkv_pad, d_pad = round_up(tq, BLOCK_Q), round_up(k.shape[1], ALIGN), round_up(d, ALIGN)
    need = smem_bytes(tkv_pad, d_pad, jnp.dtype(q.dtype).itemsize)
    if need > SMEM_BUDGET_BYTES:
        raise ValueError(
            f"k/v length {k.shape[1]} with head dim {d} needs {need} bytes of shared memory "
            f"(> {SMEM_BUDGET_BYTES}); this kernel keeps K/V whole, for short K/V: use "
            "backend='pallas_triton' for long ones"
        )
    padded = pad_attention_inputs(
        q, k, v, q_lengths, kv_lengths, tq_pad=tq_pad, tkv_pad=tkv_pad, d_pad=d_pad
    )
    static = _Static(activation, float(qk_scale), float(out_scale), interpret)
    return _gdpa(static, *padded)[:, :tq, :, :d]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _gdpa(static: _Static, q, k, v, q_lens, kv_lens) -> jax.Array:
    """Forward kernel on inputs padded to the kernel's multiples."""
    act, _ = get_activation(static.activation)
    score = functools.partial(_scaled_activation, act, static.qk_scale, static.out_scale)
    kernel = _build(q.shape, k.shape[1], jnp.dtype(q.dtype), score, static.interpret)
    return kernel(q, k, v, q_lens, kv_lens)


def _gdpa_fwd(static: _Static, q, k, v, q_lens, kv_lens):
    return _gdpa(static, q, k, v, q_lens, kv_lens), (q, k, v, q_lens, kv_lens)


def _gdpa_bwd(static: _Static, residuals, do):
    q, k, v, q_lens, kv_lens = residuals
    act, dact = get_activation(static.activation)
    scales = (static.qk_scale, static.out_scale)
    kernel = _build_backward(
        q.shape,
        k.shape[1],
        jnp.dtype(q.dtype),
        functools.partial(_scaled_activation, act, *scales),
        functools.partial(_scaled_derivative, dact, *scales),
        static.interpret,
    )
    dq, dk, dv = kernel(q, k, v, do.astype(q.dtype), q_lens, kv_lens)
    return dq, dk, dv, None, None


_gdpa.defvjp(_gdpa_fwd, _gdpa_bwd)


def _scaled_activation(act, qk_scale: float, out_scale: float, s: jax.Array) -> jax.Array:
    return out_scale * act(qk_scale * s)


def _scaled_derivative(dact, qk_scale: float, out_scale: float, s: jax.Array) -> jax.Array:
    """d(out_scale · Act(qk_scale · s)) / ds."""
    return (out_scale * qk_scale) * dact(qk_scale * s)


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

        s = _matmul(q_smem, k_smem.transpose((1, 0)), (BLOCK_Q, tkv))
        real = _real_scores(s.shape, qi, ql_gmem[bi], kvl_gmem[bi])
        p_smem[...] = jnp.where(real, score(s), 0.0).astype(dtype)  # masked: exactly 0
        plgpu.commit_smem()
        plgpu.barrier_wait(barriers.at[2])

        o_smem[...] = _matmul(p_smem, v_smem, (BLOCK_Q, d)).astype(dtype)
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


def _build_backward(
    shape: tuple[int, int, int, int], tkv: int, dtype, score, derivative, interpret
):
    """One program per (batch row, head): loops over the 64-row query tiles, writes each dQ
    tile and accumulates dK, dV [Tkv, D] in two wgmma accumulators.

        S = Q Kᵀ, dP = dO Vᵀ, P = mask · f(S), dS = mask · f'(S) · dP
        dQ = dS K,  dK += dSᵀ Q,  dV += Pᵀ dO       (f = out_scale · Act(qk_scale · ))
    """
    b, tq, h, d = shape

    def body(q_gmem, k_gmem, v_gmem, do_gmem, ql_gmem, kvl_gmem, dq_gmem, dk_gmem, dv_gmem, *sc):
        q_smem, do_smem, k_smem, v_smem, p_smem, ds_smem, out_smem, kv_out_smem, barriers = sc
        bi, hi = lax.axis_index("b"), lax.axis_index("h")
        plgpu.copy_gmem_to_smem(k_gmem.at[bi, :, hi], k_smem, barriers.at[0])
        plgpu.copy_gmem_to_smem(v_gmem.at[bi, :, hi], v_smem, barriers.at[1])
        plgpu.barrier_wait(barriers.at[0])
        plgpu.barrier_wait(barriers.at[1])
        q_len, kv_len = ql_gmem[bi], kvl_gmem[bi]

        def accumulate(dk_acc, dv_acc):
            @pl.loop(0, tq // BLOCK_Q)
            def _(qi):
                rows = pl.ds(qi * BLOCK_Q, BLOCK_Q)
                plgpu.copy_gmem_to_smem(q_gmem.at[bi, rows, hi], q_smem, barriers.at[2])
                plgpu.copy_gmem_to_smem(do_gmem.at[bi, rows, hi], do_smem, barriers.at[3])
                plgpu.barrier_wait(barriers.at[2])
                plgpu.barrier_wait(barriers.at[3])
                s = _matmul(q_smem, k_smem.transpose((1, 0)), (BLOCK_Q, tkv))
                dp = _matmul(do_smem, v_smem.transpose((1, 0)), (BLOCK_Q, tkv))
                real = _real_scores(s.shape, qi, q_len, kv_len)
                p_smem[...] = jnp.where(real, score(s), 0.0).astype(dtype)
                ds_smem[...] = jnp.where(real, derivative(s) * dp, 0.0).astype(dtype)
                plgpu.commit_smem()
                out_smem[...] = _matmul(ds_smem, k_smem, (BLOCK_Q, d)).astype(dtype)
                plgpu.commit_smem()
                plgpu.copy_smem_to_gmem(out_smem, dq_gmem.at[bi, rows, hi])
                plgpu.wgmma(dv_acc, p_smem.transpose((1, 0)), do_smem)
                plgpu.wgmma(dk_acc, ds_smem.transpose((1, 0)), q_smem)
                plgpu.wgmma_wait(0)  # P, dS, Q and dO tiles are overwritten next
                plgpu.wait_smem_to_gmem(0)

            return dk_acc[...], dv_acc[...]

        acc = plgpu.ACC((tkv, d), jnp.float32)
        dk, dv = pl.run_scoped(accumulate, acc, acc)
        for grad, out in ((dk, dk_gmem), (dv, dv_gmem)):
            kv_out_smem[...] = grad.astype(dtype)
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(kv_out_smem, out.at[bi, :, hi])
            plgpu.wait_smem_to_gmem(0)

    q_tile, kv = plgpu.SMEM((BLOCK_Q, d), dtype), plgpu.SMEM((tkv, d), dtype)
    score_tile = plgpu.SMEM((BLOCK_Q, tkv), dtype)
    return plgpu.kernel(
        body,
        out_type=(
            jax.ShapeDtypeStruct(shape, dtype),
            jax.ShapeDtypeStruct((b, tkv, h, d), dtype),
            jax.ShapeDtypeStruct((b, tkv, h, d), dtype),
        ),
        scratch_types=[
            *(q_tile, q_tile, kv, kv, score_tile, score_tile, q_tile, kv),
            plgpu.Barrier(num_barriers=4),
        ],
        grid=(b, h),
        grid_names=("b", "h"),
        interpret=plgpu.InterpretGPUParams() if interpret else False,
    )


def _real_scores(shape: tuple[int, int], q_tile, q_len, kv_len) -> jax.Array:
    """bool [64, Tkv] (WGMMA layout): score (i, j) of query tile `q_tile` is a real query row
    (i < q_len) against a real key (j < kv_len)."""
    row = plgpu.broadcasted_iota(jnp.int32, shape, 0, layout=plgpu.Layout.WGMMA)
    col = plgpu.broadcasted_iota(jnp.int32, shape, 1, layout=plgpu.Layout.WGMMA)
    return (row + q_tile * BLOCK_Q < q_len) & (col < kv_len)


def _matmul(a_smem, b_smem, shape: tuple[int, int]) -> jax.Array:
    """a @ b of two SMEM operands through a scoped fp32 wgmma accumulator of `shape`."""

    def run(acc_ref):
        plgpu.wgmma(acc_ref, a_smem, b_smem)
        return acc_ref[...]

    return pl.run_scoped(run, plgpu.ACC(shape, jnp.float32))
