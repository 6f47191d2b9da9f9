"""Sliding-window softmax attention as Triton-language kernels (`@triton.jit`), block-sparse.

Our GPU SWA kernel beside tokamax's (`jax_triton_op.py` calls it through jax-triton): only the
kv blocks a query block's window, causality and lengths leave are visited, so the cost grows
with T·w, not T² (tokamax 0.0.17's Triton path turns a window into a dense mask). Semantics:
`reference.attention_reference`; the online-softmax math is `common/softmax.py`'s and the
tiles, ranges and mask are `common/triton_tiles.py`'s, restated in Triton:

    forward   m' = max(m, rowmax S)   P = exp(S - m')   l' = e^(m - m') l + rowsum P
              acc' = e^(m - m') acc + P V;   O = acc / l,  lse = m + log l   (S = c·Q Kᵀ)
    backward  P = exp(S - lse)   dP = dO Vᵀ   dS = P ⊙ (dP - δ),  δ = rowsum(dO ⊙ O)
              dV = Pᵀ dO   dK = c·dSᵀ Q   dQ = c·dS K

Masked scores are the finite MASK_VALUE; a row that sees no key gets O = 0 and lse = +inf (so
its backward P is 0). lse and δ are fp32 [B, H, Tq].
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

MASK_VALUE = tl.constexpr(-0.7 * 3.4028234663852886e38)  # common.softmax.MASK_VALUE
INF = tl.constexpr(float("inf"))


@triton.jit
def _row_offsets(b, h, rows, T: tl.constexpr, H: tl.constexpr):
    """Offsets of rows `rows` of head (b, h) in a [B, H, T] statistics array."""
    return (b.to(tl.int64) * H + h) * T + rows


@triton.jit
def swa_fwd_kernel(
    Q,
    K,
    V,
    Q_LENS,
    KV_LENS,
    OUT,
    LSE,
    T_Q: tl.constexpr,
    T_KV: tl.constexpr,
    H: tl.constexpr,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_KV: tl.constexpr,
    SCALE: tl.constexpr,
    WINDOW: tl.constexpr,
    CAUSAL: tl.constexpr,
    PRECISION: tl.constexpr,
    UNMASKED_LOOP: tl.constexpr,
):
    """O and lse of a (q block, head) by online softmax over the visible kv blocks."""
    qi, b, h, q_len, kv_len = program_head(Q_LENS, KV_LENS, H)
    rows = qi * BLOCK_Q + tl.arange(0, BLOCK_Q)
    dims = tl.arange(0, BLOCK_D)
    q = load_rows(Q, b, h, rows, dims, q_len, T_Q, H, D)
    lo, hi = kv_block_range(qi, q_len, kv_len, BLOCK_Q, BLOCK_KV, WINDOW, CAUSAL)
    whole = unmasked_kv_block_range(qi, q_len, kv_len, BLOCK_Q, BLOCK_KV, WINDOW, CAUSAL)
    ranges = split_at_unmasked(lo, hi, whole, UNMASKED_LOOP)
    m = tl.full((BLOCK_Q,), MASK_VALUE, tl.float32)
    l_sum = tl.zeros((BLOCK_Q,), tl.float32)
    acc = tl.zeros((BLOCK_Q, BLOCK_D), tl.float32)
    for masked in tl.static_range(2):  # the wholly visible blocks, then the masked ones
        m, l_sum, acc = _fwd_blocks(
            m,
            l_sum,
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
            SCALE,
            WINDOW,
            CAUSAL,
            PRECISION,
            masked,
        )
    seen = m > MASK_VALUE * 0.5
    l_safe = tl.where(seen, l_sum, 1.0)
    store_rows(
        OUT, b, h, rows, dims, tl.where(seen[:, None], acc / l_safe[:, None], 0.0), T_Q, H, D
    )
    lse = tl.where(seen, m + tl.log(l_safe), INF)
    tl.store(LSE + _row_offsets(b, h, rows, T_Q, H), lse, mask=rows < T_Q)


@triton.jit
def _fwd_blocks(
    m,
    l_sum,
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
    SCALE: tl.constexpr,
    WINDOW: tl.constexpr,
    CAUSAL: tl.constexpr,
    PRECISION: tl.constexpr,
    MASKED: tl.constexpr,
):
    """The online softmax state (m, l, acc) after the masked or the wholly visible kv blocks
    of `ranges` (`split_at_unmasked`)."""
    for t in range(0, split_count(ranges, MASKED)):
        kj = split_block(t, ranges, MASKED)
        cols = kj * BLOCK_KV + tl.arange(0, BLOCK_KV)
        k = load_rows(K, b, h, cols, dims, kv_len, T_KV, H, D)
        v = load_rows(V, b, h, cols, dims, kv_len, T_KV, H, D)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * SCALE
        if MASKED:
            s = tl.where(
                visible(rows[:, None], cols[None, :], q_len, kv_len, WINDOW, CAUSAL), s, MASK_VALUE
            )
        m_new = tl.maximum(m, tl.max(s, 1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new[:, None])
        l_sum = alpha * l_sum + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m = m_new
    return m, l_sum, acc


@triton.jit
def swa_dkdv_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
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
    SCALE: tl.constexpr,
    WINDOW: tl.constexpr,
    CAUSAL: tl.constexpr,
    PRECISION: tl.constexpr,
    UNMASKED_LOOP: tl.constexpr,
):
    """dK, dV of a (kv block, head) over the query blocks that see it ([kv, q] tiles)."""
    kj, b, h, q_len, kv_len = program_head(Q_LENS, KV_LENS, H)
    cols = kj * BLOCK_KV + tl.arange(0, BLOCK_KV)
    dims = tl.arange(0, BLOCK_D)
    k = load_rows(K, b, h, cols, dims, kv_len, T_KV, H, D)
    v = load_rows(V, b, h, cols, dims, kv_len, T_KV, H, D)
    lo, hi = q_block_range(kj, q_len, kv_len, BLOCK_Q, BLOCK_KV, WINDOW, CAUSAL)
    whole = unmasked_q_block_range(kj, q_len, kv_len, BLOCK_Q, BLOCK_KV, WINDOW, CAUSAL)
    ranges = split_at_unmasked(lo, hi, whole, UNMASKED_LOOP)
    dk = tl.zeros((BLOCK_KV, BLOCK_D), tl.float32)
    dv = tl.zeros((BLOCK_KV, BLOCK_D), tl.float32)
    for masked in tl.static_range(2):  # the wholly visible blocks, then the masked ones
        dk, dv = _dkdv_blocks(
            dk,
            dv,
            Q,
            DO,
            LSE,
            DELTA,
            b,
            h,
            cols,
            dims,
            k,
            v,
            ranges,
            q_len,
            kv_len,
            T_Q,
            H,
            D,
            BLOCK_Q,
            SCALE,
            WINDOW,
            CAUSAL,
            PRECISION,
            masked,
        )
    store_rows(DK, b, h, cols, dims, dk * SCALE, T_KV, H, D)
    store_rows(DV, b, h, cols, dims, dv, T_KV, H, D)


@triton.jit
def _dkdv_blocks(
    dk,
    dv,
    Q,
    DO,
    LSE,
    DELTA,
    b,
    h,
    cols,
    dims,
    k,
    v,
    ranges,
    q_len,
    kv_len,
    T_Q: tl.constexpr,
    H: tl.constexpr,
    D: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    SCALE: tl.constexpr,
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
        stats = _row_offsets(b, h, rows, T_Q, H)
        lse = tl.load(LSE + stats, mask=rows < q_len, other=INF)
        delta = tl.load(DELTA + stats, mask=rows < q_len, other=0.0)
        st = tl.dot(k, tl.trans(q), input_precision=PRECISION) * SCALE
        pt = tl.exp(st - lse[None, :])
        if MASKED:
            pt = tl.where(
                visible(rows[None, :], cols[:, None], q_len, kv_len, WINDOW, CAUSAL), pt, 0.0
            )
        dv += tl.dot(pt.to(do.dtype), do, input_precision=PRECISION)
        dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        dst = pt * (dpt - delta[None, :])
        dk += tl.dot(dst.to(q.dtype), q, input_precision=PRECISION)
    return dk, dv


@triton.jit
def swa_dq_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
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
    SCALE: tl.constexpr,
    WINDOW: tl.constexpr,
    CAUSAL: tl.constexpr,
    PRECISION: tl.constexpr,
    UNMASKED_LOOP: tl.constexpr,
):
    """dQ of a (q block, head) over the forward's kv blocks."""
    qi, b, h, q_len, kv_len = program_head(Q_LENS, KV_LENS, H)
    rows = qi * BLOCK_Q + tl.arange(0, BLOCK_Q)
    dims = tl.arange(0, BLOCK_D)
    q = load_rows(Q, b, h, rows, dims, q_len, T_Q, H, D)
    do = load_rows(DO, b, h, rows, dims, q_len, T_Q, H, D)
    stats = _row_offsets(b, h, rows, T_Q, H)
    lse = tl.load(LSE + stats, mask=rows < q_len, other=INF)
    delta = tl.load(DELTA + stats, mask=rows < q_len, other=0.0)
    lo, hi = kv_block_range(qi, q_len, kv_len, BLOCK_Q, BLOCK_KV, WINDOW, CAUSAL)
    whole = unmasked_kv_block_range(qi, q_len, kv_len, BLOCK_Q, BLOCK_KV, WINDOW, CAUSAL)
    ranges = split_at_unmasked(lo, hi, whole, UNMASKED_LOOP)
    dq = tl.zeros((BLOCK_Q, BLOCK_D), tl.float32)
    for masked in tl.static_range(2):  # the wholly visible blocks, then the masked ones
        dq = _dq_blocks(
            dq,
            q,
            do,
            lse,
            delta,
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
            SCALE,
            WINDOW,
            CAUSAL,
            PRECISION,
            masked,
        )
    store_rows(DQ, b, h, rows, dims, dq * SCALE, T_Q, H, D)


@triton.jit
def _dq_blocks(
    dq,
    q,
    do,
    lse,
    delta,
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
    SCALE: tl.constexpr,
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
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * SCALE
        p = tl.exp(s - lse[:, None])
        if MASKED:
            p = tl.where(
                visible(rows[:, None], cols[None, :], q_len, kv_len, WINDOW, CAUSAL), p, 0.0
            )
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    return dq
