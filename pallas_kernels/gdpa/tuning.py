"""Default GDPA block sizes, keyed by (platform, device kind, head dim, Tkv regime).

The GDPA FFN's K/V are the n_sum summary tokens (8–256): the "short" Tkv regime, where one
kv block covers the whole key sequence and a big query block amortizes the per-step overhead.
Self-attention-shaped GDPA is the "long" regime and uses flash-attention-like square tiles.

Provenance: hand-picked starting points from the FlashAttention conventions (Triton tutorial
tiles for Hopper; 512-wide tiles for the TPU MXU), not yet autotuned on hardware. The GPU rows
are checked statically: the Triton-language kernels compile with them for the generations they
serve within shared memory and without register spills
(benchmarks/kernels/gdpa_cuda_resources.py). Re-tune with `benchmarks/kernels/gdpa.py
--block-q/--block-kv` on the target device and edit the table.
Explicit `block_q` / `block_kv` arguments to `gdpa` override these (forward and backward).
"""

from __future__ import annotations

from pallas_kernels.common.tiles import BlockSizes

SHORT_KV_MAX = 256  # Tkv <= this is the "short" regime.


# (platform, device-kind prefix ("" = any), max head dim, regime) -> BlockSizes.
# Lookup takes the first row whose platform and prefix match and whose head-dim bound covers D.
_TABLE: tuple[tuple[str, str, int, str, BlockSizes], ...] = (
    # TPU v5e / v6e / v5p: 128x128 MXU (256x256 on v6e); keep tiles multiples of 128.
    ("tpu", "", 128, "short", BlockSizes(1024, 256, 512, 256)),
    ("tpu", "", 256, "short", BlockSizes(512, 256, 256, 256)),
    ("tpu", "", 128, "long", BlockSizes(512, 512, 256, 256)),
    ("tpu", "", 256, "long", BlockSizes(256, 512, 256, 256)),
    # NVIDIA Hopper (H100 / H200), Triton: tutorial tiles; fewer warps for small D.
    ("gpu", "NVIDIA H", 64, "short", BlockSizes(128, 64, 64, 64, num_warps=4, num_stages=2)),
    ("gpu", "NVIDIA H", 128, "short", BlockSizes(128, 64, 64, 64, num_warps=8, num_stages=2)),
    ("gpu", "NVIDIA H", 64, "long", BlockSizes(128, 64, 64, 64, num_warps=4, num_stages=3)),
    ("gpu", "NVIDIA H", 128, "long", BlockSizes(128, 64, 64, 64, num_warps=8, num_stages=3)),
    ("gpu", "NVIDIA H", 256, "long", BlockSizes(64, 64, 32, 32, num_warps=8, num_stages=2)),
    # Any other GPU (Ampere, Blackwell through Triton): conservative tiles, 8 warps (with 4 the
    # D=128 backward and the D=256 kernels spill registers on sm_80 and sm_100).
    ("gpu", "", 128, "short", BlockSizes(64, 64, 64, 64, num_warps=8, num_stages=2)),
    ("gpu", "", 256, "long", BlockSizes(64, 64, 32, 32, num_warps=8, num_stages=2)),
    ("gpu", "", 256, "short", BlockSizes(64, 64, 32, 32, num_warps=8, num_stages=2)),
)
# The GPU rows as (device-kind prefix, max head dim, regime, sizes): checked for spills and
# shared memory by benchmarks/kernels/gdpa_cuda_resources.py.
GPU_ROWS = tuple((prefix, d, reg, sizes) for plat, prefix, d, reg, sizes in _TABLE if plat == "gpu")
# Interpret mode (CPU) and anything unmatched: small tiles keep the sequential grid short.
_FALLBACK = BlockSizes(64, 64, 64, 64)


def kv_regime(kv_len: int) -> str:
    """'short' for summary-token K/V (Tkv <= SHORT_KV_MAX), else 'long'."""
    return "short" if kv_len <= SHORT_KV_MAX else "long"


def default_block_sizes(platform: str, device_kind: str, head_dim: int, kv_len: int) -> BlockSizes:
    """Table entry for a device; `platform` is jax's ("tpu", "gpu", "cpu")."""
    regime = kv_regime(kv_len)
    for plat, prefix, max_d, reg, sizes in _TABLE:
        matches_device = plat == platform and device_kind.startswith(prefix)
        if matches_device and reg == regime and head_dim <= max_d:
            return sizes
    return _FALLBACK
