"""GDPA forward and backward as Triton-language kernels (`@triton.jit`).

The comparison point for the Pallas kernels: the same op written directly in Triton and called
through `jax_triton.triton_call` (`jax_triton_op.py`). On CPU the kernels run in Triton's
interpreter (TRITON_INTERPRET=1 before triton is imported) and compile to cubin for sm_90 and
sm_100 (tests/kernels/test_jax_triton_compile.py). Semantics: `reference.gdpa_reference`;
the tile math is `blockwise.py`'s, the activations and their derivatives are
`common/activations.py`'s, restated in Triton; block ranges, masks and row tiles come from
`common/triton_tiles.py`.

Layout and conventions: `common/triton_tiles.py` (contiguous [B, T, H, D], nothing padded).
Shapes, scales, mask kind (WINDOW < 0: no window) and the activation are constexprs:
jax-triton specializes every scalar anyway.

Grids: forward and dQ (cdiv(Tq, BLOCK_Q), B·H), dK/dV (cdiv(Tkv, BLOCK_KV), B·H); each program
loops over exactly the blocks its mask can see, so padded / out-of-window blocks cost nothing.
"""

from __future__ import annotations

import triton
import triton.language as tl

from pallas_kernels.common.triton_tiles import (
    kv_block_range,
    load_rows,
    program_head,
    q_block_range,
    split_at_unmasked,
    split_block,
    split_count,
    store_rows,
    unmasked_kv_block_range,
    unmasked_q_block_range,
    visible,
)

INV_SQRT_2 = tl.constexpr(0.7071067811865476)
INV_SQRT_2PI = tl.constexpr(0.3989422804014327)
SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)
GELU_TANH_CUBIC = tl.constexpr(0.044715)
LEAKY_SLOPE = tl.constexpr(0.01)  # common.activations.LEAKY_SLOPE
HARDSWISH_KNEE = tl.constexpr(3.0)  # common.activations.HARDSWISH_KNEE
# Tensors go first in products with these: Triton 3.9's interpreter cannot multiply
# constexpr * tensor (the compiler can).


@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _times(x, FACTOR: tl.constexpr):
    """x · FACTOR, with no multiply when FACTOR is 1 (`GdpaSpec.tile_scale`: fp16 tiles carry
    β, αβ for dS, before their cast; other dtypes scale the accumulators at the end)."""
    if FACTOR != 1.0:
        x = x * FACTOR
    return x


@triton.jit
def _sigmoid(x, FAST_TANH: tl.constexpr):
    """σ of an fp32 tile: when FAST_TANH (compiled kernels, 16-bit inputs) ½ + ½·tanh(x/2)
    with one PTX tanh.approx.f32 (one MUFU instruction instead of an ex2 and a rcp;
    `common/activations.py`), else Triton's 1 / (1 + e^-x)."""
    if FAST_TANH:
        t = tl.inline_asm_elementwise(
            "tanh.approx.f32 $0, $1;", "=f,f", [x * 0.5], dtype=tl.float32, is_pure=True, pack=1
        )
        y = t * 0.5 + 0.5
    else:
        y = tl.sigmoid(x)
    return y


@triton.jit
def activation(x, ACT: tl.constexpr, FAST_TANH: tl.constexpr):
    """Act(x) for an fp32 tile; ACT names an entry of `common.activations.ACTIVATIONS`."""
    if ACT == "silu":
        y = x * _sigmoid(x, FAST_TANH)
    elif ACT == "gelu":
        y = 0.5 * x * (1.0 + tl.erf(x * INV_SQRT_2))
    elif ACT == "gelu_tanh":
        y = 0.5 * x * (1.0 + _tanh((x + x * x * x * GELU_TANH_CUBIC) * SQRT_2_OVER_PI))
    elif ACT == "relu":
        y = tl.maximum(x, 0.0)
    elif ACT == "relu2":
        y = tl.maximum(x, 0.0) * tl.maximum(x, 0.0)
    elif ACT == "sigmoid":
        y = _sigmoid(x, FAST_TANH)
    elif ACT == "identity":
        y = x
    elif ACT == "leaky_relu":
        y = tl.where(x > 0, x, x * LEAKY_SLOPE)
    else:
        tl.static_assert(ACT == "hardswish", "unknown GDPA activation")
        ramp = tl.minimum(tl.maximum(x + HARDSWISH_KNEE, 0.0), HARDSWISH_KNEE * 2.0)
        y = x * ramp / (HARDSWISH_KNEE * 2.0)
    return y


@triton.jit
def activation_grad(x, ACT: tl.constexpr, FAST_TANH: tl.constexpr):
    """Act'(x) for an fp32 tile."""
    if ACT == "silu":
        s = _sigmoid(x, FAST_TANH)
        y = s * (1.0 + x * (1.0 - s))
    elif ACT == "gelu":
        y = 0.5 * (1.0 + tl.erf(x * INV_SQRT_2)) + x * tl.exp(-0.5 * x * x) * INV_SQRT_2PI
    elif ACT == "gelu_tanh":
        t = _tanh((x + x * x * x * GELU_TANH_CUBIC) * SQRT_2_OVER_PI)
        du = (1.0 + x * x * (3.0 * GELU_TANH_CUBIC)) * SQRT_2_OVER_PI
        y = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du
    elif ACT == "relu":
        y = tl.where(x > 0, 1.0, 0.0)
    elif ACT == "relu2":
        y = 2.0 * tl.maximum(x, 0.0)
    elif ACT == "sigmoid":
        s = _sigmoid(x, FAST_TANH)
        y = s * (1.0 - s)
    elif ACT == "identity":
        y = tl.full(x.shape, 1.0, tl.float32)
    elif ACT == "leaky_relu":
        y = tl.where(x > 0, 1.0, LEAKY_SLOPE)
    else:
        tl.static_assert(ACT == "hardswish", "unknown GDPA activation")
        ramp = (x * 2.0 + HARDSWISH_KNEE) / (HARDSWISH_KNEE * 2.0)
        y = tl.where(x < -HARDSWISH_KNEE, 0.0, tl.where(x > HARDSWISH_KNEE, 1.0, ramp))
    return y


@triton.jit
def gdpa_fwd_kernel(
    Q,
    K,
    V,
    Q_LENS,
    KV_LENS,
    OUT,
    T_Q: tl.constexpr,
    T_KV: tl.constexpr,
    H: tl.constexpr,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_KV: tl.constexpr,
    ACT: tl.constexpr,
    FAST_TANH: tl.constexpr,
    QK_SCALE: tl.constexpr,
    P_SCALE: tl.constexpr,
    OUT_SCALE: tl.constexpr,
    WINDOW: tl.constexpr,
    CAUSAL: tl.constexpr,
    PRECISION: tl.constexpr,
    UNMASKED_LOOP: tl.constexpr,
):
    """O tile (q block, head): O = β Σ_j (M ⊙ Act(α Q K_jᵀ)) V_j over the visible kv blocks,
    β = P_SCALE · OUT_SCALE applied to each P tile and to the accumulator."""
    qi, b, h, q_len, kv_len = program_head(Q_LENS, KV_LENS, H)
    rows = qi * BLOCK_Q + tl.arange(0, BLOCK_Q)
    dims = tl.arange(0, BLOCK_D)
    q = load_rows(Q, b, h, rows, dims, q_len, T_Q, H, D)
    lo, hi = kv_block_range(qi, q_len, kv_len, BLOCK_Q, BLOCK_KV, WINDOW, CAUSAL)
    whole = unmasked_kv_block_range(qi, q_len, kv_len, BLOCK_Q, BLOCK_KV, WINDOW, CAUSAL)
    ranges = split_at_unmasked(lo, hi, whole, UNMASKED_LOOP)
    acc = tl.zeros((BLOCK_Q, BLOCK_D), tl.float32)
    for masked in tl.static_range(2):  # the wholly visible blocks, then the masked ones
        acc = _fwd_blocks(
            acc,
            q,
            K,
            V,
            b,
            h,
            rows,
            dims,
            ranges,
            q_len,
            kv_len,
            T_KV,
            H,
            D,
            BLOCK_KV,
            ACT,
            FAST_TANH,
            QK_SCALE,
            P_SCALE,
            WINDOW,
            CAUSAL,
            PRECISION,
            masked,
        )
    store_rows(OUT, b, h, rows, dims, acc * OUT_SCALE, T_Q, H, D)


@triton.jit
def _fwd_blocks(
    acc,
    q,
    K,
    V,
    b,
    h,
    rows,
    dims,
    ranges,
    q_len,
    kv_len,
    T_KV: tl.constexpr,
    H: tl.constexpr,
    D: tl.constexpr,
    BLOCK_KV: tl.constexpr,
    ACT: tl.constexpr,
    FAST_TANH: tl.constexpr,
    QK_SCALE: tl.constexpr,
    P_SCALE: tl.constexpr,
    WINDOW: tl.constexpr,
    CAUSAL: tl.constexpr,
    PRECISION: tl.constexpr,
    MASKED: tl.constexpr,
):
    """acc += Σ P_kj V_kj over the masked or the wholly visible kv blocks of `ranges`."""
    for t in range(0, split_count(ranges, MASKED)):
        kj = split_block(t, ranges, MASKED)
        cols = kj * BLOCK_KV + tl.arange(0, BLOCK_KV)
        k = load_rows(K, b, h, cols, dims, kv_len, T_KV, H, D)
        v = load_rows(V, b, h, cols, dims, kv_len, T_KV, H, D)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        p = _times(activation(s * QK_SCALE, ACT, FAST_TANH), P_SCALE)
        if MASKED:
            p = tl.where(
                visible(rows[:, None], cols[None, :], q_len, kv_len, WINDOW, CAUSAL), p, 0.0
            )
        acc += tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return acc


@triton.jit
def gdpa_dkdv_kernel(
    Q,
    K,
    V,
    DO,
    Q_LENS,
    KV_LENS,
    DK,
    DV,
    T_Q: tl.constexpr,
    T_KV: tl.constexpr,
    H: tl.constexpr,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_KV: tl.constexpr,
    ACT: tl.constexpr,
    FAST_TANH: tl.constexpr,
    QK_SCALE: tl.constexpr,
    P_SCALE: tl.constexpr,
    DS_SCALE: tl.constexpr,
    OUT_SCALE: tl.constexpr,
    GRAD_SCALE: tl.constexpr,
    WINDOW: tl.constexpr,
    CAUSAL: tl.constexpr,
    PRECISION: tl.constexpr,
    UNMASKED_LOOP: tl.constexpr,
    SPLIT_BLOCKS: tl.constexpr,
    SPLIT_STRIDE: tl.constexpr,
):
    """dK, dV tiles (kv block, head) over the query blocks that see it, on transposed
    [kv, q] score tiles: dV += Pᵀ dO, dK += dSᵀ Q. Split s = program_id(2) covers query blocks
    [s·SPLIT_BLOCKS, (s + 1)·SPLIT_BLOCKS) and writes at DK / DV + s·SPLIT_STRIDE (fp32
    partials [splits, B, Tkv, H, D] when there are several splits). β = P_SCALE · OUT_SCALE and
    αβ = DS_SCALE · GRAD_SCALE, on the tiles and on the accumulators."""
    kj, b, h, q_len, kv_len = program_head(Q_LENS, KV_LENS, H)
    split = tl.program_id(2)
    cols = kj * BLOCK_KV + tl.arange(0, BLOCK_KV)
    dims = tl.arange(0, BLOCK_D)
    k = load_rows(K, b, h, cols, dims, kv_len, T_KV, H, D)
    v = load_rows(V, b, h, cols, dims, kv_len, T_KV, H, D)
    lo, hi = q_block_range(kj, q_len, kv_len, BLOCK_Q, BLOCK_KV, WINDOW, CAUSAL)
    lo = tl.maximum(lo, split * SPLIT_BLOCKS)
    hi = tl.minimum(hi, (split + 1) * SPLIT_BLOCKS)
    whole = unmasked_q_block_range(kj, q_len, kv_len, BLOCK_Q, BLOCK_KV, WINDOW, CAUSAL)
    # With a second loop body exact GELU's dK/dV spills registers (Hopper, D = 128).
    ranges = split_at_unmasked(lo, hi, whole, UNMASKED_LOOP and ACT != "gelu")
    dk = tl.zeros((BLOCK_KV, BLOCK_D), tl.float32)
    dv = tl.zeros((BLOCK_KV, BLOCK_D), tl.float32)
    for masked in tl.static_range(2):  # the wholly visible blocks, then the masked ones
        dk, dv = _dkdv_blocks(
            dk,
            dv,
            Q,
            DO,
            b,
            h,
            cols,
            dims,
            k,
            v,
            q_len,
            kv_len,
            T_Q,
            H,
            D,
            BLOCK_Q,
            ranges,
            ACT,
            FAST_TANH,
            QK_SCALE,
            P_SCALE,
            DS_SCALE,
            WINDOW,
            CAUSAL,
            PRECISION,
            masked,
        )
    offset = split * SPLIT_STRIDE
    store_rows(DK + offset, b, h, cols, dims, dk * GRAD_SCALE, T_KV, H, D)
    store_rows(DV + offset, b, h, cols, dims, dv * OUT_SCALE, T_KV, H, D)


@triton.jit
def _dkdv_blocks(
    dk,
    dv,
    Q,
    DO,
    b,
    h,
    cols,
    dims,
    k,
    v,
    q_len,
    kv_len,
    T_Q: tl.constexpr,
    H: tl.constexpr,
    D: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    ranges,
    ACT: tl.constexpr,
    FAST_TANH: tl.constexpr,
    QK_SCALE: tl.constexpr,
    P_SCALE: tl.constexpr,
    DS_SCALE: tl.constexpr,
    WINDOW: tl.constexpr,
    CAUSAL: tl.constexpr,
    PRECISION: tl.constexpr,
    MASKED: tl.constexpr,
):
    """(dK, dV) += the terms of the masked or the wholly visible query blocks of `ranges`."""
    for t in range(0, split_count(ranges, MASKED)):
        qi = split_block(t, ranges, MASKED)
        rows = qi * BLOCK_Q + tl.arange(0, BLOCK_Q)
        q = load_rows(Q, b, h, rows, dims, q_len, T_Q, H, D)
        do = load_rows(DO, b, h, rows, dims, q_len, T_Q, H, D)
        st = tl.dot(k, tl.trans(q), input_precision=PRECISION) * QK_SCALE
        pt = _times(activation(st, ACT, FAST_TANH), P_SCALE)
        dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        dst = _times(dpt * activation_grad(st, ACT, FAST_TANH), DS_SCALE)
        if MASKED:
            real = visible(rows[None, :], cols[:, None], q_len, kv_len, WINDOW, CAUSAL)
            pt = tl.where(real, pt, 0.0)
            dst = tl.where(real, dst, 0.0)
        dk += tl.dot(dst.to(q.dtype), q, input_precision=PRECISION)
        dv += tl.dot(pt.to(do.dtype), do, input_precision=PRECISION)
    return dk, dv


@triton.jit
def gdpa_dq_kernel(
    Q,
    K,
    V,
    DO,
    Q_LENS,
    KV_LENS,
    DQ,
    T_Q: tl.constexpr,
    T_KV: tl.constexpr,
    H: tl.constexpr,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_KV: tl.constexpr,
    ACT: tl.constexpr,
    FAST_TANH: tl.constexpr,
    QK_SCALE: tl.constexpr,
    DS_SCALE: tl.constexpr,
    GRAD_SCALE: tl.constexpr,
    WINDOW: tl.constexpr,
    CAUSAL: tl.constexpr,
    PRECISION: tl.constexpr,
    UNMASKED_LOOP: tl.constexpr,
):
    """dQ tile (q block, head) over the forward's kv blocks: dQ += αβ (M ⊙ dO Vᵀ ⊙ Act') K,
    αβ = DS_SCALE · GRAD_SCALE on each dS tile and on the accumulator."""
    qi, b, h, q_len, kv_len = program_head(Q_LENS, KV_LENS, H)
    rows = qi * BLOCK_Q + tl.arange(0, BLOCK_Q)
    dims = tl.arange(0, BLOCK_D)
    q = load_rows(Q, b, h, rows, dims, q_len, T_Q, H, D)
    do = load_rows(DO, b, h, rows, dims, q_len, T_Q, H, D)
    lo, hi = kv_block_range(qi, q_len, kv_len, BLOCK_Q, BLOCK_KV, WINDOW, CAUSAL)
    whole = unmasked_kv_block_range(qi, q_len, kv_len, BLOCK_Q, BLOCK_KV, WINDOW, CAUSAL)
    ranges = split_at_unmasked(lo, hi, whole, UNMASKED_LOOP)
    dq = tl.zeros((BLOCK_Q, BLOCK_D), tl.float32)
    for masked in tl.static_range(2):  # the wholly visible blocks, then the masked ones
        dq = _dq_blocks(
            dq,
            q,
            do,
            K,
            V,
            b,
            h,
            rows,
            dims,
            q_len,
            kv_len,
            T_KV,
            H,
            D,
            BLOCK_KV,
            ranges,
            ACT,
            FAST_TANH,
            QK_SCALE,
            DS_SCALE,
            WINDOW,
            CAUSAL,
            PRECISION,
            masked,
        )
    store_rows(DQ, b, h, rows, dims, dq * GRAD_SCALE, T_Q, H, D)


@triton.jit
def _dq_blocks(
    dq,
    q,
    do,
    K,
    V,
    b,
    h,
    rows,
    dims,
    q_len,
    kv_len,
    T_KV: tl.constexpr,
    H: tl.constexpr,
    D: tl.constexpr,
    BLOCK_KV: tl.constexpr,
    ranges,
    ACT: tl.constexpr,
    FAST_TANH: tl.constexpr,
    QK_SCALE: tl.constexpr,
    DS_SCALE: tl.constexpr,
    WINDOW: tl.constexpr,
    CAUSAL: tl.constexpr,
    PRECISION: tl.constexpr,
    MASKED: tl.constexpr,
):
    """dQ += dS K over the masked or the wholly visible kv blocks of `ranges`."""
    for t in range(0, split_count(ranges, MASKED)):
        kj = split_block(t, ranges, MASKED)
        cols = kj * BLOCK_KV + tl.arange(0, BLOCK_KV)
        k = load_rows(K, b, h, cols, dims, kv_len, T_KV, H, D)
        v = load_rows(V, b, h, cols, dims, kv_len, T_KV, H, D)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * QK_SCALE
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = _times(dp * activation_grad(s, ACT, FAST_TANH), DS_SCALE)
        if MASKED:
            ds = tl.where(
                visible(rows[:, None], cols[None, :], q_len, kv_len, WINDOW, CAUSAL), ds, 0.0
            )
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    return dq
