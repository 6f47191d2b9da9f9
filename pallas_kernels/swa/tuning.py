"""Default SWA tiles for our kernels (Pallas TPU; Triton-language GPU), keyed by (platform,
device kind, head dim, window).

A q block visits about (block_q + 2w) / block_kv + 1 kv blocks, so the work wasted on masked
positions grows with block / w: small windows want small tiles, full attention wants large ones.
TPU tiles stay multiples of 128 (MXU width, and the lane dim of the logsumexp rows).

Provenance: hand-picked starting points (FlashAttention / splash-attention conventions), not
autotuned on hardware: no TPU was attached when they were written. Rows marked so are chosen
from the compiler's static schedules (`benchmarks/kernels/tpu_bundles.py --sweep`). Re-tune with
`benchmarks/kernels/swa.py --block-q/--block-kv` on the target device and edit the table.
Explicit `block_q` / `block_kv` arguments to `swa_attention` override these (fwd and bwd).
"""

from __future__ import annotations

from pallas_kernels.common.tiles import (
    TPU_128_MIB_VMEM,
    BlockSizes,
    on_128_mib_vmem,
    triton_sizes,
)

_WINDOWED = BlockSizes(256, 256, 256, 256, heads=4)  # D <= 128, w <= 512 TPU rows, any chip
_FULL = BlockSizes(512, 512, 512, 512, heads=4)  # D <= 128 full attention
# D <= 256 (`--head-dim 256 --sweep`, benchmarks/results/tpu_bundles_d256.json): w <= 128 takes
# 256 x 256 tiles and 4 heads a step, the fewest grid bundles among SWEEP_TILES["swa"] on v6e
# and for v5e's forward; v5e's backward takes 128 x 128 (14% fewer than 256 x 256); full
# attention 512 x 512, 2 heads in the default scoped VMEM (4 overflow v5e's 16 MiB), 4 in
# v5e / v6e's 64.
_WINDOWED_D256 = BlockSizes(256, 256, 256, 256, heads=4)
_FULL_D256 = BlockSizes(512, 512, 512, 512, heads=2)
# (platform, device-kind prefix ("" = any), max head dim, max window (None = any)) -> sizes.
# Lookup takes the first row whose platform and prefix match and whose bounds cover (D, w);
# a full-attention call (window None) only matches rows with max window None.
_TABLE: tuple[tuple[str, str, int, int | None, BlockSizes], ...] = (
    # D <= 128, w <= 128: among tpu_bundles.SWEEP_TILES["swa"], the tiles with the fewest
    # grid bundles on v5e, and within 4% of v6e's fewest (512-query tiles, which pad more
    # on jagged traffic; benchmarks/results/tpu_bundles.json, "sweep"). D <= 128 rows take 4
    # heads a grid step, the densest of tpu_bundles.SWEEP_HEADS at w = 128 and without a
    # window on both chips (measured at D = 128, H = 4; w <= 512 lies between the two).
    # On v5e and v6e, up to 8 heads in a raised scoped-VMEM limit (`on_128_mib_vmem`), as
    # GDPA's rows.
    *(
        ("tpu", kind, 128, window, on_128_mib_vmem(sizes))
        for kind in TPU_128_MIB_VMEM
        for window, sizes in ((128, _WINDOWED), (512, _WINDOWED), (None, _FULL))
    ),
    ("tpu", "TPU v5 lite", 256, 128, BlockSizes(256, 256, 128, 128, heads=4)),
    ("tpu", "", 128, 128, _WINDOWED),
    ("tpu", "", 256, 128, _WINDOWED_D256),
    ("tpu", "", 128, 512, _WINDOWED),
    ("tpu", "", 256, 512, BlockSizes(256, 256, 128, 128)),
    # After the windowed rows, which a windowed D = 256 call must meet first.
    *(("tpu", kind, 256, None, on_128_mib_vmem(_FULL_D256, heads=4)) for kind in TPU_128_MIB_VMEM),
    # Full attention, D <= 128: the backward tile with the fewest grid bundles on v5e and v6e
    # among tpu_bundles.SWEEP_TILES["long"] (the forward's 512 x 512 was already).
    ("tpu", "", 128, None, _FULL),
    ("tpu", "", 256, None, _FULL_D256),
    # GPU, our Triton-language kernels (backend "jax_triton"): the GDPA long-regime tiles,
    # checked for spills, shared memory and repeated MMAs (8 warps on 64-row Hopper tiles, see
    # gdpa.tuning) by benchmarks/kernels/triton_cuda_resources.py. The D=128 backward takes
    # 32-query tiles: with 64 its dK/dV kernel spills at 4 warps. D=256 spills at 4 warps: its
    # forward takes 128-row tiles for 8 warps, its backward repeats MMAs (0.6-0.67 useful).
    ("gpu", "NVIDIA H", 64, None, BlockSizes(128, 64, 64, 64, num_warps=4, num_stages=3)),
    ("gpu", "NVIDIA H", 128, None, triton_sizes(128, 64, 32, 64, warps=(8, 4), stages=(3, 2))),
    ("gpu", "NVIDIA H", 256, None, BlockSizes(128, 32, 32, 32, num_warps=8, num_stages=2)),
    # 3 stages: with 2, the D=128 dK/dV kernel spills on sm_100. One loop body: with a second,
    # unmasked one, sm_80 spills.
    ("gpu", "", 128, None, BlockSizes(64, 64, 64, 64, 8, 3, unmasked_loop=False)),
    ("gpu", "", 256, None, BlockSizes(64, 64, 32, 32, 8, 2, unmasked_loop=False)),
)
# The GPU rows as (device-kind prefix, max head dim, sizes).
GPU_ROWS = tuple((prefix, d, sizes) for plat, prefix, d, _, sizes in _TABLE if plat == "gpu")
# Interpret mode (CPU) and anything unmatched: small tiles keep the sequential grid short.
_FALLBACK = BlockSizes(64, 64, 64, 64)


def default_block_sizes(
    platform: str, device_kind: str, head_dim: int, window: int | None
) -> BlockSizes:
    """Table entry for a device; `platform` is jax's ("tpu", "gpu", "cpu")."""
    for plat, prefix, max_d, max_w, sizes in _TABLE:
        if plat != platform or not device_kind.startswith(prefix) or head_dim > max_d:
            continue
        if max_w is None or (window is not None and window <= max_w):
            return sizes
    return _FALLBACK
