"""Default seed-pooling tiles, keyed by (platform, device kind, head dim).

Rows are `common.tiles.BlockSizes` with the query tile read as the seeds tile: block_q is the
*largest* seed count one program holds (the API pads the seeds to a tile and refuses more, since
the kernels keep all seeds of a head in one tile), block_kv / block_kv_bwd the key rows per step.
The fp32 score tile [S, block_kv], the accumulator [S, D] and the K/V double buffers must fit in
VMEM (TPU) or registers (GPU).

Provenance: hand-picked starting points, not autotuned on hardware (no accelerator was attached
when they were written). TPU: multiples of the 128-lane MXU width; the D <= 128 row is chosen
from the compiler's static schedules (`benchmarks/kernels/tpu_bundles.py --sweep`): 1024 kv
rows, 256 KiB of bf16 K per buffer. Hopper / Triton: the flash-attention tutorial's kv tile.
Re-tune with `benchmarks/kernels/hsp.py --block-kv` on the target device and edit the table.
"""

from __future__ import annotations

from pallas_kernels.common.tiles import BlockSizes

# (platform, device-kind prefix ("" = any), max head dim) -> sizes; first match wins.
_TABLE: tuple[tuple[str, str, int, BlockSizes], ...] = (
    # D <= 128: the kv tile with the fewest grid bundles on v5e and v6e among
    # tpu_bundles.HSP_SWEEP_KV (benchmarks/results/tpu_bundles.json, "sweep_best").
    ("tpu", "", 128, BlockSizes(256, 1024, 256, 1024)),
    ("tpu", "", 256, BlockSizes(256, 512, 256, 256)),
    ("gpu", "NVIDIA H", 64, BlockSizes(128, 128, 128, 64, num_warps=4, num_stages=3)),
    ("gpu", "NVIDIA H", 256, BlockSizes(128, 64, 128, 64, num_warps=8, num_stages=2)),
    ("gpu", "", 256, BlockSizes(64, 64, 64, 32, num_warps=4, num_stages=2)),
)
# Interpret mode (CPU) and anything unmatched: small kv tiles keep the sequential grid short.
_FALLBACK = BlockSizes(256, 64, 256, 64)


def default_block_sizes(platform: str, device_kind: str, head_dim: int) -> BlockSizes:
    """Table entry for a device; `platform` is jax's ("tpu", "gpu", "cpu")."""
    for plat, prefix, max_d, sizes in _TABLE:
        if plat == platform and device_kind.startswith(prefix) and head_dim <= max_d:
            return sizes
    return _FALLBACK
