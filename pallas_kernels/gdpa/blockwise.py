"""Per-tile GDPA math shared by every kernel (TPU-style and Triton-style, forward and backward).

With S = Q Kᵀ (fp32), α = qk_scale, β = out_scale and M the mask:
    P  = M ⊙ β·Act(α·S)                  O  = P V
    dV = Pᵀ dO        dP = dO Vᵀ         dS = M ⊙ dP ⊙ αβ·Act'(α·S)
    dQ = dS K         dK = dSᵀ Q
Kernels accumulate the unscaled tiles (`probs`, `score_grad`) and apply β (O, dV) or αβ (dQ, dK)
once to the fp32 accumulator at the end: fewer multiplies per element, same result. Except for
fp16 inputs (`scales_tiles`): an fp32 tile of Act(α·S) above fp16's 65504 would turn to inf in
its cast to the MMA dtype before β could shrink it, so there β (αβ for dS) scales each fp32
tile before its cast, as the reference does, and the accumulators are taken as they are.

Pallas-Triton has no lowering for `lax.erf`, so Triton kernels build their spec with
`erf_free=True`, which evaluates exact GELU with the rational erf approximation XLA and Eigen
use for fp32 (max abs error 5e-7 against `lax.erf`).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels.common import blocks
from pallas_kernels.common.activations import Fn, get_activation
from pallas_kernels.common.tile_ops import mm, mm_nt, tile_positions

__all__ = [
    "GdpaSpec",
    "cost_estimate",
    "erf_rational",
    "mm",
    "mm_nt",
    "scales_tiles",
    "tile_positions",
]

# erf(x) ≈ x·P(x²)/Q(x²) on [-4, 4], clamped outside: Eigen's / XLA's fp32 erf.
# Coefficients highest degree first.
_ERF_P = (
    -2.72614225801306e-10,
    2.77068142495902e-08,
    -2.10102402082508e-06,
    -5.69250639462346e-05,
    -7.34990630326855e-04,
    -2.95459980854025e-03,
    -1.60960333262415e-02,
)
_ERF_Q = (
    -1.45660718464996e-05,
    -2.13374055278905e-04,
    -1.68282697438203e-03,
    -7.37332916720468e-03,
    -1.42647390514189e-02,
)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _horner(x: jax.Array, coeffs: tuple[float, ...]) -> jax.Array:
    acc = jnp.full_like(x, coeffs[0])
    for c in coeffs[1:]:
        acc = acc * x + c
    return acc


def erf_rational(x: jax.Array) -> jax.Array:
    """fp32 erf from elementwise arithmetic only (lowers where `lax.erf` does not)."""
    x = jnp.clip(x, -4.0, 4.0)
    x2 = x * x
    return x * _horner(x2, _ERF_P) / _horner(x2, _ERF_Q)


def _gelu_erf_free(x: jax.Array) -> jax.Array:
    return 0.5 * x * (1.0 + erf_rational(x * _INV_SQRT_2))


def _dgelu_erf_free(x: jax.Array) -> jax.Array:
    return 0.5 * (1.0 + erf_rational(x * _INV_SQRT_2)) + x * _INV_SQRT_2PI * jnp.exp(-0.5 * x * x)


def _activation(name: str, erf_free: bool, tanh: Fn | None) -> tuple[Fn, Fn]:
    if erf_free and name == "gelu":
        return _gelu_erf_free, _dgelu_erf_free
    return get_activation(name, tanh)


@dataclasses.dataclass(frozen=True)
class GdpaSpec:
    """Static (hashable) description of one GDPA call: activation, scales and mask kind.

    tanh: the function the sigmoid-family activations go through in a GPU kernel
    (`activations.get_activation`, `kernel_tanh`); None: the exact formulas. scale_tiles:
    apply β (αβ) to each fp32 tile before its cast rather than to the accumulators at the end
    (`scales_tiles(dtype)`: fp16)."""

    activation: str
    qk_scale: float
    out_scale: float
    window: int | None
    causal: bool
    erf_free: bool = False
    tanh: Fn | None = None
    scale_tiles: bool = False  # β (αβ) on each tile before its cast, not at the end

    def __post_init__(self) -> None:
        # Plain Python scalars (numpy ints, jnp floats from callers): hashable, equal specs
        # compare equal, and the kernels trace with literal constants.
        object.__setattr__(self, "qk_scale", float(self.qk_scale))
        object.__setattr__(self, "out_scale", float(self.out_scale))
        object.__setattr__(self, "window", None if self.window is None else int(self.window))
        object.__setattr__(self, "causal", bool(self.causal))

    def probs(self, s: jax.Array) -> jax.Array:
        """tile_scale·Act(α·S) for an fp32 score tile (P / acc_scale, before masking)."""
        act, _ = _activation(self.activation, self.erf_free, self.tanh)
        return _times(act(_times(s, self.qk_scale)), self.tile_scale)

    def score_grad(self, s: jax.Array, dp: jax.Array) -> jax.Array:
        """tile_grad_scale·dP ⊙ Act'(α·S) for fp32 tiles (dS / acc_grad_scale, before
        masking)."""
        _, dact = _activation(self.activation, self.erf_free, self.tanh)
        return _times(dp * dact(_times(s, self.qk_scale)), self.tile_grad_scale)

    def visible(
        self, q_idx: jax.Array, kv_idx: jax.Array, q_len: blocks.Int, kv_len: blocks.Int
    ) -> jax.Array:
        """Mask predicate over broadcastable query/key position arrays."""
        return blocks.visible(q_idx, kv_idx, **self._mask(q_len, kv_len))

    def kv_block_range(
        self, q_block: blocks.Int, block_q: int, block_kv: int, q_len, kv_len
    ) -> tuple[blocks.Int, blocks.Int]:
        """KV blocks [lo, hi) query block `q_block` sees under this mask (`blocks`)."""
        tiles = dict(block_q=block_q, block_kv=block_kv)
        return blocks.kv_block_range(q_block, **tiles, **self._mask(q_len, kv_len))

    def q_block_range(
        self, kv_block: blocks.Int, block_q: int, block_kv: int, q_len, kv_len
    ) -> tuple[blocks.Int, blocks.Int]:
        """Query blocks [lo, hi) that see key block `kv_block` under this mask."""
        tiles = dict(block_q=block_q, block_kv=block_kv)
        return blocks.q_block_range(kv_block, **tiles, **self._mask(q_len, kv_len))

    def unmasked_kv_block_range(
        self, q_block: blocks.Int, block_q: int, block_kv: int, q_len, kv_len
    ) -> tuple[blocks.Int, blocks.Int]:
        """KV blocks [lo, hi) wholly visible to query block `q_block`: no mask needed."""
        tiles = dict(block_q=block_q, block_kv=block_kv)
        return blocks.unmasked_kv_block_range(q_block, **tiles, **self._mask(q_len, kv_len))

    def unmasked_q_block_range(
        self, kv_block: blocks.Int, block_q: int, block_kv: int, q_len, kv_len
    ) -> tuple[blocks.Int, blocks.Int]:
        """Query blocks [lo, hi) wholly visible to key block `kv_block`: no mask needed."""
        tiles = dict(block_q=block_q, block_kv=block_kv)
        return blocks.unmasked_q_block_range(kv_block, **tiles, **self._mask(q_len, kv_len))

    def tile_unmasked(
        self, first_q: blocks.Int, first_kv: blocks.Int, block_q: int, block_kv: int, q_len, kv_len
    ) -> jax.Array:
        """Whether the [block_q, block_kv] tile at (first_q, first_kv) is wholly visible."""
        tiles = dict(block_q=block_q, block_kv=block_kv)
        return blocks.block_unmasked(first_q, first_kv, **tiles, **self._mask(q_len, kv_len))

    def _mask(self, q_len: blocks.Int, kv_len: blocks.Int) -> dict:
        return dict(q_len=q_len, kv_len=kv_len, window=self.window, causal=self.causal)

    @property
    def tile_scale(self) -> float:
        """The factor `probs` applies to each tile: β when scale_tiles, else 1."""
        return self.out_scale if self.scale_tiles else 1.0

    @property
    def tile_grad_scale(self) -> float:
        """The factor `score_grad` applies to each tile: αβ when scale_tiles, else 1."""
        return self.qk_scale * self.out_scale if self.scale_tiles else 1.0

    @property
    def acc_scale(self) -> float:
        """The factor applied to the accumulated O and dV: β, or 1 when the tiles carry it."""
        return 1.0 if self.scale_tiles else self.out_scale

    @property
    def acc_grad_scale(self) -> float:
        """The factor applied to the accumulated dQ and dK: αβ, or 1 when the tiles carry it."""
        return 1.0 if self.scale_tiles else self.qk_scale * self.out_scale


def scales_tiles(dtype: jax.typing.DTypeLike) -> bool:
    """Whether kernels on `dtype` inputs scale each tile before its cast (`GdpaSpec.scale_tiles`):
    fp16, whose range Act(α·S) can exceed before β shrinks it. bf16 has fp32's range and fp32
    tiles are not cast: they scale the fp32 accumulators once at the end."""
    return jnp.dtype(dtype) == jnp.float16


def _times(x: jax.Array, factor: float) -> jax.Array:
    """x · factor, with no multiply when factor is 1."""
    return x if factor == 1.0 else x * factor


# Per kernel: (matmuls of 2·D FLOPs per score, q-sized arrays moved, kv-sized arrays moved).
KERNEL_TRAFFIC = {
    "fwd": (2, 2, 2),  # S, PV; reads q, k, v, writes o
    "dkdv": (4, 2, 4),  # Sᵀ, dPᵀ, dV, dK; reads q, dO, k, v, writes dK, dV
    "dq": (3, 3, 2),  # S, dP, dQ; reads q, dO, k, v, writes dQ
}


def cost_estimate(q: jax.Array, k: jax.Array, kernel: str) -> pl.CostEstimate:
    """Dense (padded-shape) cost of one GDPA kernel ("fwd", "dkdv", "dq") for XLA's scheduler.

    q: [B, Tq, H, D], k: [B, Tkv, H, D] as passed to the kernel. One activation (one
    transcendental) per score.
    """
    batch, tq, heads, dim = q.shape
    scores = batch * heads * tq * k.shape[1]
    matmuls, q_moves, kv_moves = KERNEL_TRAFFIC[kernel]
    return pl.CostEstimate(
        flops=2 * matmuls * scores * dim,
        transcendentals=scores,
        bytes_accessed=q_moves * q.size * q.dtype.itemsize + kv_moves * k.size * k.dtype.itemsize,
    )
