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
from pallas_kernels.common.gpu_lowering import triton_calls
from pallas_kernels.gdpa.api import gdpa_pallas
from pallas_kernels.gdpa.tuning import default_block_sizes
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


def _lowered_fwd_and_bwd(activation: str, shape, dtype) -> jax.stages.Lowered:
    """value_and_grad of a pallas_triton GDPA lowered for an H100."""
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
        return (
            jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
            .trace(*args)
            .lower(lowering_platforms=("cuda",))
        )


@pytest.mark.parametrize(
    ("activation", "shape"),
    [(a, SHAPES[i % len(SHAPES)]) for i, a in enumerate(sorted(ACTIVATIONS))],
)
def test_fwd_and_bwd_lower_to_triton(activation, shape):
    hlo = _lowered_fwd_and_bwd(activation, shape, jnp.bfloat16).as_text()
    assert hlo.count("__gpu$xla.gpu.triton") == 3  # forward, dK/dV, dQ
    for kernel in ("gdpa_fwd_triton", "gdpa_dkdv_triton", "gdpa_dq_triton"):
        assert kernel in hlo
    # bf16 silu / sigmoid: each kernel's σ is one PTX tanh.approx.f32 (`kernel_tanh`).
    assert hlo.count("tanh.approx.f32") == (3 if activation in SIGMOID_FAMILY else 0)


def test_fp32_inputs_keep_the_exact_activation():
    hlo = _lowered_fwd_and_bwd("silu", SHAPES[0], jnp.float32).as_text()
    assert hlo.count("__gpu$xla.gpu.triton") == 3
    assert "tanh.approx" not in hlo


def test_triton_calls_hold_each_kernels_ir_and_launch():
    """`gpu_lowering.triton_calls` reads back what XLA's Triton gets: each kernel's TTIR as
    text, with the H100 D=128 long-Tkv row's warps and stages and the grid of its tiles."""
    tq, tkv = SHAPES[0][:2]
    sizes = default_block_sizes("gpu", H100.device_kind, D, tkv, "pallas_triton")
    calls = {c.name: c for c in triton_calls(_lowered_fwd_and_bwd("silu", SHAPES[0], jnp.bfloat16))}
    assert set(calls) == {"gdpa_fwd_triton", "gdpa_dkdv_triton", "gdpa_dq_triton"}
    fwd, dkdv, dq = calls["gdpa_fwd_triton"], calls["gdpa_dkdv_triton"], calls["gdpa_dq_triton"]
    assert (fwd.num_warps, fwd.num_stages) == sizes.triton_options(backward=False)
    for bwd in (dkdv, dq):
        assert (bwd.num_warps, bwd.num_stages) == sizes.triton_options(backward=True)
    assert fwd.grid == (tq // sizes.block_q, B * H, 1)
    assert dq.grid == (tq // sizes.block_q_bwd, B * H, 1)
    assert dkdv.grid[:2] == (tkv // sizes.block_kv_bwd, B * H)
    for name, call in calls.items():
        assert call.ttir.startswith(f"module @{name}"), name
        assert "tt.func public" in call.ttir, name
        assert "tt.dot" in call.ttir, name
