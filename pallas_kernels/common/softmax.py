"""Online-softmax (flash attention) tile math shared by the blocked softmax-attention kernels.

For one program's rows (queries) and a stream of key tiles, with fp32 scores S = c·Q Kᵀ and
running row max m, row sum l and output accumulator acc:
    forward   m' = max(m, rowmax S)   P = exp(S - m')   l' = e^(m - m') l + rowsum P
              acc' = e^(m - m') acc + P V;   at the end O = acc / l,  lse = m + log l
    backward  P = exp(S - lse)   dP = dO Vᵀ   δ = rowsum(dO ⊙ O)   dS = P ⊙ (dP - δ)
              dV = Pᵀ dO   dK = c·dSᵀ Q   dQ = c·dS K
Masked scores are set to the finite MASK_VALUE, never -inf, so no inf - inf forms. A row whose
keys are all masked keeps m = MASK_VALUE (its garbage l, acc are wiped by e^(m - m') = 0 as
soon as a visible key arrives); a row that never sees a visible key ends with m <= MASK_VALUE
and gets O = 0 and lse = +inf (so P = exp(S - lse) = 0 in the backward).
Every function works on either orientation: rows = queries ([q, kv] tiles, statistics as
columns [q, 1]) or rows = keys ([kv, q] tiles, statistics as rows [1, q]).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.common.tile_ops import mm

MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def mask_scores(s: jax.Array, visible: jax.Array | None) -> jax.Array:
    """Scores with invisible positions set to MASK_VALUE (no-op for visible=None)."""
    return s if visible is None else jnp.where(visible, s, MASK_VALUE)


def online_softmax_step(
    s: jax.Array, v: jax.Array, m: jax.Array, l_sum: jax.Array, acc: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(m, l, acc) after one masked score tile s [R, C] and its values v [C, D];
    m, l_sum: [R, 1] (m starts at -inf, l at 0), acc: [R, D] (starts at 0), all fp32."""
    m_new = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))
    alpha = jnp.exp(m - m_new)
    p = jnp.exp(s - m_new)
    l_new = alpha * l_sum + jnp.sum(p, axis=1, keepdims=True)
    return m_new, l_new, alpha * acc + mm(p.astype(v.dtype), v)


def softmax_tile(s: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(O [R, D], lse [R, 1]) of a masked score tile s [R, C] fp32 holding every key its rows
    see, and its values v [C, D]: the one-tile form of `online_softmax_step` +
    `softmax_finish` (no running statistics to rescale; same empty-row convention)."""
    m = jnp.max(s, axis=1, keepdims=True)
    p = jnp.exp(s - m)
    acc = mm(p.astype(v.dtype), v)
    return softmax_finish(m, jnp.sum(p, axis=1, keepdims=True), acc)


def softmax_finish(
    m: jax.Array, l_sum: jax.Array, acc: jax.Array, *, empty_lse: float = float("inf")
) -> tuple[jax.Array, jax.Array]:
    """(O [R, D], lse [R, 1]) from the final statistics; rows that saw no visible key give
    O = 0 and lse = empty_lse (+inf by default, so P = exp(S - lse) = 0 in a backward that
    visits such a row)."""
    seen = m > 0.5 * MASK_VALUE
    l_safe = jnp.where(seen, l_sum, 1.0)
    o = jnp.where(seen, acc / l_safe, 0.0)
    return o, jnp.where(seen, m + jnp.log(l_safe), empty_lse)


def softmax_probs(s: jax.Array, lse: jax.Array, visible: jax.Array | None) -> jax.Array:
    """P = exp(S - lse) for a recomputed score tile, exactly 0 where not visible."""
    p = jnp.exp(s - lse)
    return p if visible is None else jnp.where(visible, p, 0.0)


def row_delta(do: jax.Array, o: jax.Array, axis: int = -1, *, keepdims: bool = False) -> jax.Array:
    """δ = Σ dO ⊙ O over the head dim `axis`, in fp32 (the backward's row correction)."""
    prod = do.astype(jnp.float32) * o.astype(jnp.float32)
    return jnp.sum(prod, axis=axis, keepdims=keepdims)
