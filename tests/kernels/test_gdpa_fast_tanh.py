"""σ through a hardware tanh in the GPU GDPA kernels (`activations.kernel_tanh`), on CPU.

On a GPU, silu and sigmoid with 16-bit inputs evaluate σ(x) = ½ + ½·tanh(x/2) with one PTX
tanh.approx.f32 (Pallas Triton, Triton-language and, through approx_math, Mosaic GPU kernels;
the lowering and SASS tests check the instruction is there). The interpreters cannot run it, so
here the kernels get a tanh with its worst-case error instead: the exact tanh scaled by
1 ± 2^-10.987 (the PTX ISA's bound), clipped to [-1, 1], tanh's range. Values and gradients
must stay within the 16-bit tolerances of test_gdpa.py; a tanh 32 times worse must not.
Errors measured when this was written (bf16 / fp16, D=64, α=1): at most 5.2e-3 / 3.0e-3.
"""

from __future__ import annotations

import functools
from unittest import mock

import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.common.activations import (
    SIGMOID_FAMILY,
    TANH_APPROX_MAX_REL_ERROR,
    get_activation,
    kernel_tanh,
)
from pallas_kernels.gdpa import api, gdpa, gdpa_reference, mosaic_gpu
from tests.kernels.helpers import ERROR_SCALE_FLOOR, as_f32, normal_inputs, value_and_grads

TOLERANCE = {"bfloat16": 2e-2, "float16": 5e-3}  # test_gdpa.py's
# (backend, Mosaic GPU arch): the kernels that take a kernel tanh.
KERNELS = [
    ("pallas_triton", None),
    ("pallas_mosaic_gpu", "hopper"),
    ("pallas_mosaic_gpu", "blackwell"),
]
pytestmark = pytest.mark.timeout(600, method="thread")  # Mosaic GPU interpreter: see its tests


def _worst_case_tanh(error: float):
    def tanh(x):
        return jnp.clip(jnp.tanh(x) * (1.0 + error), -1.0, 1.0)

    return tanh


def _errors(backend: str, arch: str | None, activation: str, dtype: str, tanh) -> list[float]:
    """Normalized max errors of O, dQ, dK, dV against the fp32 reference (test_gdpa.py's
    measure), with `tanh` as the kernel tanh."""
    q, k, v, do = normal_inputs(
        3, [(2, 150, 2, 64), (2, 70, 2, 64), (2, 70, 2, 64), (2, 150, 2, 64)], dtype
    )
    kw = dict(activation=activation, out_scale=1 / 70, kv_lengths=jnp.array([70, 33]))
    if backend == "pallas_triton":
        module = api
        kernel = functools.partial(gdpa, backend=backend, block_q=32, block_kv=32, **kw)
    else:
        module = mosaic_gpu
        kernel = functools.partial(mosaic_gpu.gdpa_mosaic_gpu, interpret=True, arch=arch, **kw)
    with mock.patch.object(module, "kernel_tanh", return_value=tanh):
        got = value_and_grads(kernel, q, k, v, do)
    want = value_and_grads(functools.partial(gdpa_reference, **kw), *as_f32(q, k, v, do))
    errors = []
    for g, w in zip((got[0], *got[1]), (want[0], *want[1]), strict=True):
        g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
        errors.append(float(np.abs(g - w).max()) / max(float(np.abs(w).max()), ERROR_SCALE_FLOOR))
    return errors


@pytest.mark.parametrize("activation", SIGMOID_FAMILY)
def test_the_tanh_form_is_the_exact_activation(activation):
    """With an exact tanh the forms agree to fp32 rounding, except that ½ + ½·tanh(x/2)
    rounds σ below ~6e-8 to 0: silu's tail x·σ(x) under x = -16 (below 2e-6) becomes 0."""
    x = jnp.linspace(-30.0, 30.0, 6001)
    exact, tanh_form = get_activation(activation), get_activation(activation, tanh=jnp.tanh)
    for f, g in zip(exact, tanh_form, strict=True):
        np.testing.assert_allclose(g(x), f(x), rtol=2e-6, atol=2e-6)


def test_which_calls_get_the_kernel_tanh():
    def tanh(x):
        return x

    assert kernel_tanh("silu", jnp.bfloat16, tanh) is tanh
    assert kernel_tanh("sigmoid", jnp.float16, tanh) is tanh
    assert kernel_tanh("silu", jnp.float32, tanh) is None  # fp32: exact formulas
    assert kernel_tanh("gelu_tanh", jnp.bfloat16, tanh) is None  # 1 - tanh² would cancel
    assert kernel_tanh("relu", jnp.bfloat16, tanh) is None
    assert get_activation("gelu_tanh", tanh=tanh) == get_activation("gelu_tanh")


@pytest.mark.parametrize(("backend", "arch"), KERNELS)
@pytest.mark.parametrize("activation", SIGMOID_FAMILY)
@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("dtype", sorted(TOLERANCE))
def test_a_worst_case_hardware_tanh_stays_within_tolerance(backend, arch, activation, dtype, sign):
    tanh = _worst_case_tanh(sign * TANH_APPROX_MAX_REL_ERROR)
    errors = _errors(backend, arch, activation, dtype, tanh)
    for name, err in zip(("O", "dQ", "dK", "dV"), errors, strict=True):
        assert err <= TOLERANCE[dtype], f"{name}: {err:.2e}"


def test_a_tanh_32_times_worse_fails_the_tolerance():
    """The check above can fail: the tolerance is not loose enough to hide a bad tanh."""
    tanh = _worst_case_tanh(-32 * TANH_APPROX_MAX_REL_ERROR)  # shrinks |tanh|: never clipped
    errors = _errors("pallas_triton", None, "silu", "bfloat16", tanh)
    assert max(errors) > TOLERANCE["bfloat16"], errors


@pytest.mark.parametrize(
    ("device_kind", "tanh_form"), [("TPU v5 lite", True), ("TPU v6 lite", False)]
)
def test_tpu_kernels_take_the_tanh_form_before_v6(device_kind, tanh_form):
    """Mosaic-TPU kernels evaluate 16-bit silu's σ through tanh (the EUP's vtanh) before v6
    (`common.tpu.sigmoid_via_tanh`; test_tpu_llo.py checks the compiled schedules). Here,
    interpreted with the exact tanh, values and gradients match the reference."""
    q_shape, kv_shape = (1, 40, 1, 128), (1, 24, 1, 128)
    q, k, v, do = normal_inputs(4, [q_shape, kv_shape, kv_shape, q_shape], "bfloat16")
    kw = dict(activation="silu", qk_scale=128**-0.5, out_scale=1 / 24)
    pallas = dict(impl="pallas_tpu", platform="tpu", device_kind=device_kind, interpret=True)
    pallas |= dict(q_lengths=None, kv_lengths=None, window=None, causal=False)
    kernel = functools.partial(api.gdpa_pallas, **pallas, **kw, block_q=16, block_kv=16)
    with mock.patch.object(api, "kernel_tanh", wraps=kernel_tanh) as spy:
        got = value_and_grads(kernel, q, k, v, do)
    assert spy.called == tanh_form
    want = value_and_grads(functools.partial(gdpa_reference, **kw), *as_f32(q, k, v, do))
    for g, w in zip((got[0], *got[1]), (want[0], *want[1]), strict=True):
        g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
        err = float(np.abs(g - w).max()) / max(float(np.abs(w).max()), ERROR_SCALE_FLOOR)
        assert err <= TOLERANCE["bfloat16"], err
