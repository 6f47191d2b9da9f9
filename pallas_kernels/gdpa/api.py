"""Public GDPA op: validation, backend dispatch, padding to block multiples, custom VJP.

Backends:
- "reference": plain jnp (`reference.gdpa_reference`), differentiated by JAX autodiff.
- "pallas_tpu": Mosaic-TPU-style kernels (`tpu.py`, `tpu_vjp.py`).
- "pallas_triton": Triton-lowered GPU kernels (`triton.py`, `triton_vjp.py`).
- "pallas_mosaic_gpu": Mosaic GPU kernels (`mosaic_gpu.py`; bf16/f16, D <= 128): Hopper's
  warp-specialized wgmma + TMA or Blackwell's tcgen05 + TMEM, picked by the device's compute
  capability (query tile fixed at 128); lowered for sm_90 and sm_100 in CI but never run on
  a GPU, so only by name, never chosen by "auto".
- "jax_triton": Triton-language kernels (`triton_lang.py`) through `jax_triton.triton_call`
  (`jax_triton_op.py`), the comparison point for the Pallas kernels; by name only. Needs the
  `triton` package; off a GPU it runs in Triton's interpreter (TRITON_INTERPRET=1).
- "pallas": the platform's Pallas kernel (TPU → pallas_tpu, GPU → pallas_triton; on CPU,
  pallas_tpu in interpret mode).
- "auto": pallas_tpu on TPU, pallas_triton on GPU, the reference on CPU.
A Pallas backend on a platform it does not compile for runs in interpret mode (tests on CPU).
Both Pallas backends are wrapped in one `jax.custom_vjp` whose backward is Pallas too; lengths
get no gradient.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.common import dispatch
from pallas_kernels.common.activations import get_activation, kernel_tanh
from pallas_kernels.common.inputs import (
    check_attention_inputs,
    check_scales,
    nothing_to_attend,
    pad_attention_inputs,
)
from pallas_kernels.common.target import target_device, target_platform
from pallas_kernels.common.tiles import (
    BlockSizes,
    check_heads_per_step,
    fit_block_sizes,
    pow2_at_least,
)
from pallas_kernels.common.tpu import sigmoid_via_tanh
from pallas_kernels.common.triton_launch import triton_target
from pallas_kernels.gdpa.blockwise import GdpaSpec, scales_tiles
from pallas_kernels.gdpa.mosaic_gpu import ARCHS, arch_for, gdpa_mosaic_gpu
from pallas_kernels.gdpa.reference import gdpa_reference
from pallas_kernels.gdpa.tpu import gdpa_fwd_tpu
from pallas_kernels.gdpa.tpu_vjp import gdpa_bwd_tpu
from pallas_kernels.gdpa.triton import gdpa_fwd_triton
from pallas_kernels.gdpa.triton_vjp import gdpa_bwd_triton
from pallas_kernels.gdpa.tuning import default_block_sizes

BACKENDS = (
    "auto",
    "pallas",
    "pallas_tpu",
    "pallas_triton",
    "pallas_mosaic_gpu",
    "jax_triton",
    "reference",
)
HEAD_DIM_RANGE = (32, 256)  # head dims the Pallas backends support (inclusive)


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Static configuration of one Pallas GDPA call (the custom_vjp's non-diff argument)."""

    backend: str  # "pallas_tpu" | "pallas_triton"
    spec: GdpaSpec
    sizes: BlockSizes
    interpret: bool  # run the kernel in Pallas interpret mode (CPU tests)


def gdpa(
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
    backend: str = "auto",
    block_q: int | None = None,
    block_kv: int | None = None,
    heads_per_step: int | None = None,
) -> jax.Array:
    """Generalized dot-product attention O = (M ⊙ out_scale·Act(qk_scale·Q Kᵀ)) V per head.

    q: [B, Tq, H, D]; k, v: [B, Tkv, H, D]; one dtype of bf16 / fp16 / fp32 (fp32 accumulation).
    q_lengths / kv_lengths: int [B] real rows per batch row (None = all), in [0, Tq] / [0, Tkv]:
    concrete lengths outside it raise ValueError; traced ones (under jit) cannot be checked and
    are clipped to it. window: |i - j| <= w. causal: j <= i. Masked positions contribute exactly
    zero and padded query rows are zero, whatever the padding holds (NaN, inf): the gradients
    at padded rows are exactly zero too. fp16 kernels apply out_scale to each fp32 score tile
    before its cast, as the reference does, so Act(qk_scale·S) may exceed fp16's range.
    block_q / block_kv override the tuned tiles (`tuning.py`) of the Pallas backends,
    heads_per_step the heads per grid step of pallas_tpu (the largest divisor of H up to it).
    Returns [B, Tq, H, D] in q's dtype. Scales, window, causal and blocks are static.
    """
    check_heads_per_step(heads_per_step)
    impl = _resolve_backend(backend, q.shape[-1])
    get_activation(activation)  # ValueError listing the valid names
    check_attention_inputs("GDPA", q, k, v, q_lengths, kv_lengths, window, causal)
    check_scales(qk_scale=qk_scale, out_scale=out_scale)
    if nothing_to_attend(q, k):
        return jnp.zeros_like(q)
    dispatch.record("gdpa", impl)
    op = dict(
        activation=activation,
        qk_scale=qk_scale,
        out_scale=out_scale,
        q_lengths=q_lengths,
        kv_lengths=kv_lengths,
        window=window,
        causal=causal,
    )
    if impl == "reference":
        return gdpa_reference(q, k, v, **op)
    _check_head_dim(q.shape[-1])
    device = target_device()
    on_gpu = target_platform() == "gpu"
    if impl == "pallas_mosaic_gpu":
        arch = arch_for(device)
        tile = ARCHS[arch].BLOCK_Q
        if block_q not in (None, tile):
            raise ValueError(
                f"backend='pallas_mosaic_gpu' on {arch} has block_q={tile}, got {block_q}"
            )
        return gdpa_mosaic_gpu(
            q,
            k,
            v,
            **op,
            block_kv=block_kv,
            arch=arch,
            device_kind=device.device_kind,
            interpret=not on_gpu,
        )
    if impl == "jax_triton":
        device_kind, mode = triton_target(impl)  # triton is optional: imported only here
        from pallas_kernels.gdpa.jax_triton_op import gdpa_jax_triton

        return gdpa_jax_triton(
            q, k, v, **op, block_q=block_q, block_kv=block_kv, device_kind=device_kind, mode=mode
        )
    return gdpa_pallas(
        q,
        k,
        v,
        impl=impl,
        platform=device.platform,
        device_kind=device.device_kind,
        interpret=not _compiles_natively(impl),
        **op,
        block_q=block_q,
        block_kv=block_kv,
        heads_per_step=heads_per_step,
    )


def gdpa_pallas(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    impl: str,
    platform: str,
    device_kind: str,
    interpret: bool,
    activation: str,
    qk_scale: float,
    out_scale: float,
    q_lengths: jax.Array | None,
    kv_lengths: jax.Array | None,
    window: int | None,
    causal: bool,
    block_q: int | None,
    block_kv: int | None,
    heads_per_step: int | None = None,
) -> jax.Array:
    """The Pallas path of `gdpa` for an explicit target, e.g. an ahead-of-time compile for a
    TPU that is not attached (`platform="tpu", device_kind="TPU v5 lite", interpret=False`).

    impl: "pallas_tpu" | "pallas_triton"; other arguments as for `gdpa` (validated there).
    """
    _check_head_dim(q.shape[-1])
    _, tq, _, dim = q.shape
    tkv = k.shape[1]
    if nothing_to_attend(q, k):  # no grid to launch
        return jnp.zeros_like(q)
    triton = impl == "pallas_triton"
    # 16-bit silu / sigmoid: σ through one hardware tanh where that is cheaper (exact tanh
    # when interpreted): PTX tanh.approx on GPU, the EUP's vtanh on TPUs before v6.
    if triton:
        tanh = kernel_tanh(activation, q.dtype, jnp.tanh if interpret else pltriton.approx_tanh)
    else:
        tanh = kernel_tanh(activation, q.dtype, jnp.tanh) if sigmoid_via_tanh(device_kind) else None
    spec = GdpaSpec(
        activation,
        qk_scale,
        out_scale,
        window,
        causal,
        erf_free=triton,
        tanh=tanh,
        scale_tiles=scales_tiles(q.dtype),
    )
    sizes = default_block_sizes(platform, device_kind, dim, tkv, impl)
    sizes = sizes.with_overrides(block_q, block_kv).with_heads(heads_per_step)
    sizes = fit_block_sizes(sizes, impl, q.dtype, tq, tkv, block_q, block_kv)
    cfg = KernelConfig(impl, spec, sizes, interpret)
    d_pad = pow2_at_least(dim) if impl == "pallas_triton" else dim
    out = _gdpa_pallas(
        cfg,
        *pad_attention_inputs(
            q,
            k,
            v,
            q_lengths,
            kv_lengths,
            tq_pad=sizes.padded_q(tq),
            tkv_pad=sizes.padded_kv(tkv),
            d_pad=d_pad,
        ),
    )
    return out[:, :tq, :, :dim]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _gdpa_pallas(
    cfg: KernelConfig,
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_lens: jax.Array,
    kv_lens: jax.Array,
) -> jax.Array:
    """Pallas forward on block-aligned inputs (see `gdpa`)."""
    if cfg.backend == "pallas_tpu":
        return gdpa_fwd_tpu(
            q,
            k,
            v,
            q_lens,
            kv_lens,
            spec=cfg.spec,
            sizes=cfg.sizes,
            interpret=cfg.interpret,
        )
    return gdpa_fwd_triton(
        q, k, v, q_lens, kv_lens, spec=cfg.spec, sizes=cfg.sizes, interpret=cfg.interpret
    )


def _gdpa_pallas_fwd(cfg, q, k, v, q_lens, kv_lens):
    return _gdpa_pallas(cfg, q, k, v, q_lens, kv_lens), (q, k, v, q_lens, kv_lens)


def _gdpa_pallas_bwd(cfg: KernelConfig, residuals, do):
    q, k, v, q_lens, kv_lens = residuals
    if cfg.backend == "pallas_tpu":
        dq, dk, dv = gdpa_bwd_tpu(
            q,
            k,
            v,
            do,
            q_lens,
            kv_lens,
            spec=cfg.spec,
            sizes=cfg.sizes,
            interpret=cfg.interpret,
        )
    else:
        dq, dk, dv = gdpa_bwd_triton(
            q, k, v, do, q_lens, kv_lens, spec=cfg.spec, sizes=cfg.sizes, interpret=cfg.interpret
        )
    return dq, dk, dv, None, None


_gdpa_pallas.defvjp(_gdpa_pallas_fwd, _gdpa_pallas_bwd)


def _resolve_backend(backend: str, head_dim: int) -> str:
    """Concrete implementation name for `backend` on the default platform. "auto" falls back
    to the reference where no Pallas kernel applies (CPU, head dims outside HEAD_DIM_RANGE)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown GDPA backend {backend!r}; choose one of {list(BACKENDS)}")
    platform = target_platform()
    lo, hi = HEAD_DIM_RANGE
    if backend == "auto" and (platform not in ("tpu", "gpu") or not lo <= head_dim <= hi):
        return "reference"
    if backend in ("auto", "pallas"):
        return "pallas_triton" if platform == "gpu" else "pallas_tpu"
    return backend


def _compiles_natively(impl: str) -> bool:
    return target_platform() == {"pallas_tpu": "tpu", "pallas_triton": "gpu"}[impl]


def _check_head_dim(dim: int) -> None:
    lo, hi = HEAD_DIM_RANGE
    if not lo <= dim <= hi:
        raise ValueError(f"head dim D={dim} outside the Pallas GDPA range [{lo}, {hi}]")
