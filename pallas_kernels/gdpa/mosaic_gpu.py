"""GDPA forward and backward as Pallas Mosaic GPU kernels: Hopper (wgmma) or Blackwell (tcgen05).

Status: **never run on a GPU** (none was lent while this was written; no Blackwell GPU is lent
to this project at all). Checked on CPU two ways: values and gradients against the reference
in the Mosaic GPU interpreter (`tests/kernels/test_gdpa_mosaic_gpu.py`), and a lowering for
sm_90 and sm_100 (`tests/kernels/test_gdpa_mosaic_gpu_lowering.py`: layout and SMEM-transform
inference and the lowering to wgmma / tcgen05 / TMA instructions run in Python; only the final
PTX compile needs the CUDA toolchain). It runs as `gdpa(backend="pallas_mosaic_gpu")`, which
picks the architecture from the device's compute capability; "auto" never picks it until it has
been measured on hardware.

Per architecture (`mosaic_gpu_hopper.py`, `mosaic_gpu_blackwell.py`) three kernels: forward
(grid b, h, q tile of 128; K, V stream), dQ (same grid) and dK/dV (grid b, h, kv tile of 128;
Q, dO stream), the streamed operand double-buffered by TMA (block j + 1 is in flight while
block j is computed) and only the blocks the mask lets through visited (`common.blocks` ranges
from lengths, window, causality); wholly visible blocks skip building the mask
(`mosaic_gpu_common.store_scores`). silu / sigmoid take σ from one tanh.approx (approx_math).
Hopper's programs are warp-specialized (a TMA producer
warpgroup, two compute warpgroups of 64 rows); Blackwell's are one warpgroup.
`tests/kernels/test_gdpa_mosaic_gpu_races.py` runs every kernel under the interpreter's race
detector. β (O, dV) and αβ (dQ, dK) scale the fp32 accumulators once at the end, or with fp16
inputs each fp32 tile before its cast (`blockwise.GdpaSpec`). The TMA copies read whole blocks
and the kernels mask only the score tiles, so the wrapper zeroes the rows of q, k, v (and of dO
in the backward) past the lengths with one `jnp.where` before the kernels: whatever padding
holds (NaN, inf) then contributes exactly zero. Inputs are zero-padded to Tq, Tkv
multiples of the blocks and D to 64 or 128 (Hopper: the fp32 accumulators must fit a
warpgroup's registers; Blackwell: the dK/dV kernel's four fp32 tiles fill the 512 TMEM
columns at D = 128).
"""

from __future__ import annotations

import dataclasses
import functools
from types import ModuleType

import jax
import jax.numpy as jnp
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.common import blocks
from pallas_kernels.common.activations import get_activation, kernel_tanh
from pallas_kernels.common.inputs import (
    check_attention_inputs,
    nothing_to_attend,
    pad_attention_inputs,
)
from pallas_kernels.common.masks import zero_padded_rows, zero_padding
from pallas_kernels.common.tiles import BlockSizes
from pallas_kernels.gdpa import mosaic_gpu_blackwell, mosaic_gpu_hopper
from pallas_kernels.gdpa.blockwise import GdpaSpec, scales_tiles
from pallas_kernels.gdpa.mosaic_gpu_common import MosaicConfig
from pallas_kernels.gdpa.tuning import dkdv_q_splits, measured_block_sizes, sum_query_splits

ARCHS: dict[str, ModuleType] = {"hopper": mosaic_gpu_hopper, "blackwell": mosaic_gpu_blackwell}
CAPABILITY_ARCH = {"9": "hopper", "10": "blackwell"}  # compute capability major -> kernels
IMPL = "pallas_mosaic_gpu"  # the backend's name (measured tiles in `tuning.TUNED_PATH`)
BLOCK_KV_CHOICES = (64, 128)  # kv block of the forward and dQ kernels (the MMA N)
DEFAULT_BLOCK_KV = 64  # untuned: no measurement yet
MAX_HEAD_DIM = 128  # padded D (see the module docstring)
DIM_ALIGN = 64  # D padding: one 128-byte swizzle row of bf16/f16
DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def arch_for(device) -> str:
    """The kernels for a device: "hopper" (sm_90) or "blackwell" (sm_100); a device without a
    compute capability (CPU, the interpreter) gets Hopper's. ValueError for other GPUs."""
    capability = getattr(device, "compute_capability", None)
    if device.platform not in ("gpu", "cuda") or not capability:
        return "hopper"
    arch = CAPABILITY_ARCH.get(capability.split(".")[0])
    if arch is None:
        raise ValueError(
            f"backend='pallas_mosaic_gpu' has kernels for Hopper (sm_90, wgmma) and Blackwell "
            f"(sm_100, tcgen05); {device.device_kind} is sm_{capability.replace('.', '')}: "
            "use backend='pallas_triton'"
        )
    return arch


def untuned_block_sizes(arch: str) -> BlockSizes:
    """The tiles before any measurement. As `BlockSizes`: block_q the forward and dQ query tile
    and block_kv_bwd the dK/dV kv tile (both fixed by the architecture), block_kv the kv block
    the forward and dQ stream, block_q_bwd the query block the dK/dV kernel streams."""
    kernels = ARCHS[arch]
    return BlockSizes(kernels.BLOCK_Q, DEFAULT_BLOCK_KV, kernels.DKDV_Q_BLOCK, kernels.DKDV_BLOCK)


def block_sizes(
    arch: str,
    device_kind: str,
    head_dim: int,
    tkv: int,
    block_kv: int | None = None,
    dkdv_block_q: int | None = None,
) -> BlockSizes:
    """The tiles of a call: an `override_block_sizes` in effect or the row measured on this
    exact device kind (`tuning.measured_block_sizes`), else `untuned_block_sizes`; explicit
    block_kv / dkdv_block_q win. ValueError for tiles the architecture's kernels lack."""
    kernels = ARCHS[arch]
    sizes = measured_block_sizes(IMPL, device_kind, head_dim, tkv) or untuned_block_sizes(arch)
    sizes = dataclasses.replace(
        sizes,
        block_kv=sizes.block_kv if block_kv is None else block_kv,
        block_q_bwd=sizes.block_q_bwd if dkdv_block_q is None else dkdv_block_q,
    )
    fixed = (kernels.BLOCK_Q, kernels.DKDV_BLOCK)
    if (sizes.block_q, sizes.block_kv_bwd) != fixed:
        raise ValueError(
            f"the {arch} Mosaic GPU kernels have block_q, block_kv_bwd = {fixed}, got {sizes}"
        )
    if sizes.block_kv not in BLOCK_KV_CHOICES:
        raise ValueError(f"block_kv must be one of {BLOCK_KV_CHOICES}, got {sizes.block_kv}")
    if sizes.block_q_bwd not in kernels.DKDV_Q_BLOCKS:
        raise ValueError(
            f"dkdv_block_q (block_q_bwd) must be one of {kernels.DKDV_Q_BLOCKS} on {arch}, "
            f"got {sizes.block_q_bwd}"
        )
    return sizes


def gdpa_mosaic_gpu(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    activation: str = "silu",
    qk_scale: float = 1.0,
    out_scale: float = 1.0,
    q_lengths: jax.Array | None = None,
    kv_lengths: jax.Array | None = None,
    window: int | None = None,
    causal: bool = False,
    block_kv: int | None = None,
    dkdv_block_q: int | None = None,
    arch: str = "hopper",
    device_kind: str = "",
    interpret: bool | plgpu.InterpretGPUParams = False,
) -> jax.Array:
    """GDPA with the semantics of `reference.gdpa_reference`, forward and backward as Mosaic
    GPU kernels behind a `custom_vjp`; lengths get no gradient.

    q: [B, Tq, H, D]; k, v: [B, Tkv, H, D] in bf16 or f16, D <= 128; lengths int [B] (None =
    full), in [0, Tq] / [0, Tkv] (concrete ones outside: ValueError; traced ones: clipped);
    rows past them are zeroed before the kernels (`zero_padded_rows`). block_kv: 64 or
    128, the kv block of the forward and dQ kernels; dkdv_block_q: the query block of the dK/dV
    kernel (Hopper: 32 or 64; Blackwell: 128); None: measured for `device_kind` or untuned
    (`block_sizes`). arch: "hopper" or "blackwell" (`arch_for`).
    Returns [B, Tq, H, D] in q's dtype. interpret: run in the Mosaic GPU interpreter (CPU), or
    in it with these parameters (e.g. its race detector:
    `plgpu.InterpretGPUParams(detect_races=True)`).
    """
    check_attention_inputs("GDPA", q, k, v, q_lengths, kv_lengths, window)
    if jnp.dtype(q.dtype) not in DTYPES:
        raise ValueError(f"the Mosaic GPU GDPA kernels take bf16 or f16 inputs, got {q.dtype}")
    get_activation(activation)  # a clear error for an unknown name
    if arch not in ARCHS:
        raise ValueError(f"unknown Mosaic GPU architecture {arch!r}; choose one of {list(ARCHS)}")
    _, tq, _, d = q.shape
    sizes = block_sizes(arch, device_kind, d, k.shape[1], block_kv, dkdv_block_q)
    d_pad = blocks.round_up(d, DIM_ALIGN)
    if d_pad > MAX_HEAD_DIM:
        raise ValueError(
            f"head dim D={d} is above the Mosaic GPU kernels' {MAX_HEAD_DIM} (their fp32 "
            "accumulators would not fit); use backend='pallas_triton'"
        )
    if nothing_to_attend(q, k):  # no grid to launch
        return jnp.zeros_like(q)
    padded = pad_attention_inputs(
        q,
        k,
        v,
        q_lengths,
        kv_lengths,
        tq_pad=sizes.padded_q(tq),
        tkv_pad=sizes.padded_kv(k.shape[1]),
        d_pad=d_pad,
    )
    # Mosaic GPU has no erf lowering: exact GELU through the rational erf. silu / sigmoid: the
    # kernels compile with approx_math, so jnp.tanh is one tanh.approx.f32 (`kernel_tanh`).
    tanh = kernel_tanh(activation, q.dtype, jnp.tanh)
    spec = GdpaSpec(
        activation,
        qk_scale,
        out_scale,
        window,
        causal,
        erf_free=True,
        tanh=tanh,
        scale_tiles=scales_tiles(q.dtype),
    )
    cfg = MosaicConfig(spec, sizes.block_kv, interpret, arch, sizes.block_q_bwd)
    q, k, v, q_lens, kv_lens = padded
    # The kernels' TMA copies read whole blocks, padding included, and mask only the score
    # tiles: whatever a padded row holds (NaN, inf) would reach the MMAs (0 · NaN is NaN). One
    # select pass over the inputs here, rather than a zeroing pass over every masked tile.
    q, k, v = zero_padded_rows(q, k, v, q_lens, kv_lens)
    return _gdpa(cfg, q, k, v, q_lens, kv_lens)[:, :tq, :, :d]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _gdpa(cfg: MosaicConfig, q, k, v, q_lens, kv_lens) -> jax.Array:
    """Forward kernel on inputs padded to the kernels' multiples."""
    kernel = ARCHS[cfg.arch].forward_kernel(cfg, q.shape, jnp.dtype(q.dtype))
    return kernel(q, k, v, q_lens, kv_lens)


def _gdpa_fwd(cfg: MosaicConfig, q, k, v, q_lens, kv_lens):
    return _gdpa(cfg, q, k, v, q_lens, kv_lens), (q, k, v, q_lens, kv_lens)


def _gdpa_bwd(cfg: MosaicConfig, residuals, do):
    q, k, v, q_lens, kv_lens = residuals
    do = zero_padding(do.astype(q.dtype), q_lens)  # as the inputs (`zero_padded_rows`)
    dtype = jnp.dtype(q.dtype)
    kernels = ARCHS[cfg.arch]
    dq = kernels.dq_kernel(cfg, q.shape, dtype)(q, k, v, do, q_lens, kv_lens)
    dk, dv = _dkdv(cfg, q, k, v, do, q_lens, kv_lens)
    return dq, dk, dv, None, None


def _dkdv(cfg: MosaicConfig, q, k, v, do, q_lens, kv_lens) -> tuple[jax.Array, jax.Array]:
    """(dK, dV). Hopper splits the kernel's query loop when its kv tiles are too few to fill
    the GPU (`tuning.dkdv_q_splits`; the kernel returns fp32 partials, summed here). Blackwell's
    dK/dV kernel does not: its SMEM is full at D = 128 (no room for an fp32 staging tile)."""
    (batch, tq, heads, _), tkv = q.shape, k.shape[1]
    kernels, args = ARCHS[cfg.arch], (q, k, v, do, q_lens, kv_lens)
    if cfg.arch != "hopper":
        return kernels.dkdv_kernel(cfg, q.shape, tkv, jnp.dtype(q.dtype))(*args)
    kv_programs = batch * heads * (tkv // kernels.DKDV_BLOCK)
    splits = dkdv_q_splits(kv_programs, tq // cfg.dkdv_block_q)
    dk, dv = kernels.dkdv_kernel(cfg, q.shape, tkv, jnp.dtype(q.dtype), splits)(*args)
    return sum_query_splits(dk, dv, k.dtype)


_gdpa.defvjp(_gdpa_fwd, _gdpa_bwd)
