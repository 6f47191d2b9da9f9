"""Public SWA op: validation, backend dispatch, padding to block multiples, custom VJP.

Backends (`backend=`):
- "reference": plain jnp (`reference.attention_reference`), differentiated by JAX autodiff.
- "pallas_tpu": our Mosaic-TPU flash-attention kernels (`tpu.py`, `tpu_vjp.py`), block-sparse
  over the window and the lengths, forward and backward in one `jax.custom_vjp`.
- "tokamax_mosaic", "tokamax_triton", "tokamax_xla", "tokamax_xla_chunked", "tokamax_cudnn":
  `tokamax.dot_product_attention` with that implementation named (`tokamax_gpu.py`); the
  Pallas ones need a GPU, the XLA ones run anywhere. tokamax's own backward.
- "tokamax": the GPU's named tokamax kernel, "tokamax_mosaic" on sm90+ else "tokamax_triton".
- "pallas": the platform's Pallas kernel: TPU → pallas_tpu, GPU → tokamax; on CPU,
  pallas_tpu in interpret mode (for tests: it measures nothing).
- "auto": TPU → pallas_tpu, GPU → tokamax, each only for head dims in HEAD_DIM_RANGE; an
  auto-chosen tokamax kernel that raises NotImplementedError for the case falls back to the
  reference, as does everything else (CPU included).
- "jax_triton": our block-sparse Triton-language kernels (`triton_lang.py`) through
  `jax_triton.triton_call` (`jax_triton_op.py`), by name only until measured against tokamax;
  off a GPU they run in Triton's interpreter (TRITON_INTERPRET=1). Needs `triton`.
Which platform is asked is `common.target.target_platform()` (the attached device, or an AOT
compile target). On GPU "auto" and "pallas" use tokamax's kernels (untested here: no GPU was
attached).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from pallas_kernels.common import dispatch
from pallas_kernels.common.inputs import (
    check_attention_inputs,
    check_scales,
    nothing_to_attend,
    pad_attention_inputs,
)
from pallas_kernels.common.softmax import row_delta
from pallas_kernels.common.target import target_device, target_platform
from pallas_kernels.common.tiles import BlockSizes, check_heads_per_step, fit_block_sizes
from pallas_kernels.common.tpu import TPU_LANES
from pallas_kernels.common.triton_launch import triton_target
from pallas_kernels.swa.blockwise import SwaSpec
from pallas_kernels.swa.reference import attention_reference
from pallas_kernels.swa.tokamax_gpu import IMPLEMENTATIONS, gpu_implementation, swa_tokamax
from pallas_kernels.swa.tpu import swa_fwd_tpu
from pallas_kernels.swa.tpu_vjp import swa_bwd_tpu
from pallas_kernels.swa.tuning import default_block_sizes

TOKAMAX_BACKENDS = tuple(f"tokamax_{impl}" for impl in IMPLEMENTATIONS)
BACKENDS = (
    "auto",
    "pallas",
    "pallas_tpu",
    "tokamax",
    *TOKAMAX_BACKENDS,
    "jax_triton",
    "reference",
)
HEAD_DIM_RANGE = (32, 256)  # head dims "auto" sends to a kernel (inclusive); else reference


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Static configuration of one pallas_tpu call (the custom_vjp's non-diff argument)."""

    spec: SwaSpec
    sizes: BlockSizes
    interpret: bool


def swa_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    q_lengths: jax.Array | None = None,
    kv_lengths: jax.Array | None = None,
    window: int | None = None,
    causal: bool = False,
    scale: float | None = None,
    backend: str = "auto",
    interpret: bool | None = None,
    block_q: int | None = None,
    block_kv: int | None = None,
    heads_per_step: int | None = None,
) -> jax.Array:
    """Sliding-window softmax attention: query i sees key j iff i < q_len, j < kv_len,
    |i - j| <= window (None = all) and, if causal, j <= i. Logits scale·q·kᵀ (scale defaults
    to 1/sqrt(D)).

    q: [B, Tq, H, D]; k, v: [B, Tkv, H, D]; one dtype of bf16 / fp16 / fp32 (fp32 softmax and
    accumulation). q_lengths / kv_lengths: int [B] real rows per batch row (None = all), in
    [0, Tq] / [0, Tkv]: concrete lengths outside it raise ValueError; traced ones (under jit)
    cannot be checked and are clipped to it. Padding contributes exactly zero to the output and
    the gradients, whatever it holds (NaN, inf). A query row that sees no key outputs exactly 0
    (and passes no gradient). Returns [B, Tq, H, D] in q's dtype. window, causal, scale,
    backend and blocks are static.
    interpret: run pallas_tpu in Pallas interpret mode (None = exactly when the target is not
    a TPU). block_q / block_kv override the tuned tiles of pallas_tpu and jax_triton
    (`tuning.py`); heads_per_step overrides pallas_tpu's heads per grid step (the largest
    divisor of H up to it).
    """
    check_attention_inputs("SWA", q, k, v, q_lengths, kv_lengths, window, causal)
    if scale is not None:
        check_scales(scale=scale)
    if nothing_to_attend(q, k):
        return jnp.zeros_like(q)
    check_heads_per_step(heads_per_step)
    window = None if window is None else int(window)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    kw = dict(q_lengths=q_lengths, kv_lengths=kv_lengths, window=window, causal=causal)
    *fallible, last = _resolve_backend(backend, q.shape[-1])
    for impl in fallible:  # only "auto" has more than one: tokamax, then reference
        try:
            out = _run(impl, q, k, v, scale, kw, interpret, block_q, block_kv, heads_per_step)
        except NotImplementedError:
            continue
        dispatch.record("attention", impl)
        return out
    dispatch.record("attention", last)
    return _run(last, q, k, v, scale, kw, interpret, block_q, block_kv, heads_per_step)


def _run(impl, q, k, v, scale, kw, interpret, block_q, block_kv, heads_per_step) -> jax.Array:
    if impl == "reference":
        return attention_reference(q, k, v, scale=scale, **kw)
    if impl in TOKAMAX_BACKENDS:
        return swa_tokamax(q, k, v, scale=scale, implementation=impl.removeprefix("tokamax_"), **kw)
    if impl == "jax_triton":
        device_kind, mode = triton_target(impl)  # triton is optional: imported only here
        from pallas_kernels.swa.jax_triton_op import swa_jax_triton

        return swa_jax_triton(
            q,
            k,
            v,
            scale=scale,
            block_q=block_q,
            block_kv=block_kv,
            device_kind=device_kind,
            mode=mode,
            **kw,
        )
    if interpret is None:
        interpret = target_platform() != "tpu"
    return swa_pallas_tpu(
        q,
        k,
        v,
        scale=scale,
        interpret=interpret,
        block_q=block_q,
        block_kv=block_kv,
        heads_per_step=heads_per_step,
        **kw,
    )


def swa_pallas_tpu(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    q_lengths: jax.Array | None,
    kv_lengths: jax.Array | None,
    window: int | None,
    causal: bool,
    scale: float,
    interpret: bool,
    block_q: int | None,
    block_kv: int | None,
    heads_per_step: int | None = None,
) -> jax.Array:
    """The pallas_tpu path of `swa_attention` (arguments validated there). Tiles and heads
    per step come from the tuning table for the target device (`common.target`), the tiles
    shrunk to the sequence lengths."""
    _, tq, _, dim = q.shape
    tkv = k.shape[1]
    if nothing_to_attend(q, k):  # no grid to launch
        return jnp.zeros_like(q)
    device = target_device()
    platform = target_platform()
    sizes = default_block_sizes(platform, device.device_kind, dim, window)
    sizes = sizes.with_overrides(block_q, block_kv).with_heads(heads_per_step)
    sizes = fit_block_sizes(sizes, "pallas_tpu", q.dtype, tq, tkv, block_q, block_kv)
    tq_pad, tkv_pad = sizes.padded_q(tq), sizes.padded_kv(tkv)
    if not interpret:
        for name, size in (("block_q", sizes.block_q), ("block_q (backward)", sizes.block_q_bwd)):
            if size % TPU_LANES and size != tq_pad:
                raise ValueError(
                    f"{name}={size} must be a multiple of {TPU_LANES} or cover Tq={tq} for the "
                    "compiled pallas_tpu kernels (the logsumexp rows are lane-major)"
                )
    cfg = KernelConfig(SwaSpec(scale, window, causal), sizes, interpret)
    out = _swa_pallas(
        cfg,
        *pad_attention_inputs(
            q, k, v, q_lengths, kv_lengths, tq_pad=tq_pad, tkv_pad=tkv_pad, d_pad=dim
        ),
    )
    return out[:, :tq]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _swa_pallas(
    cfg: KernelConfig,
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_lens: jax.Array,
    kv_lens: jax.Array,
) -> jax.Array:
    """Pallas forward on block-aligned inputs (see `swa_attention`)."""
    return _swa_pallas_fwd(cfg, q, k, v, q_lens, kv_lens)[0]


def _swa_pallas_fwd(cfg: KernelConfig, q, k, v, q_lens, kv_lens):
    o, lse = swa_fwd_tpu(
        q,
        k,
        v,
        q_lens,
        kv_lens,
        spec=cfg.spec,
        sizes=cfg.sizes,
        interpret=cfg.interpret,
    )
    return o, (q, k, v, o, lse, q_lens, kv_lens)


def _swa_pallas_bwd(cfg: KernelConfig, residuals, do):
    q, k, v, o, lse, q_lens, kv_lens = residuals
    delta = row_delta(do, o).transpose(0, 2, 1)[:, :, None, :]  # [B, T, H] -> [B, H, 1, T]
    dq, dk, dv = swa_bwd_tpu(
        q,
        k,
        v,
        do,
        lse,
        delta,
        q_lens,
        kv_lens,
        spec=cfg.spec,
        sizes=cfg.sizes,
        interpret=cfg.interpret,
    )
    return dq, dk, dv, None, None


_swa_pallas.defvjp(_swa_pallas_fwd, _swa_pallas_bwd)


def _resolve_backend(backend: str, head_dim: int) -> tuple[str, ...]:
    """Implementations to try in order for `backend` on the target platform."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown SWA backend {backend!r}; choose one of {list(BACKENDS)}")
    platform = target_platform()
    if backend == "tokamax":
        if platform != "gpu":
            raise ValueError(
                f"backend='tokamax' names tokamax's GPU kernels, but the target is {platform}; "
                "use 'tokamax_xla' (any platform) or 'pallas_tpu'"
            )
        return (f"tokamax_{gpu_implementation(target_device())}",)
    if backend == "pallas":
        return _resolve_backend("tokamax", head_dim) if platform == "gpu" else ("pallas_tpu",)
    if backend != "auto":
        return (backend,)
    lo, hi = HEAD_DIM_RANGE
    if not lo <= head_dim <= hi or platform not in ("tpu", "gpu"):
        return ("reference",)
    if platform == "tpu":
        return ("pallas_tpu",)
    return (*_resolve_backend("tokamax", head_dim), "reference")
