"""Public GDPA op: validation, backend dispatch, padding to block multiples, custom VJP.

Backends:
- "reference": plain jnp (`reference.gdpa_reference`), differentiated by JAX autodiff.
- "pallas_tpu": Mosaic-TPU-style kernels (`tpu.py`, `tpu_vjp.py`).
- "pallas_triton": Triton-lowered GPU kernels (`triton.py`, `triton_vjp.py`).
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
import math
import numbers

import jax
import jax.numpy as jnp

from pallas_kernels.common.activations import get_activation
from pallas_kernels.common.blocks import round_up
from pallas_kernels.gdpa.blockwise import GdpaSpec
from pallas_kernels.gdpa.reference import gdpa_reference
from pallas_kernels.gdpa.tpu import gdpa_fwd_tpu
from pallas_kernels.gdpa.tpu_vjp import gdpa_bwd_tpu
from pallas_kernels.gdpa.triton import gdpa_fwd_triton
from pallas_kernels.gdpa.triton_vjp import gdpa_bwd_triton
from pallas_kernels.gdpa.tuning import BlockSizes, default_block_sizes

BACKENDS = ("auto", "pallas", "pallas_tpu", "pallas_triton", "reference")
DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16), jnp.dtype(jnp.float32))
HEAD_DIM_RANGE = (32, 256)  # head dims the Pallas backends support (inclusive)
TRITON_MIN_BLOCK = 16  # tl.dot needs M, N, K >= 16


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
) -> jax.Array:
    """Generalized dot-product attention O = (M ⊙ out_scale·Act(qk_scale·Q Kᵀ)) V per head.

    q: [B, Tq, H, D]; k, v: [B, Tkv, H, D]; one dtype of bf16 / fp16 / fp32 (fp32 accumulation).
    q_lengths / kv_lengths: int [B] real rows per batch row (None = all). window: |i - j| <= w.
    causal: j <= i. Masked positions contribute exactly zero; padded query rows are zero.
    block_q / block_kv override the tuned tiles (`tuning.py`) of the Pallas backends.
    Returns [B, Tq, H, D] in q's dtype. Scales, window, causal and blocks are static.
    """
    impl = _resolve_backend(backend, q.shape[-1])
    get_activation(activation)  # ValueError listing the valid names
    _check_inputs(q, k, v, q_lengths, kv_lengths, window)
    if impl == "reference":
        return gdpa_reference(
            q,
            k,
            v,
            activation=activation,
            qk_scale=qk_scale,
            out_scale=out_scale,
            q_lengths=q_lengths,
            kv_lengths=kv_lengths,
            window=window,
            causal=causal,
        )
    device = jax.devices()[0]
    return gdpa_pallas(
        q,
        k,
        v,
        impl=impl,
        platform=device.platform,
        device_kind=device.device_kind,
        interpret=not _compiles_natively(impl),
        activation=activation,
        qk_scale=qk_scale,
        out_scale=out_scale,
        q_lengths=q_lengths,
        kv_lengths=kv_lengths,
        window=window,
        causal=causal,
        block_q=block_q,
        block_kv=block_kv,
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
) -> jax.Array:
    """The Pallas path of `gdpa` for an explicit target, e.g. an ahead-of-time compile for a
    TPU that is not attached (`platform="tpu", device_kind="TPU v5 lite", interpret=False`).

    impl: "pallas_tpu" | "pallas_triton"; other arguments as for `gdpa` (validated there).
    """
    _check_head_dim(q.shape[-1])
    batch, tq, _, dim = q.shape
    tkv = k.shape[1]
    if tq == 0 or tkv == 0:  # nothing to attend: no grid to launch
        return jnp.zeros_like(q)
    spec = GdpaSpec(
        activation,
        float(qk_scale),
        float(out_scale),
        None if window is None else int(window),
        bool(causal),
        erf_free=impl == "pallas_triton",
    )
    sizes = default_block_sizes(platform, device_kind, dim, tkv).with_overrides(block_q, block_kv)
    sizes = _fit_block_sizes(sizes, impl, q.dtype, tq, tkv, block_q, block_kv)
    cfg = KernelConfig(impl, spec, sizes, interpret)
    tq_pad = round_up(tq, math.lcm(sizes.block_q, sizes.block_q_bwd))
    tkv_pad = round_up(tkv, math.lcm(sizes.block_kv, sizes.block_kv_bwd))
    d_pad = pow2_at_least(dim) if impl == "pallas_triton" else dim
    out = _gdpa_pallas(
        cfg,
        _pad(q, tq_pad, d_pad),
        _pad(k, tkv_pad, d_pad),
        _pad(v, tkv_pad, d_pad),
        _lengths(q_lengths, batch, tq),
        _lengths(kv_lengths, batch, tkv),
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
            block_q=cfg.sizes.block_q,
            block_kv=cfg.sizes.block_kv,
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
            block_q=cfg.sizes.block_q_bwd,
            block_kv=cfg.sizes.block_kv_bwd,
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
    platform = jax.default_backend()
    lo, hi = HEAD_DIM_RANGE
    if backend == "auto" and (platform not in ("tpu", "gpu") or not lo <= head_dim <= hi):
        return "reference"
    if backend in ("auto", "pallas"):
        return "pallas_triton" if platform == "gpu" else "pallas_tpu"
    return backend


def _compiles_natively(impl: str) -> bool:
    return jax.default_backend() == {"pallas_tpu": "tpu", "pallas_triton": "gpu"}[impl]


def pow2_at_least(n: int) -> int:
    """Smallest power of two >= n."""
    return 1 << max(n - 1, 0).bit_length()


def _fit_block_sizes(
    sizes: BlockSizes,
    impl: str,
    dtype: jnp.dtype,
    tq: int,
    tkv: int,
    block_q: int | None,
    block_kv: int | None,
) -> BlockSizes:
    """Check explicit tiles for the backend and shrink all tiles to the sequence lengths."""
    if impl == "pallas_triton":
        align = TRITON_MIN_BLOCK

        def fit(block: int, length: int) -> int:
            return min(block, max(TRITON_MIN_BLOCK, pow2_at_least(length)))
    else:
        align = 16 if jnp.dtype(dtype).itemsize == 2 else 8  # sublane tile of the dtype

        def fit(block: int, length: int) -> int:
            return min(block, round_up(length, align))

    for name, value in (("block_q", block_q), ("block_kv", block_kv)):
        if value is None:
            continue
        if impl == "pallas_triton" and (value < align or value != pow2_at_least(value)):
            raise ValueError(f"{name}={value} must be a power of two >= {align} for {impl}")
        if impl == "pallas_tpu" and (value <= 0 or value % align):
            raise ValueError(f"{name}={value} must be a positive multiple of {align} for {impl}")
    return dataclasses.replace(
        sizes,
        block_q=fit(sizes.block_q, tq),
        block_kv=fit(sizes.block_kv, tkv),
        block_q_bwd=fit(sizes.block_q_bwd, tq),
        block_kv_bwd=fit(sizes.block_kv_bwd, tkv),
    )


def _pad(x: jax.Array, length: int, dim: int) -> jax.Array:
    """Zero-pad [B, T, H, D] to T = length, D = dim (no-op when already there)."""
    _, t, _, d = x.shape
    if (t, d) == (length, dim):
        return x
    return jnp.pad(x, ((0, 0), (0, length - t), (0, 0), (0, dim - d)))


def _lengths(lengths: jax.Array | None, batch: int, length: int) -> jax.Array:
    """int32 [B] lengths clipped to [0, length] (the reference's semantics); None = full."""
    if lengths is None:
        return jnp.full((batch,), length, jnp.int32)
    return jnp.clip(lengths.astype(jnp.int32), 0, length)


def _check_inputs(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_lengths: jax.Array | None,
    kv_lengths: jax.Array | None,
    window: int | None,
) -> None:
    """ValueError naming the offending argument for bad shapes, dtypes, lengths or window."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 4:
            raise ValueError(f"{name} must have rank 4 [B, T, H, D], got shape {x.shape}")
        if jnp.dtype(x.dtype) not in DTYPES:
            raise ValueError(
                f"{name} has dtype {x.dtype}; GDPA supports {[str(d) for d in DTYPES]}"
            )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got k {k.shape} and v {v.shape}")
    b, _, h, d = q.shape
    if (k.shape[0], k.shape[2], k.shape[3]) != (b, h, d):
        raise ValueError(
            f"k/v batch, heads and head dim must match q's ({b}, {h}, {d}), got k {k.shape}"
        )
    for name, lengths in (("q_lengths", q_lengths), ("kv_lengths", kv_lengths)):
        if lengths is None:
            continue
        if lengths.shape != (b,) or not jnp.issubdtype(lengths.dtype, jnp.integer):
            raise ValueError(
                f"{name} must be an integer array of shape ({b},), "
                f"got {lengths.dtype} {lengths.shape}"
            )
    if window is not None and (
        isinstance(window, bool) or not isinstance(window, numbers.Integral) or window < 0
    ):
        raise ValueError(f"window must be a non-negative int or None, got {window!r}")


def _check_head_dim(dim: int) -> None:
    lo, hi = HEAD_DIM_RANGE
    if not lo <= dim <= hi:
        raise ValueError(f"head dim D={dim} outside the Pallas GDPA range [{lo}, {hi}]")
