"""Published per-chip peaks and the roofline bound on a step's time.

`PEAKS` holds dense (no sparsity) bf16 matmul peaks and HBM bandwidth per device as jax
reports it (`jax.devices()[0].device_kind`). They are the vendors' datasheet numbers at the
default power limit: a real chip's sustained matmul rate is lower (measure it with
`kunlun_jax.bench.ceilings.matmul_ceiling`), and a power-capped one lower still. A CPU has no
entry: CPU MFU is reported against the matmul measured in the same run only.

`roofline(flops, bytes, peak)` is the classic bound max(flops / peak FLOP/s, bytes / peak
bandwidth): no program runs faster, and real ones (launch overheads, imperfect overlap,
collectives) run slower. It turns an ahead-of-time compile (XLA's `cost_analysis`) into an
estimate that is labelled as such, never a measurement.
"""

from __future__ import annotations

import dataclasses
import re


@dataclasses.dataclass(frozen=True)
class DevicePeak:
    """One accelerator's published peaks, per device as jax counts devices.

    name: short chip name; bf16_tflops: dense bf16 tensor-core / MXU peak (TFLOP/s);
    hbm_gbps: HBM bandwidth (GB/s, 1e9 bytes); hbm_gib: HBM capacity per device (GiB);
    source: where the numbers come from.
    """

    name: str
    bf16_tflops: float
    hbm_gbps: float
    hbm_gib: float
    source: str


# device_kind pattern (case-insensitive regex, first match wins) -> peaks.
PEAKS: tuple[tuple[str, DevicePeak], ...] = (
    # NVIDIA H100 SXM5 datasheet: BF16 tensor core 1,979 TFLOPS with sparsity = 989 dense;
    # HBM3 80 GB at 3.35 TB/s. jax reports "NVIDIA H100 80GB HBM3".
    (
        r"H100.*(SXM|HBM3)",
        DevicePeak("H100 SXM", 989.0, 3350.0, 80 * 1e9 / 2**30, "NVIDIA H100 datasheet (SXM5)"),
    ),
    # NVIDIA H200 datasheet (SXM): BF16 1,979 TFLOPS with sparsity = 989 dense; HBM3e 141 GB
    # at 4.8 TB/s.
    (r"H200", DevicePeak("H200", 989.0, 4800.0, 141 * 1e9 / 2**30, "NVIDIA H200 datasheet (SXM)")),
    # NVIDIA HGX B200 datasheet: FP16/BF16 tensor core 4.5 PFLOPS with sparsity per GPU =
    # 2,250 dense; HBM3e 180 GB at 8 TB/s (1,000 W; power-capped parts run lower).
    (r"B200", DevicePeak("B200", 2250.0, 8000.0, 180 * 1e9 / 2**30, "NVIDIA HGX B200 datasheet")),
    # cloud.google.com/tpu/docs/v5e: 197 TFLOPs bf16 per chip, HBM2 16 GB at 819 GBps.
    # jax reports "TPU v5 lite"; one device per chip.
    (
        r"TPU v5 ?(lite|e)",
        DevicePeak("TPU v5e", 197.0, 819.0, 16 * 1e9 / 2**30, "cloud.google.com/tpu/docs/v5e"),
    ),
    # cloud.google.com/tpu/docs/v5p: 459 TFLOPs bf16 per chip, HBM2e 95 GB at 2,765 GBps.
    # jax reports "TPU v5" (megacore: one device per chip).
    (
        r"TPU v5 ?p?$",
        DevicePeak("TPU v5p", 459.0, 2765.0, 95 * 1e9 / 2**30, "cloud.google.com/tpu/docs/v5p"),
    ),
    # cloud.google.com/tpu/docs/v6e: 918 TFLOPs bf16 per chip, HBM 32 GB at 1,638 GBps.
    # jax reports "TPU v6 lite".
    (
        r"TPU v6 ?(lite|e)",
        DevicePeak("TPU v6e", 918.0, 1638.0, 32 * 1e9 / 2**30, "cloud.google.com/tpu/docs/v6e"),
    ),
)


def table_peak(device_kind: str) -> DevicePeak | None:
    """The published peaks of `device_kind` (as jax reports it), or None (e.g. a CPU)."""
    for pattern, peak in PEAKS:
        if re.search(pattern, device_kind.strip(), re.IGNORECASE):
            return peak
    return None


@dataclasses.dataclass(frozen=True)
class Roofline:
    """Lower bounds on one step's time on one device (seconds).

    compute_s = flops / peak FLOP/s; memory_s = bytes / peak bandwidth;
    bound_s = max of the two; limiter: "compute" or "memory", whichever is larger.
    """

    compute_s: float
    memory_s: float
    bound_s: float
    limiter: str


def roofline(flops: float, bytes_accessed: float, peak: DevicePeak) -> Roofline:
    """Roofline bound of a program doing `flops` and moving `bytes_accessed` per device."""
    if flops < 0 or bytes_accessed < 0:
        raise ValueError(f"flops ({flops}) and bytes_accessed ({bytes_accessed}) must be >= 0")
    compute = flops / (peak.bf16_tflops * 1e12)
    memory = bytes_accessed / (peak.hbm_gbps * 1e9)
    limiter = "compute" if compute >= memory else "memory"
    return Roofline(compute, memory, max(compute, memory), limiter)
