"""Public seed-pooling op: validation, backend dispatch, padding to tiles, custom VJP.

Seed pooling (HSP step 2): learnable seeds [S, H, D] shared by the batch attend (softmax, scale
1/sqrt(D)) to a jagged sequence k, v [B, T, H, D] -> [B, S, H, D]; rows of length 0 give 0.

Backends:
- "reference": plain jnp (`reference.seed_pooling_reference`), differentiated by JAX autodiff.
- "tpu": Mosaic-TPU-style kernels (`tpu.py`); "triton": Pallas-Triton GPU kernels (`triton.py`).
- "pallas": the platform's kernel (GPU → triton, else tpu; interpret mode off its platform).
- "auto": tpu on TPU, triton on GPU; the reference on CPU, for head dims outside
  HEAD_DIM_RANGE and for more seeds than the device's seed tile (ordered fallback).
Both kernels sit behind one `jax.custom_vjp` with a Pallas backward (dSeeds summed over the
batch, dK, dV); lengths get no gradient.

Fusing the projections into the kernel: not done, on these counts. Per example, with d = H·D,
r Kronecker terms and n_tok output tokens, the kernel must stream K and V once: 2·T·d elements,
4·S·T·d FLOPs. After it, the XLA composition (`model/hsp.py`: Dense 'o', then SumKronLinear
Y = Σ_i Z_iᵀ H W_i as two einsums) writes and re-reads the pooled [S, d], the 'o' output
[S, d] and the einsum intermediate [r, n_tok, d]: (4·S + 2·r·n_tok)·d elements, with
2·S·d² + 2·r·S·n_tok·d + 2·r·n_tok·d·d_out FLOPs. At the `base` config (T = 512, d = d_out =
256, S = 64, r = 8, n_tok = 16) that is 128 Ki elements of round trip against 256 Ki streamed
by the kernel (50%; 25% at T = 1024, 6% at T = 4096), so a perfect fusion could save up to
~1/3 of the block's forward HBM time at short T. It cannot be had cheaply: the 'o' map mixes
heads (a per-head program cannot apply it without a cross-head reduction), and the tail's
29 MFLOP/example are dominated by W [r, d, d_out] (1 MiB in bf16, shared by the batch), which
does not fit next to the K/V pipeline in GPU shared memory, so a fused program would re-stream
W per example or per small batch tile and run its matmuls with M = n_tok rows instead of XLA's
M = B·n_tok. A cheaper route with most of the gain needs no kernel: fold 'o' into W
(W'_i = W_o W_i once per step, batch-independent), which removes one [S, d] round trip and
2·S·d² FLOPs per example. `benchmarks/kernels/hsp.py` times the pooling and the projection tail
separately (`tail_ms` bounds what any fusion can save); that GPU measurement decides.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from pallas_kernels.common import dispatch
from pallas_kernels.common.inputs import DTYPES, check_attention_inputs, clip_lengths, pad_sequence
from pallas_kernels.common.target import target_device, target_platform
from pallas_kernels.common.tiles import BlockSizes, fit_block_sizes, pow2_at_least
from pallas_kernels.hsp.reference import seed_pooling_reference
from pallas_kernels.hsp.tpu import seed_pooling_bwd_tpu, seed_pooling_fwd_tpu
from pallas_kernels.hsp.triton import seed_pooling_bwd_triton, seed_pooling_fwd_triton
from pallas_kernels.hsp.tuning import default_block_sizes

BACKENDS = ("auto", "pallas", "tpu", "triton", "reference")
HEAD_DIM_RANGE = (32, 256)  # head dims "auto" sends to a kernel (inclusive), as for GDPA
_NATIVE_PLATFORM = {"tpu": "tpu", "triton": "gpu"}


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Static configuration of one Pallas seed-pooling call (the custom_vjp's non-diff arg)."""

    backend: str  # "tpu" | "triton"
    scale: float  # softmax scale 1/sqrt(D) of the unpadded head dim
    sizes: BlockSizes  # block_q: the padded seed count
    interpret: bool


def seed_pooling(
    seeds: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    kv_lengths: jax.Array | None = None,
    backend: str = "auto",
    interpret: bool | None = None,
    block_kv: int | None = None,
    device_kind: str | None = None,
) -> jax.Array:
    """Seeds [S, H, D] shared across the batch attend (softmax) to k, v [B, T, H, D].

    kv_lengths: int [B] real keys per row (None = all T), in [0, T]: concrete lengths outside
    it raise ValueError; traced ones (under jit) cannot be checked and are clipped to it. Padded
    keys and values contribute exactly zero, whatever they hold (NaN, inf). seeds, k, v:
    bf16 / fp16 / fp32 (k and v one dtype; seeds are cast to it, as in the reference).
    Returns [B, S, H, D] in k's dtype; a row with no key gives zeros (and zero gradients).
    interpret: run the Pallas kernel in interpret mode (None: unless on its own platform;
    False on CPU only makes sense for ahead-of-time compiles). block_kv: override the tuned
    kv tile (forward and backward). device_kind: the device whose tuned tiles to use (default:
    the compile target, `common.target.target_device()`).
    """
    _check_inputs(seeds, k, v, kv_lengths)
    if k.size == 0:  # nothing to attend to (B, T, H or D of 0)
        return jnp.zeros((k.shape[0], seeds.shape[0], *k.shape[2:]), k.dtype)
    impl = _resolve_backend(backend, seeds.shape, device_kind)
    dispatch.record("seed_pooling", impl)
    if impl == "reference":
        return seed_pooling_reference(seeds, k, v, kv_lengths=kv_lengths)
    native = target_platform() == _NATIVE_PLATFORM[impl]
    interpret = not native if interpret is None else interpret
    # Tiles: the target's table row when compiling, the small fallback tiles in interpret mode.
    platform = target_platform() if interpret else _NATIVE_PLATFORM[impl]
    if device_kind is None:
        device_kind = target_device().device_kind if native else ""
    num_seeds, _, dim = seeds.shape
    batch, t = k.shape[:2]
    sizes = _fit_tiles(impl, platform, device_kind, k.dtype, num_seeds, dim, t, block_kv)
    cfg = KernelConfig(impl, dim**-0.5, sizes, bool(interpret))
    t_pad = sizes.padded_kv(t)
    d_pad = pow2_at_least(max(dim, 16)) if impl == "triton" else dim
    seeds_pad = jnp.pad(
        seeds.astype(k.dtype), ((0, sizes.block_q - num_seeds), (0, 0), (0, d_pad - dim))
    )
    out = _seed_pooling_pallas(
        cfg,
        seeds_pad,
        pad_sequence(k, t_pad, d_pad),
        pad_sequence(v, t_pad, d_pad),
        clip_lengths(kv_lengths, batch, t),
    )
    return out[:, :num_seeds, :, :dim]


def _fit_tiles(
    impl: str,
    platform: str,
    device_kind: str,
    dtype: jnp.dtype,
    num_seeds: int,
    dim: int,
    t: int,
    block_kv: int | None,
) -> BlockSizes:
    """Tuned tiles with block_q = the padded seed count, kv tiles shrunk to T."""
    table = default_block_sizes(platform, device_kind, dim)
    if num_seeds > table.block_q:
        raise ValueError(
            f"{num_seeds} seeds exceed the {impl} kernel's seed tile ({table.block_q}) on "
            f"{device_kind or platform!r}; use fewer seeds or backend='reference'"
        )
    seed_tile = pow2_at_least(max(num_seeds, 16))  # >= every backend's padded seed count
    sizes = dataclasses.replace(
        table.with_overrides(None, block_kv), block_q=seed_tile, block_q_bwd=seed_tile
    )
    name = "pallas_triton" if impl == "triton" else "pallas_tpu"
    return fit_block_sizes(sizes, name, dtype, num_seeds, t, None, block_kv)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _seed_pooling_pallas(
    cfg: KernelConfig, seeds: jax.Array, k: jax.Array, v: jax.Array, kv_lens: jax.Array
) -> jax.Array:
    """Pallas forward on tile-aligned inputs (see `seed_pooling`)."""
    return _forward(cfg, seeds, k, v, kv_lens)[0]


def _forward(cfg: KernelConfig, seeds, k, v, kv_lens) -> tuple[jax.Array, jax.Array]:
    if cfg.backend == "tpu":
        return seed_pooling_fwd_tpu(
            seeds,
            k,
            v,
            kv_lens,
            scale=cfg.scale,
            block_kv=cfg.sizes.block_kv,
            interpret=cfg.interpret,
        )
    return seed_pooling_fwd_triton(
        seeds, k, v, kv_lens, scale=cfg.scale, sizes=cfg.sizes, interpret=cfg.interpret
    )


def _seed_pooling_pallas_fwd(cfg, seeds, k, v, kv_lens):
    o, lse = _forward(cfg, seeds, k, v, kv_lens)
    return o, (seeds, k, v, kv_lens, o, lse)


def _seed_pooling_pallas_bwd(cfg: KernelConfig, residuals, do):
    seeds, k, v, kv_lens, o, lse = residuals
    kw = dict(scale=cfg.scale, interpret=cfg.interpret)
    if cfg.backend == "tpu":
        dseeds, dk, dv = seed_pooling_bwd_tpu(
            seeds, k, v, o, lse, do, kv_lens, block_kv=cfg.sizes.block_kv_bwd, **kw
        )
    else:
        dseeds, dk, dv = seed_pooling_bwd_triton(
            seeds, k, v, o, lse, do, kv_lens, sizes=cfg.sizes, **kw
        )
    return dseeds.astype(seeds.dtype), dk, dv, None


_seed_pooling_pallas.defvjp(_seed_pooling_pallas_fwd, _seed_pooling_pallas_bwd)


def _resolve_backend(backend: str, seeds_shape: tuple[int, ...], device_kind: str | None) -> str:
    """Concrete implementation for `backend` on the target platform (`common.target`)."""
    if backend not in BACKENDS:
        raise ValueError(
            f"unknown seed-pooling backend {backend!r}; choose one of {list(BACKENDS)}"
        )
    platform = target_platform()
    impl = "triton" if platform == "gpu" else "tpu"
    if backend == "auto":
        num_seeds, _, dim = seeds_shape
        lo, hi = HEAD_DIM_RANGE
        kind = device_kind or target_device().device_kind
        seed_tile = default_block_sizes(platform, kind, dim).block_q
        fits = lo <= dim <= hi and num_seeds <= seed_tile
        return impl if platform in ("tpu", "gpu") and fits else "reference"
    return impl if backend == "pallas" else backend


def _check_inputs(
    seeds: jax.Array, k: jax.Array, v: jax.Array, kv_lengths: jax.Array | None
) -> None:
    """ValueError naming the offending argument for bad shapes, dtypes or lengths."""
    check_attention_inputs("seed pooling", k, k, v, None, kv_lengths, None, names=("k", "k", "v"))
    if seeds.ndim != 3:
        raise ValueError(f"seeds must have rank 3 [S, H, D], got shape {seeds.shape}")
    if jnp.dtype(seeds.dtype) not in DTYPES:
        raise ValueError(
            f"seeds has dtype {seeds.dtype}; seed pooling supports {[str(d) for d in DTYPES]}"
        )
    if seeds.shape[1:] != k.shape[2:]:
        raise ValueError(f"seeds heads and head dim {seeds.shape[1:]} must match k's {k.shape[2:]}")
    if seeds.shape[0] == 0:
        raise ValueError("seeds must hold at least one seed (S >= 1)")
