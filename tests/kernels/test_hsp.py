"""Seed-pooling Pallas kernels (TPU-style and Triton-style, interpret mode on CPU).

Ground truth is `seed_pooling_reference` in fp32 on the same (dtype-rounded) inputs; the
reference itself is checked against XLA's `jax.nn.dot_product_attention` and tokamax's XLA
attention on broadcast seeds. Errors are normalized per output (O, dSeeds, dK, dV):
max|x - ref| / max(max|ref|, 1e-2). Tolerances per input dtype, measured worst cases in
parentheses: fp32 1e-4 (4e-7 typical; 2.2e-5 on dSeeds at T = 1, where the softmax over one key
is constant, the exact gradient is 0 and what is left is the fp32 rounding of dP - δ), bf16
2e-2 (6e-3), fp16 5e-3 (8e-4). A leaked padded key, a
skipped tile or a wrong softmax statistic shows up as 1e-2 or more. kv tiles of 16 rows make
every test shape multi-block, so block skipping and ragged edges are exercised.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokamax
from hypothesis import given, settings
from hypothesis import strategies as st

from kunlun_jax.model.hsp import SequenceSummary
from pallas_kernels.common.tiles import BlockSizes
from pallas_kernels.hsp import seed_pooling, seed_pooling_reference
from pallas_kernels.hsp.tuning import default_block_sizes
from tests.kernels.helpers import (
    as_f32,
    assert_close,
    assert_trees_equal,
    normal_inputs,
    poison_padding,
    value_and_grads,
)

KERNELS = ("tpu", "triton")
TOLERANCE = {"float32": 1e-4, "bfloat16": 2e-2, "float16": 5e-3}
BLOCK = 16


def _inputs(seed: int, b: int, t: int, s: int, h: int, d: int, dtype: str):
    """seeds [S, H, D], k, v [B, T, H, D], cotangent dO [B, S, H, D] (numpy RNG: no per-shape
    XLA compiles), standard normal in `dtype`."""
    shapes = ((s, h, d), (b, t, h, d), (b, t, h, d), (b, s, h, d))
    return normal_inputs(seed, shapes, dtype)


_assert_close = functools.partial(assert_close, tolerance=TOLERANCE)


def _check_against_reference(backend: str, inputs, dtype: str, kv_lengths) -> tuple:
    """Kernel vs fp32 reference for O, dSeeds, dK, dV; returns the kernel's (O, grads)."""
    got = value_and_grads(
        lambda s, k, v: seed_pooling(
            s, k, v, kv_lengths=kv_lengths, backend=backend, block_kv=BLOCK
        ),
        *inputs,
    )
    f32 = as_f32(*inputs)
    want = value_and_grads(
        lambda s, k, v: seed_pooling_reference(s, k, v, kv_lengths=kv_lengths), *f32
    )
    _assert_close(got[0], want[0], dtype, "O")
    for name, g, w in zip(("dSeeds", "dK", "dV"), got[1], want[1], strict=True):
        _assert_close(g, w, dtype, name)
    return got


def _assert_padding_exactly_zero(got, kv_lengths) -> None:
    """Rows with no key give O = 0; padded keys get dK = dV = 0, exactly."""
    o, _, dk, dv = (np.asarray(x, np.float32) for x in (got[0], *got[1]))
    for row, n in enumerate(np.asarray(kv_lengths)):
        assert not dk[row, n:].any()
        assert not dv[row, n:].any()
        if n == 0:
            assert not o[row].any()


@st.composite
def _cases(draw):
    b, h = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    t = draw(st.integers(1, 48))
    lengths = draw(
        st.one_of(
            st.none(),
            st.lists(st.sampled_from((0, t, 1, t // 2, min(BLOCK, t))), min_size=b, max_size=b),
            st.lists(st.integers(0, t), min_size=b, max_size=b),
        )
    )
    s = draw(st.sampled_from((1, 5, 16, 24)))
    d = draw(st.sampled_from((32, 64)))
    dtype = draw(st.sampled_from(("float32", "bfloat16")))
    return (draw(st.integers(0, 2**16)), b, t, s, h, d, dtype), lengths


@pytest.mark.parametrize("backend", KERNELS)
@settings(max_examples=4, deadline=None, derandomize=True)
@given(case=_cases())
def test_matches_reference(backend, case):
    (seed, b, t, s, h, d, dtype), lengths = case
    kv_lengths = None if lengths is None else jnp.asarray(lengths, jnp.int32)
    got = _check_against_reference(backend, _inputs(seed, b, t, s, h, d, dtype), dtype, kv_lengths)
    if lengths is not None:
        _assert_padding_exactly_zero(got, lengths)


@pytest.mark.parametrize(
    ("backend", "dtype", "d", "s"),
    [
        ("tpu", "bfloat16", 128, 64),  # lane-dense [B, T, H·D] layout, production seed count
        ("triton", "float16", 96, 20),  # D padded to 128, seeds to 32
        ("tpu", "float16", 96, 20),  # head-major layout, seeds padded to the fp16 tile
        ("triton", "float32", 32, 64),
    ],
)
def test_head_dims_dtypes_and_seed_counts(backend, dtype, d, s):
    lengths = jnp.array([40, 3], jnp.int32)
    _check_against_reference(backend, _inputs(2, 2, 40, s, 2, d, dtype), dtype, lengths)


def test_reference_matches_xla_attention():
    """The reference is softmax attention of the broadcast seeds, as computed by
    jax.nn.dot_product_attention (XLA) and tokamax's XLA implementation: values and grads on
    rows with at least one key (for empty rows those return a uniform average, not 0)."""
    seeds, k, v, do = _inputs(6, 3, 40, 16, 2, 32, "float32")
    lengths = jnp.array([40, 1, 23], jnp.int32)

    def broadcast(fn):
        def pooled(s, k, v):
            q = jnp.broadcast_to(s[None], (k.shape[0], *s.shape))
            return fn(q, k, v)

        return pooled

    candidates = {
        "jax.nn": broadcast(
            lambda q, k, v: jax.nn.dot_product_attention(
                q, k, v, key_value_seq_lengths=lengths, implementation="xla"
            )
        ),
        "tokamax": broadcast(
            lambda q, k, v: tokamax.dot_product_attention(
                q, k, v, key_value_seq_lengths=lengths, implementation="xla"
            )
        ),
        "kernel": lambda s, k, v: seed_pooling(
            s, k, v, kv_lengths=lengths, backend="tpu", block_kv=BLOCK
        ),
    }
    want = value_and_grads(
        lambda s, k, v: seed_pooling_reference(s, k, v, kv_lengths=lengths), seeds, k, v, do
    )
    for name, fn in candidates.items():
        got = value_and_grads(fn, seeds, k, v, do)
        for what, g, w in zip(
            ("O", "dSeeds", "dK", "dV"), jax.tree.leaves(got), jax.tree.leaves(want), strict=True
        ):
            _assert_close(g, w, "float32", f"{name} {what}")


@pytest.mark.parametrize("backend", ["reference", *KERNELS])
def test_padded_keys_contribute_nothing(backend):
    """NaN and ±inf in every padded key and value (inside partially visited tiles, where a
    kernel multiplies masked positions: 0·NaN = NaN, and in fully padded tiles) leave O and
    every gradient bitwise unchanged; an empty row gives O = 0 and dK = dV = 0."""
    lengths = np.array([20, 0, 33])
    kw = dict(kv_lengths=jnp.asarray(lengths, jnp.int32), backend=backend, block_kv=BLOCK)
    seeds, k, v, do = _inputs(3, 3, 64, 8, 1, 32, "float32")

    def fn(s, k, v):
        return seed_pooling(s, k, v, **kw)

    want = value_and_grads(fn, seeds, k, v, do)
    got = value_and_grads(fn, seeds, poison_padding(k, lengths), poison_padding(v, lengths), do)
    assert_trees_equal(got, want)
    _assert_padding_exactly_zero(got, lengths)


@pytest.mark.parametrize("backend", KERNELS)
def test_empty_sequence_gives_zeros(backend):
    seeds, k, v, _ = _inputs(5, 2, 0, 4, 1, 32, "float32")
    out = seed_pooling(seeds, k, v, backend=backend)
    np.testing.assert_array_equal(out, np.zeros((2, 4, 1, 32)))


def test_auto_is_reference_on_cpu_and_pallas_is_tpu_interpret():
    seeds, k, v, _ = _inputs(4, 2, 20, 6, 2, 32, "float32")
    lengths = jnp.array([7, 20], jnp.int32)
    want = seed_pooling_reference(seeds, k, v, kv_lengths=lengths)
    np.testing.assert_array_equal(seed_pooling(seeds, k, v, kv_lengths=lengths), want)
    np.testing.assert_array_equal(
        seed_pooling(seeds, k, v, kv_lengths=lengths, backend="reference"), want
    )
    got = seed_pooling(seeds, k, v, kv_lengths=lengths, backend="pallas")  # default tiles
    _assert_close(got, want, "float32", "O")


def test_sequence_summary_pallas_matches_reference():
    """HSP inside the model: SequenceSummary (seed attention, 'o', SumKronLinear) with the
    kernel in interpret mode gives the reference's summary and parameter gradients."""
    rng = np.random.default_rng(7)
    s = jnp.asarray(rng.standard_normal((3, 20, 64), np.float32))
    lengths = jnp.array([20, 0, 7], jnp.int32)
    ref = SequenceSummary(n_tok=2, d_out=16, num_heads=2, n_seed=6, skl_rank=2)
    pallas = dataclasses.replace(ref, kernels="pallas")
    params = jax.jit(ref.init)(jax.random.key(0), s, lengths)

    def value_and_grad(model):
        return jax.jit(jax.value_and_grad(lambda p: jnp.sum(model.apply(p, s, lengths) ** 2)))(
            params
        )

    want, got = value_and_grad(ref), value_and_grad(pallas)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    for g, w in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1]), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(backend="cuda"), "unknown seed-pooling backend 'cuda'; choose one of"),
        (dict(seeds=jnp.zeros((4, 2 * 32))), r"seeds must have rank 3 \[S, H, D\]"),
        (dict(seeds=jnp.zeros((4, 2, 32), jnp.int32)), "seeds has dtype int32"),
        (dict(seeds=jnp.zeros((4, 3, 32))), r"seeds heads and head dim \(3, 32\) must match"),
        (dict(seeds=jnp.zeros((0, 2, 32))), r"at least one seed"),
        (dict(k=jnp.zeros((2, 8, 32))), "k must have rank 4"),
        (dict(k=jnp.zeros((2, 8, 2, 32), jnp.int32)), "k has dtype int32"),
        (dict(v=jnp.zeros((2, 9, 2, 32))), "k and v must have the same shape"),
        (dict(kv_lengths=jnp.zeros((3,), jnp.int32)), "kv_lengths must be an integer array"),
        (dict(kv_lengths=jnp.array([-1, 8])), r"kv_lengths must lie in \[0, 8\].*\[-1\]"),
        (dict(backend="triton", block_kv=24), "block_kv=24 must be a power of two"),
        (dict(backend="tpu", block_kv=12), "block_kv=12 must be a positive multiple of 8"),
        (
            dict(backend="tpu", seeds=jnp.zeros((300, 2, 32))),
            "300 seeds exceed the tpu kernel's seed tile",
        ),
    ],
)
def test_invalid_arguments(kwargs, message):
    args = dict(seeds=jnp.zeros((4, 2, 32)), k=jnp.zeros((2, 8, 2, 32)), v=jnp.zeros((2, 8, 2, 32)))
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        seed_pooling(args.pop("seeds"), args.pop("k"), args.pop("v"), **args)


@pytest.mark.parametrize("backend", ["reference", "tpu", "triton"])
@pytest.mark.parametrize("shape", [(0, 8, 2, 32), (2, 8, 0, 32), (2, 0, 2, 32)])
def test_empty_inputs_give_zeros_on_every_backend(backend, shape):
    seeds = jnp.ones((4, *shape[2:]))
    kv = jnp.ones(shape)
    out = seed_pooling(seeds, kv, kv, backend=backend)
    assert out.shape == (shape[0], 4, *shape[2:])
    assert not np.any(np.asarray(out))


def test_tuning_table():
    """Device kind and head dim pick the row; block_q is the largest seed tile."""
    assert default_block_sizes("tpu", "TPU v5 lite", 128).block_kv == 1024
    assert default_block_sizes("tpu", "TPU v6 lite", 256).block_kv_bwd == 256
    h100 = default_block_sizes("gpu", "NVIDIA H100 80GB HBM3", 64)
    assert (h100.block_kv, h100.num_stages) == (128, 3)
    assert default_block_sizes("gpu", "NVIDIA A100-SXM4-80GB", 128).num_warps == 4
    assert default_block_sizes("cpu", "cpu", 64) == BlockSizes(256, 64, 256, 64)
