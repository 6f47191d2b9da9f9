"""SWA through our Triton-language kernels (`triton_lang.py`) with a custom VJP.

Reached as `swa_attention(..., backend="jax_triton")` (never by "auto" until measured): our
block-sparse GPU SWA beside tokamax's kernels. On a CUDA GPU each kernel is one
`jax_triton.triton_call`; elsewhere they run in Triton's interpreter on the host (CPU tests;
TRITON_INTERPRET=1), see `common/triton_launch.py`. Not run on a GPU yet; compiled to cubin
for sm_80 / sm_90 / sm_100 in CI (benchmarks/kernels/triton_cuda_resources.py).

Tiles: the GPU rows of `tuning.py`, shrunk to the sequence lengths. Inputs are never padded.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from pallas_kernels.common.inputs import clip_lengths, nothing_to_attend
from pallas_kernels.common.softmax import row_delta
from pallas_kernels.common.tiles import BlockSizes, fit_block_sizes
from pallas_kernels.common.triton_launch import TritonLaunch, attention_launch, launch
from pallas_kernels.swa import triton_lang
from pallas_kernels.swa.tuning import default_block_sizes


@dataclasses.dataclass(frozen=True)
class SwaTritonConfig:
    """Static configuration of one call (the custom_vjp's non-differentiable argument).
    mode: `triton_launch.MODES` ("jax_triton" on a GPU, "interpret" on the host)."""

    scale: float
    window: int | None
    causal: bool
    sizes: BlockSizes
    mode: str


def swa_jax_triton(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    q_lengths: jax.Array | None,
    kv_lengths: jax.Array | None,
    window: int | None,
    causal: bool,
    scale: float,
    block_q: int | None,
    block_kv: int | None,
    device_kind: str,
    mode: str,
) -> jax.Array:
    """`swa_attention` (which validated the arguments) on the Triton-language kernels.

    q: [B, Tq, H, D], k / v: [B, Tkv, H, D]; device_kind picks the tiles (`tuning.py`, GPU
    rows); block_q / block_kv override them. Returns [B, Tq, H, D] in q's dtype.
    """
    batch, tq, _, dim = q.shape
    tkv = k.shape[1]
    if nothing_to_attend(q, k):  # no grid to launch
        return jnp.zeros_like(q)
    sizes = default_block_sizes("gpu", device_kind, dim, window).with_overrides(block_q, block_kv)
    sizes = fit_block_sizes(sizes, "pallas_triton", q.dtype, tq, tkv, block_q, block_kv)
    cfg = SwaTritonConfig(float(scale), window, bool(causal), sizes, mode)
    return _swa(
        cfg, q, k, v, clip_lengths(q_lengths, batch, tq), clip_lengths(kv_lengths, batch, tkv)
    )


def forward_launch(cfg: SwaTritonConfig, q, k, v, q_lens, kv_lens) -> TritonLaunch:
    """(O [B, Tq, H, D], lse fp32 [B, H, Tq]); grid (q blocks, B·H). Arrays may be
    jax.ShapeDtypeStructs (compiles)."""
    batch, tq, heads, _ = q.shape
    lse = jax.ShapeDtypeStruct((batch, heads, tq), jnp.float32)
    inputs = (q, k, v, q_lens, kv_lens)
    return _launch(cfg, triton_lang.swa_fwd_kernel, "fwd", inputs, (q, lse))


def dkdv_launch(cfg: SwaTritonConfig, q, k, v, do, lse, delta, q_lens, kv_lens) -> TritonLaunch:
    """(dK, dV) [B, Tkv, H, D]; lse, delta fp32 [B, H, Tq]; grid (kv blocks, B·H)."""
    inputs = (q, k, v, do, lse, delta, q_lens, kv_lens)
    return _launch(cfg, triton_lang.swa_dkdv_kernel, "dkdv", inputs, (k, v))


def dq_launch(cfg: SwaTritonConfig, q, k, v, do, lse, delta, q_lens, kv_lens) -> TritonLaunch:
    """dQ [B, Tq, H, D]; grid (q blocks, B·H)."""
    inputs = (q, k, v, do, lse, delta, q_lens, kv_lens)
    return _launch(cfg, triton_lang.swa_dq_kernel, "dq", inputs, (q,))


def _launch(cfg: SwaTritonConfig, kernel, kind: str, inputs, outputs_like) -> TritonLaunch:
    return attention_launch(
        kernel,
        "swa",
        kind,
        inputs=inputs,
        outputs_like=outputs_like,
        sizes=cfg.sizes,
        window=cfg.window,
        causal=cfg.causal,
        SCALE=cfg.scale,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _swa(cfg: SwaTritonConfig, q, k, v, q_lens, kv_lens) -> jax.Array:
    return _swa_fwd(cfg, q, k, v, q_lens, kv_lens)[0]


def _swa_fwd(cfg: SwaTritonConfig, q, k, v, q_lens, kv_lens):
    o, lse = launch(forward_launch(cfg, q, k, v, q_lens, kv_lens), cfg.mode)
    return o, (q, k, v, o, lse, q_lens, kv_lens)


def _swa_bwd(cfg: SwaTritonConfig, residuals, do):
    q, k, v, o, lse, q_lens, kv_lens = residuals
    do = do.astype(q.dtype)
    delta = row_delta(do, o).transpose(0, 2, 1)  # [B, Tq, H] -> [B, H, Tq]
    args = (q, k, v, do, lse, delta, q_lens, kv_lens)
    dk, dv = launch(dkdv_launch(cfg, *args), cfg.mode)
    (dq,) = launch(dq_launch(cfg, *args), cfg.mode)
    return dq, dk, dv, None, None


_swa.defvjp(_swa_fwd, _swa_bwd)
