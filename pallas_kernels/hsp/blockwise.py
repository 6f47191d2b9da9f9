"""Per-tile seed-pooling math shared by the TPU-style and Triton-style kernels; the online
softmax itself (m, l, acc updates, finish, δ) is `common.softmax`'s.

One program owns the seeds Q [S, D] of one head and streams the K/V [block_kv, D] tiles of one
batch row. With c = 1/sqrt(D) and m, l, acc the running row max, row sum and output:
    forward   S = c·Q Kᵀ (masked: MASK_VALUE)   m' = max(m, rowmax S)   P = exp(S - m')
              l' = e^(m - m') l + rowsum P      acc' = e^(m - m') acc + P V
              O = acc / l,  lse = m + log l      (l = 0: an empty row, O = 0)
    backward  P = exp(S - lse)   dP = dO Vᵀ   δ = rowsum(dO ⊙ O)   dS = c·P ⊙ (dP - δ)
              dV = Pᵀ dO   dK = dSᵀ Q   dQ += dS K   (dQ summed over kv tiles and batch rows)
Masked keys get the finite MASK_VALUE, not -inf: exp(MASK_VALUE - m) = 0 for any real m, and
no inf - inf can form. Every visited tile holds at least one real key, so m is real after the
first one. Padded seed rows (zeros, with dO = 0) get dS = 0 and never leak into dK / dV. Masked
tiles zero K and V past kv_len (`real_keys`), so whatever padding holds (NaN, inf) contributes
exactly zero.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels.common.softmax import mask_scores, softmax_probs
from pallas_kernels.common.tile_ops import mm, mm_nt, zero_past

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
    return mask_scores(s, cols < kv_len)


def real_keys(x: jax.Array, first_col: jax.Array, kv_len: jax.Array, masked: bool) -> jax.Array:
    """A K or V tile [block_kv, D] whose first key is first_col, with the keys at or past kv_len
    zeroed if `masked` (padding may hold NaN or inf; masked scores alone do not stop them:
    0 · NaN is NaN in P V, dO Vᵀ and dS K)."""
    return zero_past(x, first_col, kv_len) if masked else x


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
    p = softmax_probs(s, lse, None)
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
