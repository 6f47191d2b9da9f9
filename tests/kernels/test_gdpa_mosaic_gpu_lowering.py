"""Lowering of the Mosaic GPU GDPA kernels for sm_90 (Hopper) on a CPU machine.

The interpreter accepts what Hopper does not (any jnp op, unswizzled SMEM operands); the
lowering does not. `lower(lowering_platforms=("cuda",))` runs Mosaic GPU's Python passes with
no GPU attached (the arch falls back to sm_90): layout inference, SMEM tiling/swizzle inference
for every wgmma and TMA operand, and the lowering to wgmma / TMA / mbarrier instructions. It
stops before the C++ passes and ptxas, which need the CUDA plugin. This test found that the
exact-erf GELU had no Mosaic GPU lowering (the kernels now use the rational erf).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from pallas_kernels.common.activations import ACTIVATIONS
from pallas_kernels.gdpa.mosaic_gpu import gdpa_mosaic_gpu

B, H = 2, 4
CASES = [  # (Tq, Tkv, D, window, causal, block_kv, dtype): FFN and self-attention shapes
    (1024, 64, 128, None, False, 64, jnp.bfloat16),
    (1000, 16, 128, None, False, 128, jnp.float16),
    (4096, 4096, 128, 128, True, 128, jnp.bfloat16),
    (130, 100, 32, None, False, 64, jnp.float16),
    (1024, 1024, 64, 100, False, 64, jnp.bfloat16),
]


@pytest.mark.parametrize(
    ("activation", "case"),
    [(a, CASES[i % len(CASES)]) for i, a in enumerate(sorted(ACTIVATIONS))],
)
def test_forward_and_backward_lower_for_hopper(activation, case):
    tq, tkv, dim, window, causal, block_kv, dtype = case

    def loss(q, k, v, q_lengths, kv_lengths):
        o = gdpa_mosaic_gpu(
            q,
            k,
            v,
            activation=activation,
            qk_scale=dim**-0.5,
            out_scale=1.0 / tkv,
            q_lengths=q_lengths,
            kv_lengths=kv_lengths,
            window=window,
            causal=causal,
            block_kv=block_kv,
        )
        return o.astype(jnp.float32).sum()

    args = (
        jax.ShapeDtypeStruct((B, tq, H, dim), dtype),
        jax.ShapeDtypeStruct((B, tkv, H, dim), dtype),
        jax.ShapeDtypeStruct((B, tkv, H, dim), dtype),
        jax.ShapeDtypeStruct((B,), jnp.int32),
        jax.ShapeDtypeStruct((B,), jnp.int32),
    )
    lowered = (
        jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
        .trace(*args)
        .lower(lowering_platforms=("cuda",))
    )
    assert lowered.as_text().count("@mosaic_gpu_v2") == 3  # forward, dQ, dK/dV
