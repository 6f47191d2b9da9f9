"""Per-tile seed-pooling math shared by the TPU-style and Triton-style kernels.

One program owns the seeds Q [S, D] of one head and streams the K/V [block_kv, D] tiles of one
batch row. With c = 1/sqrt(D) and m, l, acc the running row max, row sum and output:
    forward   S = c·Q Kᵀ (masked: MASK_VALUE)   m' = max(m, rowmax S)   P = exp(S - m')
              l' = e^(m - m') l + rowsum P      acc' = e^(m - m') acc + P V
              O = acc / l,  lse = m + log l      (l = 0: an empty row, O = 0)
    backward  P = exp(S - lse)   dP = dO Vᵀ   δ = rowsum(dO ⊙ O)   dS = c·P ⊙ (dP - δ)
              dV = Pᵀ dO   dK = dSᵀ Q   dQ += dS K   (dQ summed over kv tiles and batch rows)
Masked keys get the finite MASK_VALUE, not -inf: exp(MASK_VALUE - m) = 0 for any real m, and
no inf - inf can form. Every visited tile holds at least one real key, so m is real after the
first one. Padded seed rows (zeros, with dO = 0) get dS = 0 and never leak into dK / dV.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

from pallas_kernels.common.tile_ops import mm, mm_nt

MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
_TN_DIMS = (((0,), (0,)), ((), ()))


def mm_tn(a: jax.Array, b: jax.Array) -> jax.Array:
    """Aᵀ·B with fp32 accumulation and result, without materializing Aᵀ."""
    return jax.lax.dot_general(a, b, _TN_DIMS, preferred_element_type=jnp.float32)


def scores(
    q: jax.Array, k: jax.Array, *, scale: float, first_col: jax.Array, kv_len: jax.Array, masked
) -> jax.Array:
    """c·Q Kᵀ [S, block_kv] in fp32; keys at positions >= kv_len get MASK_VALUE if `masked`."""
    s = mm_nt(q, k) * scale
    if not masked:
        return s
    cols = first_col + jax.lax.broadcasted_iota(jnp.int32, s.shape, 1)
    return jnp.where(cols < kv_len, s, MASK_VALUE)


def online_softmax_step(
    s: jax.Array, v: jax.Array, m: jax.Array, denom: jax.Array, acc: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(m, l, acc) after one score tile s [S, block_kv] and its values v [block_kv, D];
    m, l = denom: [S, 1], acc: [S, D], all fp32."""
    m_new = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))
    alpha = jnp.exp(m - m_new)
    p = jnp.exp(s - m_new)
    denom_new = alpha * denom + jnp.sum(p, axis=1, keepdims=True)
    return m_new, denom_new, alpha * acc + mm(p.astype(v.dtype), v)


def finish(m: jax.Array, denom: jax.Array, acc: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(O [S, D], lse [S, 1]) from the final statistics (m, l = denom, acc); rows that saw
    no key (l = 0) give O = 0."""
    seen = denom > 0
    safe = jnp.where(seen, denom, 1.0)
    return acc / safe, jnp.where(seen, m + jnp.log(safe), 0.0)


def row_delta(do: jax.Array, o: jax.Array) -> jax.Array:
    """δ = rowsum(dO ⊙ O) [S, 1] in fp32."""
    return jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=1, keepdims=True)


def backward_step(
    s: jax.Array,
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    do: jax.Array,
    lse: jax.Array,
    delta: jax.Array,
    *,
    scale: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(dK tile [block_kv, D], dV tile [block_kv, D], dQ contribution [S, D]), fp32, for the
    (masked) score tile s of this kv tile."""
    p = jnp.exp(s - lse)
    ds = p * (mm_nt(do, v) - delta) * scale
    dv = mm_tn(p.astype(do.dtype), do)
    dk = mm_tn(ds.astype(q.dtype), q)
    return dk, dv, mm(ds.astype(k.dtype), k)


def cost_estimate(seeds: jax.Array, k: jax.Array, kernel: str) -> pl.CostEstimate:
    """Dense (padded-shape) cost of one kernel ("fwd" or "bwd") for XLA's scheduler.

    seeds: [S, H, D] (kernel layout may add a leading 1); k: [B, T, H, D].
    fwd: 2 matmuls (S, PV), reads K, V; bwd: 5 matmuls (S, dP, dV, dK, dQ), reads K, V, writes
    dK, dV. One exp per score.
    """
    s_rows, heads, dim = seeds.shape[-3:]
    batch, t = k.shape[:2]
    scores_n = batch * heads * s_rows * t
    matmuls, kv_moves = {"fwd": (2, 2), "bwd": (5, 4)}[kernel]
    return pl.CostEstimate(
        flops=2 * matmuls * scores_n * dim,
        transcendentals=scores_n,
        bytes_accessed=kv_moves * k.size * k.dtype.itemsize,
    )
