"""Default GDPA block sizes, keyed by (platform, device kind, head dim, Tkv regime).

The GDPA FFN's K/V are the n_sum summary tokens (8–256): the "short" Tkv regime, where one
kv block covers the whole key sequence and a big query block amortizes the per-step overhead.
Self-attention-shaped GDPA is the "long" regime and uses flash-attention-like square tiles.

Provenance: hand-picked starting points from the FlashAttention conventions (Triton tutorial
tiles for Hopper; 512-wide tiles for the TPU MXU), not yet autotuned on hardware. The TPU
rows (D <= 128 and D <= 256) are chosen from the compiler's static schedules
(`benchmarks/kernels/tpu_bundles.py --sweep`: bundles of an interior grid step per useful
FLOP). The GPU rows are checked statically: the Triton-language kernels compile with them
for the generations they serve within shared memory and without register spills in their
loops, and on Hopper (up to D = 128) without warpgroups repeating MMAs
(benchmarks/kernels/triton_cuda_resources.py).
Re-tune with `benchmarks/kernels/gdpa_autotune.py --install` on the target device.
Explicit `block_q` / `block_kv` arguments to `gdpa` override these (forward and backward).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
from collections.abc import Iterator
from pathlib import Path

import jax

from pallas_kernels.common.blocks import cdiv
from pallas_kernels.common.tiles import (
    TPU_128_MIB_VMEM,
    BlockSizes,
    on_128_mib_vmem,
    triton_sizes,
)

SHORT_KV_MAX = 256  # Tkv <= this is the "short" regime.


def _generic(*tiles: int) -> BlockSizes:
    """A row for any GPU: 8 warps, 2 stages, no unmasked loop."""
    return BlockSizes(*tiles, num_warps=8, num_stages=2, unmasked_loop=False)


_TPU_SHORT = BlockSizes(1024, 256, 1024, 256, heads=4)  # D <= 128 TPU rows, any chip
_TPU_LONG = BlockSizes(512, 512, 512, 512, heads=4)
# D <= 256: the same tiles; 2 heads a step fit v5e's 16 MiB default scoped VMEM (4 do not).
_TPU_SHORT_D256 = BlockSizes(1024, 256, 1024, 256, heads=2)
_TPU_LONG_D256 = BlockSizes(512, 512, 512, 512, heads=2)
# (platform, device-kind prefix ("" = any), max head dim, regime) -> BlockSizes.
# Lookup takes the first row whose platform and prefix match and whose head-dim bound covers D.
_TABLE: tuple[tuple[str, str, int, str, BlockSizes], ...] = (
    # TPU v5e / v6e / v5p: 128x128 MXU (256x256 on v6e); keep tiles multiples of 128. D <= 128:
    # the tiles whose interior grid steps the compiler schedules densest on both v5e and v6e
    # among tpu_bundles.SWEEP_TILES, and 4 heads a grid step, the densest of SWEEP_HEADS
    # (benchmarks/results/tpu_bundles.json, "sweep_best"; measured at D = 128, H = 4). On v5e
    # and v6e (128 MiB of VMEM): up to 8 heads in a raised scoped-VMEM limit (`on_128_mib_vmem`).
    *(
        ("tpu", kind, 128, regime, on_128_mib_vmem(sizes))
        for kind in TPU_128_MIB_VMEM
        for regime, sizes in (("short", _TPU_SHORT), ("long", _TPU_LONG))
    ),
    # D <= 256: the tiles with the fewest grid bundles on both v5e and v6e among SWEEP_TILES
    # (`--head-dim 256 --sweep`, benchmarks/results/tpu_bundles_d256.json: 512 x 512 and
    # 1024-row query tiles forward and backward, as at D = 128) and the densest heads a step.
    *(
        ("tpu", kind, 256, regime, on_128_mib_vmem(sizes, heads=4))
        for kind in TPU_128_MIB_VMEM
        for regime, sizes in (("short", _TPU_SHORT_D256), ("long", _TPU_LONG_D256))
    ),
    ("tpu", "", 128, "short", _TPU_SHORT),
    ("tpu", "", 256, "short", _TPU_SHORT_D256),
    ("tpu", "", 128, "long", _TPU_LONG),
    ("tpu", "", 256, "long", _TPU_LONG_D256),
    # NVIDIA Hopper (H100 / H200), Triton: tutorial tiles; fewer warps for small D. Triton
    # gives each warpgroup (4 warps) 64 rows of a wgmma tile: with more warpgroups than a
    # tile's 64-row slices they repeat its MMAs and activations (the SASS shows it:
    # mma_useful_fraction in benchmarks/results/triton_cuda_resources.json), so 64-row tiles
    # get 4 warps. Exception: the D=256 backward spills with 4 warps (8 warps, repeating: 0.6
    # to 0.67 of its MMA work is useful); its forward takes 128-row tiles for 8 warps.
    ("gpu", "NVIDIA H", 64, "short", BlockSizes(128, 64, 64, 64, num_warps=4, num_stages=2)),
    ("gpu", "NVIDIA H", 128, "short", triton_sizes(128, 64, 64, 64, warps=(8, 4), stages=(2, 2))),
    ("gpu", "NVIDIA H", 64, "long", BlockSizes(128, 64, 64, 64, num_warps=4, num_stages=3)),
    ("gpu", "NVIDIA H", 128, "long", triton_sizes(128, 64, 64, 64, warps=(8, 4), stages=(3, 2))),
    ("gpu", "NVIDIA H", 256, "long", BlockSizes(128, 64, 32, 32, num_warps=8, num_stages=2)),
    ("gpu", "NVIDIA H", 256, "short", BlockSizes(128, 64, 32, 32, num_warps=8, num_stages=2)),
    # Any other GPU (Ampere, Blackwell through Triton): conservative tiles, 8 warps (with 4 the
    # D=128 backward and the D=256 kernels spill registers on sm_80 and sm_100), one loop body
    # (with a second, unmasked one, sm_80 spills).
    ("gpu", "", 128, "short", _generic(64, 64, 64, 64)),
    ("gpu", "", 256, "long", _generic(64, 64, 32, 32)),
    ("gpu", "", 256, "short", _generic(64, 64, 32, 32)),
)
# The GPU rows as (device-kind prefix, max head dim, regime, sizes): checked for loop spills
# and shared memory by benchmarks/kernels/triton_cuda_resources.py.
GPU_ROWS = tuple((prefix, d, reg, sizes) for plat, prefix, d, reg, sizes in _TABLE if plat == "gpu")
# Interpret mode (CPU) and anything unmatched: small tiles keep the sequential grid short.
_FALLBACK = BlockSizes(64, 64, 64, 64)


def kv_regime(kv_len: int) -> str:
    """'short' for summary-token K/V (Tkv <= SHORT_KV_MAX), else 'long'."""
    return "short" if kv_len <= SHORT_KV_MAX else "long"


# Measured rows written by `benchmarks/kernels/gdpa_autotune.py --install`: exact device kind.
TUNED_PATH = Path(__file__).with_name("tuned.json")
_OVERRIDE: contextvars.ContextVar[BlockSizes | None] = contextvars.ContextVar(
    "gdpa_block_sizes", default=None
)


@contextlib.contextmanager
def override_block_sizes(sizes: BlockSizes) -> Iterator[None]:
    """Every GDPA call traced inside uses `sizes` (still shrunk to short sequences): how the
    autotuner times a candidate. Explicit block_q / block_kv arguments still win."""
    token = _OVERRIDE.set(sizes)
    try:
        yield
    finally:
        _OVERRIDE.reset(token)


@functools.cache
def tuned_rows(path: Path = TUNED_PATH) -> tuple[dict, ...]:
    """The measured rows: dicts with impl, device_kind, head_dim (max), regime, sizes, ms."""
    return tuple(json.loads(path.read_text())) if path.exists() else ()


def tuned_block_sizes(
    rows: tuple[dict, ...], impl: str, device_kind: str, head_dim: int, regime: str
) -> BlockSizes | None:
    """The measured row for (impl, exact device kind, regime) with the smallest head-dim bound
    that covers `head_dim`, or None."""
    fits = [
        r
        for r in rows
        if (r["impl"], r["device_kind"], r["regime"]) == (impl, device_kind, regime)
        and head_dim <= r["head_dim"]
    ]
    if not fits:
        return None
    return BlockSizes(**min(fits, key=lambda r: r["head_dim"])["sizes"])


def measured_block_sizes(
    impl: str | None, device_kind: str, head_dim: int, kv_len: int
) -> BlockSizes | None:
    """An `override_block_sizes` in effect, else the measured row of `impl` ("pallas_tpu",
    "pallas_triton", "jax_triton", "pallas_mosaic_gpu") on this exact device kind
    (`tuned.json`), else None."""
    if (override := _OVERRIDE.get()) is not None:
        return override
    if impl is None:
        return None
    return tuned_block_sizes(tuned_rows(), impl, device_kind, head_dim, kv_regime(kv_len))


def default_block_sizes(
    platform: str, device_kind: str, head_dim: int, kv_len: int, impl: str | None = None
) -> BlockSizes:
    """Tiles for a call: `measured_block_sizes`, else the hand-picked table row; `platform`
    is jax's ("tpu", "gpu", "cpu")."""
    measured = measured_block_sizes(impl, device_kind, head_dim, kv_len)
    return measured or table_block_sizes(platform, device_kind, head_dim, kv_regime(kv_len))


def table_block_sizes(platform: str, device_kind: str, head_dim: int, regime: str) -> BlockSizes:
    """The hand-picked table's row (see the module docstring)."""
    for plat, prefix, max_d, reg, sizes in _TABLE:
        matches_device = plat == platform and device_kind.startswith(prefix)
        if matches_device and reg == regime and head_dim <= max_d:
            return sizes
    return _FALLBACK


# Query splits of the dK/dV grid: enough programs for about two waves on a 132-SM H100 (a
# heuristic from the SM count, not measured), each split at least MIN_Q_BLOCKS_PER_SPLIT query
# blocks long, which keeps the fp32 partials' extra traffic (written and summed, 16·block_kv·D
# bytes a split) at most half the Q/dO traffic they stream (4·block_q·D bytes a block) when
# block_kv = block_q.
DKDV_TARGET_PROGRAMS = 264
MIN_Q_BLOCKS_PER_SPLIT = 8


def dkdv_q_splits(kv_programs: int, q_blocks: int) -> int:
    """How many query ranges each GPU dK/dV program's loop is split into (the Triton kernels,
    Pallas and Triton-language): 1 when the kv tiles (`kv_programs` = B·H·kv blocks) already
    fill the target, else up to the target."""
    wanted = cdiv(DKDV_TARGET_PROGRAMS, kv_programs)
    return max(1, min(wanted, q_blocks // MIN_Q_BLOCKS_PER_SPLIT))


def sum_query_splits(dk: jax.Array, dv: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
    """A dK/dV kernel's outputs as dK, dV in `dtype`: fp32 partials [splits, B, Tkv, H, D]
    summed over the splits, or [B, Tkv, H, D] tiles (one split) as they are."""
    if dk.ndim == 4:
        return dk, dv
    return dk.sum(0).astype(dtype), dv.sum(0).astype(dtype)
