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

import contextlib
import dataclasses

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AbstractMesh

from pallas_kernels.common.activations import ACTIVATIONS
from pallas_kernels.gdpa.mosaic_gpu import ARCHS, gdpa_mosaic_gpu

B, H = 2, 4
CASES = [  # (Tq, Tkv, D, window, causal, block_kv, dtype): FFN and self-attention shapes
    (1024, 64, 128, None, False, 64, jnp.bfloat16),
    (1000, 16, 128, None, False, 128, jnp.float16),
    (4096, 4096, 128, 128, True, 128, jnp.bfloat16),
    (130, 100, 32, None, False, 64, jnp.float16),
    (1024, 1024, 64, 100, False, 64, jnp.bfloat16),
]


@dataclasses.dataclass(frozen=True)
class _B200:
    """What Mosaic GPU reads of a device to pick the arch (hashable, as AbstractMesh needs)."""

    device_kind: str = "NVIDIA B200"
    compute_capability: str = "10.0"
    platform: str = "gpu"
    num_cores: int = 148

    def _repr(self) -> str:
        return self.device_kind


def _arch_context(arch: str):
    if arch == "hopper":
        return contextlib.nullcontext()
    return jax.sharding.use_abstract_mesh(AbstractMesh((1,), ("x",), abstract_device=_B200()))


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
    with _arch_context(arch):
        lowered = (
            jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
            .trace(*args)
            .lower(lowering_platforms=("cuda",))
        )
    assert lowered.as_text().count("@mosaic_gpu_v2") == 3  # forward, dQ, dK/dV


def test_the_blackwell_context_sets_the_arch_mosaic_gpu_lowers_for():
    from jax.experimental.mosaic.gpu import utils as mgpu_utils  # where the lowering reads it

    assert mgpu_utils._infer_arch() == (9, 0)  # no GPU attached: Hopper
    with _arch_context("blackwell"):
        assert mgpu_utils._infer_arch() == (10, 0)
