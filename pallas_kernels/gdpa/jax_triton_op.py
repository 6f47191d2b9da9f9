"""GDPA through the Triton-language kernels (`triton_lang.py`) with a custom VJP.

Reached as `gdpa(..., backend="jax_triton")` (never by "auto"): the comparison point for the
Pallas kernels, the same op written directly in Triton. On a CUDA GPU each kernel is one
`jax_triton.triton_call`; elsewhere the kernels run in Triton's interpreter on the host (CPU
tests; TRITON_INTERPRET=1), see `common/triton_launch.py`. Because Triton generates the MMA
code itself, the same source compiles for Hopper (wgmma) and Blackwell (tcgen05); CI compiles
it to cubin for both (tests/kernels/test_jax_triton_compile.py). Not run on a GPU yet.

Tiles: the GPU rows of `tuning.py` (shared with the Pallas Triton kernels, same constraint:
powers of two >= 16), shrunk to the sequence lengths. Inputs are never padded.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from pallas_kernels.common.activations import approximates_tanh
from pallas_kernels.common.blocks import cdiv
from pallas_kernels.common.inputs import clip_lengths, nothing_to_attend
from pallas_kernels.common.tiles import BlockSizes, fit_block_sizes
from pallas_kernels.common.triton_launch import TritonLaunch, attention_launch, launch
from pallas_kernels.gdpa import triton_lang
from pallas_kernels.gdpa.blockwise import GdpaSpec, scales_tiles
from pallas_kernels.gdpa.tuning import default_block_sizes, dkdv_q_splits, sum_query_splits


@dataclasses.dataclass(frozen=True)
class JaxTritonConfig:
    """Static configuration of one call (the custom_vjp's non-differentiable argument).
    mode: `triton_launch.MODES` ("jax_triton" on a GPU, "interpret" on the host)."""

    spec: GdpaSpec
    sizes: BlockSizes
    mode: str


def gdpa_jax_triton(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    activation: str,
    qk_scale: float,
    out_scale: float,
    q_lengths: jax.Array | None,
    kv_lengths: jax.Array | None,
    window: int | None,
    causal: bool,
    block_q: int | None,
    block_kv: int | None,
    device_kind: str,
    mode: str,
) -> jax.Array:
    """`gdpa` (which validated the arguments) on the Triton-language kernels.

    q: [B, Tq, H, D], k / v: [B, Tkv, H, D]; device_kind picks the tuned tiles (`tuning.py`,
    GPU rows); block_q / block_kv override them. Returns [B, Tq, H, D] in q's dtype.
    """
    batch, tq, _, dim = q.shape
    tkv = k.shape[1]
    if nothing_to_attend(q, k):  # no grid to launch
        return jnp.zeros_like(q)
    sizes = default_block_sizes("gpu", device_kind, dim, tkv, "jax_triton")
    sizes = sizes.with_overrides(block_q, block_kv)
    sizes = fit_block_sizes(sizes, "pallas_triton", q.dtype, tq, tkv, block_q, block_kv)
    spec = GdpaSpec(
        activation, qk_scale, out_scale, window, causal, scale_tiles=scales_tiles(q.dtype)
    )
    cfg = JaxTritonConfig(spec, sizes, mode)
    return _gdpa(
        cfg, q, k, v, clip_lengths(q_lengths, batch, tq), clip_lengths(kv_lengths, batch, tkv)
    )


def forward_launch(cfg: JaxTritonConfig, q, k, v, q_lens, kv_lens) -> TritonLaunch:
    """O [B, Tq, H, D]; grid (q blocks, B·H). Arrays may be jax.ShapeDtypeStructs (compiles)."""
    return _launch(cfg, triton_lang.gdpa_fwd_kernel, "fwd", (q, k, v, q_lens, kv_lens), (q,))


def dkdv_launch(cfg: JaxTritonConfig, q, k, v, do, q_lens, kv_lens) -> TritonLaunch:
    """(dK, dV) [B, Tkv, H, D], or with several query splits (`tuning.dkdv_q_splits`) fp32
    partials [splits, B, Tkv, H, D] to sum; grid (kv blocks, B·H[, splits])."""
    batch, tq, heads, _ = q.shape
    bq, bkv = cfg.sizes.block_q_bwd, cfg.sizes.block_kv_bwd
    q_blocks, kv_blocks = cdiv(tq, bq), cdiv(k.shape[1], bkv)
    splits = dkdv_q_splits(kv_blocks * batch * heads, q_blocks)
    outputs = (k, v)
    if splits > 1:
        outputs = (jax.ShapeDtypeStruct((splits, *k.shape), jnp.float32),) * 2
    inputs = (q, k, v, do, q_lens, kv_lens)
    return _launch(
        cfg,
        triton_lang.gdpa_dkdv_kernel,
        "dkdv",
        inputs,
        outputs,
        splits=splits,
        SPLIT_BLOCKS=cdiv(q_blocks, splits),
        SPLIT_STRIDE=0 if splits == 1 else math.prod(k.shape),
    )


def dq_launch(cfg: JaxTritonConfig, q, k, v, do, q_lens, kv_lens) -> TritonLaunch:
    """dQ [B, Tq, H, D]; grid (q blocks, B·H)."""
    inputs = (q, k, v, do, q_lens, kv_lens)
    return _launch(cfg, triton_lang.gdpa_dq_kernel, "dq", inputs, (q,))


def _launch(cfg: JaxTritonConfig, kernel, kind: str, inputs, outputs_like, **extra) -> TritonLaunch:
    spec = cfg.spec
    return attention_launch(
        kernel,
        "gdpa",
        kind,
        inputs=inputs,
        outputs_like=outputs_like,
        sizes=cfg.sizes,
        window=spec.window,
        causal=spec.causal,
        ACT=spec.activation,
        # Compiled, 16-bit: silu's / sigmoid's σ through PTX tanh.approx (`activations`;
        # Triton's interpreter cannot run inline PTX).
        FAST_TANH=cfg.mode == "jax_triton" and approximates_tanh(inputs[0].dtype),
        **_scales(spec, kind),
        **extra,
    )


def _scales(spec: GdpaSpec, kind: str) -> dict[str, float]:
    """The scale constexprs of kernel `kind`: α in the activation's argument, then the factors
    of the P tiles and the O / dV accumulators (β between them) and of the dS tiles and the
    dQ / dK accumulators (αβ between them): `GdpaSpec.tile_scale` and its kin."""
    p_scales = dict(P_SCALE=spec.tile_scale, OUT_SCALE=spec.acc_scale)
    ds_scales = dict(DS_SCALE=spec.tile_grad_scale, GRAD_SCALE=spec.acc_grad_scale)
    per_kind = {"fwd": p_scales, "dq": ds_scales, "dkdv": p_scales | ds_scales}
    return dict(QK_SCALE=spec.qk_scale, **per_kind[kind])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _gdpa(cfg: JaxTritonConfig, q, k, v, q_lens, kv_lens) -> jax.Array:
    (out,) = launch(forward_launch(cfg, q, k, v, q_lens, kv_lens), cfg.mode)
    return out


def _gdpa_fwd(cfg: JaxTritonConfig, q, k, v, q_lens, kv_lens):
    return _gdpa(cfg, q, k, v, q_lens, kv_lens), (q, k, v, q_lens, kv_lens)


def _gdpa_bwd(cfg: JaxTritonConfig, residuals, do):
    q, k, v, q_lens, kv_lens = residuals
    do = do.astype(q.dtype)
    dk, dv = launch(dkdv_launch(cfg, q, k, v, do, q_lens, kv_lens), cfg.mode)
    dk, dv = sum_query_splits(dk, dv, k.dtype)
    (dq,) = launch(dq_launch(cfg, q, k, v, do, q_lens, kv_lens), cfg.mode)
    return dq, dk, dv, None, None


_gdpa.defvjp(_gdpa_fwd, _gdpa_bwd)
