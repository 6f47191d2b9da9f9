"""The GPU kernels compiled and run on a CUDA GPU, values and gradients vs the references.

CPU CI cannot compile them (PTX needs the CUDA toolchain), so these tests skip there; on a GPU
machine run them with

    KUNLUN_TEST_PLATFORMS=cuda python -m pytest -m gpu tests/kernels/test_on_gpu.py

Shapes cover both GDPA regimes (self-attention with window / causal, and the short-K/V
personalized FFN), ragged lengths including 0, and padding poisoned with large values.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.gdpa import gdpa, gdpa_reference
from pallas_kernels.hsp.api import seed_pooling
from pallas_kernels.hsp.reference import seed_pooling_reference
from pallas_kernels.swa.api import swa_attention
from pallas_kernels.swa.reference import attention_reference
from tests.kernels.helpers import as_f32, assert_close, normal_inputs, value_and_grads

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        jax.devices()[0].platform != "gpu",
        reason="needs a CUDA GPU: run with KUNLUN_TEST_PLATFORMS=cuda on a GPU machine",
    ),
]
TOLERANCE = {"bfloat16": 2e-2, "float16": 5e-3}
B, H = 3, 4
LENGTHS = (0, 37, None)  # a row with nothing, a ragged one, a full one (None = T)
GDPA_CASES = [  # (Tq, Tkv, D, window, causal, activation)
    (1024, 1024, 128, None, False, "silu"),
    (1000, 1000, 128, 128, True, "gelu"),
    (1024, 64, 128, None, False, "sigmoid"),
    (777, 16, 64, None, False, "relu2"),
]


def _lengths(t: int) -> jax.Array:
    return jnp.array([t if n is None else min(n, t) for n in LENGTHS], jnp.int32)


def _inputs(tq: int, tkv: int, dim: int, dtype: str, kv_lens: jax.Array):
    q, k, v, do = normal_inputs(
        tq + tkv, [(B, tq, H, dim), (B, tkv, H, dim), (B, tkv, H, dim), (B, tq, H, dim)], dtype
    )
    # Padded keys and values hold large values: they must contribute exactly nothing.
    real = np.arange(tkv)[None, :, None, None] < np.asarray(kv_lens)[:, None, None, None]
    return q, jnp.where(real, k, 1e3).astype(dtype), jnp.where(real, v, 1e3).astype(dtype), do


@pytest.mark.parametrize("backend", ["pallas_triton", "pallas_mosaic_gpu", "jax_triton"])
@pytest.mark.parametrize("case", GDPA_CASES)
@pytest.mark.parametrize("dtype", sorted(TOLERANCE))
def test_gdpa_kernels_match_the_reference(backend, case, dtype):
    tq, tkv, dim, window, causal, activation = case
    kwargs = dict(
        activation=activation,
        qk_scale=dim**-0.5,
        out_scale=1.0 / tkv,
        q_lengths=_lengths(tq),
        kv_lengths=_lengths(tkv),
        window=window,
        causal=causal,
    )
    q, k, v, do = _inputs(tq, tkv, dim, dtype, kwargs["kv_lengths"])
    kernel = functools.partial(gdpa, backend=backend, **kwargs)
    got, got_grads = value_and_grads(kernel, q, k, v, do)
    want, want_grads = value_and_grads(
        functools.partial(gdpa_reference, **kwargs), *as_f32(q, k, v), do.astype(jnp.float32)
    )
    assert_close(got, want, dtype, "O", tolerance=TOLERANCE)
    for name, g, w in zip(("dQ", "dK", "dV"), got_grads, want_grads, strict=True):
        assert_close(g, w, dtype, name, tolerance=TOLERANCE)


@pytest.mark.parametrize("backend", ["tokamax_mosaic", "tokamax_triton", "jax_triton"])
@pytest.mark.parametrize("causal", [False, True])
def test_swa_kernels_match_the_reference(backend, causal):
    t, dim, window = 1024, 128, 128
    lens = _lengths(t)
    kwargs = dict(q_lengths=lens, kv_lengths=lens, window=window, causal=causal)
    q, k, v, do = _inputs(t, t, dim, "bfloat16", lens)
    got, got_grads = value_and_grads(
        functools.partial(swa_attention, backend=backend, **kwargs), q, k, v, do
    )
    want, want_grads = value_and_grads(
        functools.partial(attention_reference, scale=dim**-0.5, **kwargs),
        *as_f32(q, k, v),
        do.astype(jnp.float32),
    )
    assert_close(got, want, "bfloat16", "O", tolerance=TOLERANCE)
    for name, g, w in zip(("dQ", "dK", "dV"), got_grads, want_grads, strict=True):
        assert_close(g, w, "bfloat16", name, tolerance=TOLERANCE)


def test_seed_pooling_triton_kernel_matches_the_reference():
    t, dim, num_seeds = 1100, 128, 64
    lens = _lengths(t)
    (seeds,) = normal_inputs(0, [(num_seeds, H, dim)], "bfloat16")
    _, k, v, _ = _inputs(8, t, dim, "bfloat16", lens)
    (do,) = normal_inputs(1, [(B, num_seeds, H, dim)], "bfloat16")
    got, got_grads = value_and_grads(
        functools.partial(seed_pooling, kv_lengths=lens, backend="triton"), seeds, k, v, do
    )
    want, want_grads = value_and_grads(
        functools.partial(seed_pooling_reference, kv_lengths=lens),
        *as_f32(seeds, k, v),
        do.astype(jnp.float32),
    )
    assert_close(got, want, "bfloat16", "pooled", tolerance=TOLERANCE)
    for name, g, w in zip(("dSeeds", "dK", "dV"), got_grads, want_grads, strict=True):
        assert_close(g, w, "bfloat16", name, tolerance=TOLERANCE)
