"""Lowering of the pallas_triton GDPA kernels to Triton IR for an H100 that is not attached.

Interpret mode runs any jnp; the Pallas → Triton lowering accepts far less (no `lax.erf`,
power-of-two tiles, tl.dot shapes). Lowering under an abstract H100 device runs that whole
translation on CPU (it stops before PTX: compiling needs the CUDA toolchain). Forward and
backward at production shapes: B=2, H=4, D=128, bf16, every activation across the cases.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from pallas_kernels.common.activations import ACTIVATIONS, SIGMOID_FAMILY
from pallas_kernels.gdpa.api import gdpa_pallas
from tests.kernels.helpers import H100, lowering_for_gpu

# jax 0.11 deprecates the Pallas Triton backend (in favour of Mosaic GPU); it still lowers.
pytestmark = pytest.mark.filterwarnings(
    "ignore:The Pallas Triton backend is deprecated:DeprecationWarning"
)
B, H, D = 2, 4, 128
SHAPES = [  # (Tq, Tkv, window, causal)
    (1024, 1024, None, False),
    (1024, 64, None, False),
    (1024, 1024, 100, True),
    (1024, 16, None, False),
]


def _lowered_fwd_and_bwd(activation: str, shape, dtype) -> str:
    """StableHLO of value_and_grad of a pallas_triton GDPA lowered for an H100."""
    tq, tkv, window, causal = shape

    def loss(q, k, v, q_lengths, kv_lengths):
        o = gdpa_pallas(
            q,
            k,
            v,
            impl="pallas_triton",
            platform="gpu",
            device_kind=H100.device_kind,
            interpret=False,
            activation=activation,
            qk_scale=D**-0.5,
            out_scale=1.0 / tkv,
            q_lengths=q_lengths,
            kv_lengths=kv_lengths,
            window=window,
            causal=causal,
            block_q=None,
            block_kv=None,
        )
        return o.astype(jnp.float32).sum()

    args = (
        jax.ShapeDtypeStruct((B, tq, H, D), dtype),
        jax.ShapeDtypeStruct((B, tkv, H, D), dtype),
        jax.ShapeDtypeStruct((B, tkv, H, D), dtype),
        jax.ShapeDtypeStruct((B,), jnp.int32),
        jax.ShapeDtypeStruct((B,), jnp.int32),
    )
    with lowering_for_gpu(H100):
        lowered = (
            jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
            .trace(*args)
            .lower(lowering_platforms=("cuda",))
        )
    return lowered.as_text()


@pytest.mark.parametrize(
    ("activation", "shape"),
    [(a, SHAPES[i % len(SHAPES)]) for i, a in enumerate(sorted(ACTIVATIONS))],
)
def test_fwd_and_bwd_lower_to_triton(activation, shape):
    hlo = _lowered_fwd_and_bwd(activation, shape, jnp.bfloat16)
    assert hlo.count("__gpu$xla.gpu.triton") == 3  # forward, dK/dV, dQ
    for kernel in ("gdpa_fwd_triton", "gdpa_dkdv_triton", "gdpa_dq_triton"):
        assert kernel in hlo
    # bf16 silu / sigmoid: each kernel's σ is one PTX tanh.approx.f32 (`kernel_tanh`).
    assert hlo.count("tanh.approx.f32") == (3 if activation in SIGMOID_FAMILY else 0)


def test_fp32_inputs_keep_the_exact_activation():
    hlo = _lowered_fwd_and_bwd("silu", SHAPES[0], jnp.float32)
    assert hlo.count("__gpu$xla.gpu.triton") == 3
    assert "tanh.approx" not in hlo
