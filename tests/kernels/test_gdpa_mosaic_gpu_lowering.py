"""Lowering of the Mosaic GPU GDPA kernels for sm_90 (Hopper) and sm_100 (Blackwell) on CPU.

The interpreter accepts what the hardware does not (any jnp op, unswizzled SMEM operands); the
lowering does not. `lower(lowering_platforms=("cuda",))` runs Mosaic GPU's Python passes with
no GPU attached: layout inference, SMEM tiling/swizzle inference for every MMA and TMA
operand, and the lowering to wgmma or tcgen05 / TMEM / TMA / mbarrier instructions. It stops
before the C++ passes and ptxas, which need the CUDA plugin. With no GPU the arch falls back to
sm_90; Mosaic GPU reads it from the abstract mesh's device, so the Blackwell kernels are
lowered under an abstract mesh whose device says compute capability 10.0. This test found
that the exact-erf GELU had no Mosaic GPU lowering (the kernels now use the rational erf).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from pallas_kernels.common.activations import ACTIVATIONS, SIGMOID_FAMILY
from pallas_kernels.gdpa.mosaic_gpu import ARCHS, gdpa_mosaic_gpu
from tests.kernels.helpers import B200, H100, lowering_for_gpu

B, H = 2, 4
CASES = [  # (Tq, Tkv, D, window, causal, block_kv, dtype): FFN and self-attention shapes
    (1024, 64, 128, None, False, 64, jnp.bfloat16),
    (1000, 16, 128, None, False, 128, jnp.float16),
    (4096, 4096, 128, 128, True, 128, jnp.bfloat16),
    (130, 100, 32, None, False, 64, jnp.float16),
    (1024, 1024, 64, 100, False, 64, jnp.bfloat16),
]
TARGETS = {"hopper": H100, "blackwell": B200}


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize(
    ("activation", "case"),
    [(a, CASES[i % len(CASES)]) for i, a in enumerate(sorted(ACTIVATIONS))],
)
def test_forward_and_backward_lower(arch, activation, case):
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
            arch=arch,
        )
        return o.astype(jnp.float32).sum()

    args = (
        jax.ShapeDtypeStruct((B, tq, H, dim), dtype),
        jax.ShapeDtypeStruct((B, tkv, H, dim), dtype),
        jax.ShapeDtypeStruct((B, tkv, H, dim), dtype),
        jax.ShapeDtypeStruct((B,), jnp.int32),
        jax.ShapeDtypeStruct((B,), jnp.int32),
    )
    with lowering_for_gpu(TARGETS[arch]):
        lowered = (
            jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
            .trace(*args)
            .lower(lowering_platforms=("cuda",))
        )
    text = lowered.as_text()
    assert text.count("@mosaic_gpu_v2") == 3  # forward, dQ, dK/dV
    # silu / sigmoid compile with approx_math: each kernel's σ is one tanh.approx.f32 and no
    # division is left; every other activation keeps exact math (gelu_tanh its exact tanh).
    sigmoid_family = activation in SIGMOID_FAMILY
    assert text.count("tanh.approx.f32") == (3 if sigmoid_family else 0)
    if sigmoid_family:
        assert "divf" not in text


def test_the_blackwell_context_sets_the_arch_mosaic_gpu_lowers_for():
    from jax.experimental.mosaic.gpu import utils as mgpu_utils  # where the lowering reads it

    assert mgpu_utils._infer_arch() == (9, 0)  # no GPU attached: Hopper
    with lowering_for_gpu(B200):
        assert mgpu_utils._infer_arch() == (10, 0)
