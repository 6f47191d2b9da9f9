"""Static description of one SWA call and the cost model shared by its Pallas kernels.

Mask (the reference's): query i sees key j iff i < q_len, j < kv_len, |i - j| <= window
(window None = unlimited) and j <= i if causal. Tile math: `common.softmax`.
"""

from __future__ import annotations

import dataclasses

import jax
from jax.experimental import pallas as pl

from pallas_kernels.common import blocks


@dataclasses.dataclass(frozen=True)
class SwaSpec:
    """Hashable static part of one call: logit scale c and the mask kind."""

    scale: float
    window: int | None
    causal: bool

    def visible(
        self, q_idx: jax.Array, kv_idx: jax.Array, q_len: blocks.Int, kv_len: blocks.Int
    ) -> jax.Array:
        """Mask predicate over broadcastable query/key position arrays."""
        return blocks.visible(
            q_idx, kv_idx, q_len=q_len, kv_len=kv_len, window=self.window, causal=self.causal
        )


# Per kernel: (matmuls of 2·D FLOPs per score, arrays of the outer (per-program) side moved
# once, arrays of the inner (streamed) side moved once per visited step).
KERNEL_TRAFFIC = {
    "fwd": (2, 2, 2),  # S, PV; outer q, o; inner k, v
    "dq": (3, 3, 2),  # S, dP, dQ; outer q, dO, dQ; inner k, v
    "dkdv": (4, 4, 2),  # Sᵀ, dPᵀ, dV, dK; outer k, v, dK, dV; inner q, dO
}


def cost_estimate(
    outer: jax.Array,
    kernel: str,
    *,
    block_outer: int,
    steps: int,
    block_inner: int,
) -> pl.CostEstimate:
    """Cost of the tiles one kernel's grid visits (at most `steps` inner blocks per outer block)
    for XLA's scheduler. outer: [B, T, H, D], the side one program owns (q for "fwd" and "dq",
    k for "dkdv"). One exp per score."""
    batch, t_outer, heads, dim = outer.shape
    scores = batch * heads * t_outer * steps * block_inner
    matmuls, outer_moves, inner_moves = KERNEL_TRAFFIC[kernel]
    itemsize = outer.dtype.itemsize
    streamed = batch * heads * (t_outer // block_outer) * steps * block_inner * dim * itemsize
    return pl.CostEstimate(
        flops=2 * matmuls * scores * dim,
        transcendentals=scores,
        bytes_accessed=outer_moves * outer.size * itemsize + inner_moves * streamed,
    )
