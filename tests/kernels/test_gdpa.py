"""GDPA Pallas kernels (TPU-style and Triton-style, interpret mode on CPU) against the reference.

Ground truth is `gdpa_reference` in fp32 on the same (dtype-rounded) inputs. Errors are
normalized per output (O, dQ, dK, dV): max|x - ref| / max(max|ref|, 1e-2). Tolerances per
input dtype, measured worst cases in parentheses:
    fp32 1e-4 (2e-7 typical, 2e-5 where GELU cancels), bf16 2e-2 (5e-3), fp16 5e-3 (6e-4).
fp32 cannot be tighter: GELU and GELU-tanh cancel in 1 + erf (1 + tanh) for negative scores,
where fp32 itself is only ~2e-5 accurate (at s = -2.74 fp32 gives -0.00851677, fp64
-0.00851661), and the floor keeps outputs that cancel to ~0 from turning that rounding into
large relative errors. Real bugs (a leaked mask entry, a skipped tile, a wrong scale) show up
as errors of order 1e-2 or more.
Tiles of 16 rows make every test shape multi-block, so skipping and ragged edges are exercised.
"""

from __future__ import annotations

import functools
import sys
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pallas_kernels.common.activations import ACTIVATIONS
from pallas_kernels.gdpa import gdpa, gdpa_reference, jax_triton_op, triton_vjp
from pallas_kernels.gdpa.tuning import SHORT_KV_MAX, BlockSizes, default_block_sizes, dkdv_q_splits
from tests.kernels.helpers import (
    as_f32,
    assert_close,
    assert_outputs_close,
    assert_padding_exactly_zero,
    assert_trees_equal,
    fp16_overflow_case,
    normal_inputs,
    poison_padding,
    value_and_grads,
)

PALLAS = ("pallas_tpu", "pallas_triton")
KERNELS = (*PALLAS, "jax_triton")  # + the Triton-language kernels, in Triton's interpreter
TOLERANCE = {"float32": 1e-4, "bfloat16": 2e-2, "float16": 5e-3}
BLOCK = 16


def _inputs(seed: int, b: int, tq: int, tkv: int, h: int, d: int, dtype: str):
    """q, do [B, Tq, H, D] and k, v [B, Tkv, H, D], standard normal, in `dtype` (numpy RNG:
    no per-shape XLA compiles)."""
    shapes = ((b, tq, h, d), (b, tkv, h, d), (b, tkv, h, d), (b, tq, h, d))
    return normal_inputs(seed, shapes, dtype)


_assert_close = functools.partial(assert_close, tolerance=TOLERANCE)


def _check_against_reference(backend: str, inputs, dtype: str, **kw) -> tuple:
    """Kernel vs fp32 reference for O, dQ, dK, dV; returns the kernel's (O, grads)."""
    q, k, v, do = inputs
    got = value_and_grads(
        lambda q, k, v: gdpa(q, k, v, backend=backend, block_q=BLOCK, block_kv=BLOCK, **kw),
        q,
        k,
        v,
        do,
    )
    want = value_and_grads(lambda q, k, v: gdpa_reference(q, k, v, **kw), *as_f32(q, k, v, do))
    _assert_close(got[0], want[0], dtype, "O")
    for name, g, w in zip(("dQ", "dK", "dV"), got[1], want[1], strict=True):
        _assert_close(g, w, dtype, name)
    return got


@st.composite
def _cases(draw, max_tq: int = 40):
    b, h = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    tq = draw(st.integers(1, max_tq))
    tkv = tq if draw(st.booleans()) else draw(st.integers(1, 40))

    def lengths(t):
        return draw(st.one_of(st.none(), st.lists(st.integers(0, t), min_size=b, max_size=b)))

    d = draw(st.sampled_from((32, 64)))
    kw = dict(
        activation=draw(st.sampled_from(sorted(ACTIVATIONS))),
        qk_scale=draw(st.sampled_from((1.0, d**-0.5))),
        out_scale=draw(st.sampled_from((1.0, 1.0 / tkv))),
        q_lengths=lengths(tq),
        kv_lengths=lengths(tkv),
        window=draw(st.one_of(st.none(), st.integers(0, 4), st.integers(40, 60))),
        causal=draw(st.booleans()),
    )
    dtype = draw(st.sampled_from(("float32", "bfloat16")))
    return (draw(st.integers(0, 2**16)), b, tq, tkv, h, d, dtype), kw


@pytest.mark.parametrize("backend", KERNELS)
@settings(max_examples=8, deadline=None, derandomize=True)
@given(case=_cases())
def test_matches_reference(backend, case):
    (seed, b, tq, tkv, h, d, dtype), kw = case
    lengths = {n: kw[n] for n in ("q_lengths", "kv_lengths")}
    kw.update({n: None if x is None else jnp.asarray(x, jnp.int32) for n, x in lengths.items()})
    got = _check_against_reference(backend, _inputs(seed, b, tq, tkv, h, d, dtype), dtype, **kw)
    assert_padding_exactly_zero(got, **lengths)


# 9 query blocks in 2 splits of 5, a full and a jagged row, causal.
_SPLIT_EXAMPLE = (
    (7, 2, 130, 20, 1, 32, "float32"),
    dict(
        activation="silu",
        qk_scale=1.0,
        out_scale=0.05,
        q_lengths=[130, 70],
        kv_lengths=None,
        window=None,
        causal=True,
    ),
)


@pytest.mark.parametrize("backend", ["pallas_triton", "jax_triton"])
@settings(max_examples=6, deadline=None, derandomize=True)
@given(case=_cases(max_tq=130), splits=st.integers(2, 4))
@example(case=_SPLIT_EXAMPLE, splits=2)
def test_triton_dkdv_query_splits(backend, case, splits):
    """The Triton dK/dV grids split over query ranges (fp32 partials summed after) give the
    reference's gradients: splits of several query blocks (up to 9 blocks of 16 here), and
    more splits than blocks (empty splits). Real shapes only split at >= 8 query blocks a
    split (`dkdv_q_splits`), so the count is forced here."""
    (seed, b, tq, tkv, h, d, dtype), kw = case[0], dict(case[1])
    lengths = {n: kw[n] for n in ("q_lengths", "kv_lengths")}
    kw.update({n: None if x is None else jnp.asarray(x, jnp.int32) for n, x in lengths.items()})
    module = triton_vjp if backend == "pallas_triton" else jax_triton_op
    with mock.patch.object(module, "dkdv_q_splits", return_value=splits):
        got = _check_against_reference(backend, _inputs(seed, b, tq, tkv, h, d, dtype), dtype, **kw)
    assert_padding_exactly_zero(got, **lengths)


def test_dkdv_query_splits_fill_the_gpu_only_when_the_kv_tiles_do_not():
    # Short-K/V GDPA on 4 x 8 heads: one kv tile each, 64 query blocks -> 8 splits (>= 8 blocks).
    assert dkdv_q_splits(kv_programs=32, q_blocks=64) == 8
    assert dkdv_q_splits(kv_programs=32, q_blocks=1024) == 9  # ceil(264 / 32)
    assert dkdv_q_splits(kv_programs=32, q_blocks=15) == 1  # too short to split
    assert dkdv_q_splits(kv_programs=512, q_blocks=64) == 1  # enough kv tiles


@pytest.mark.parametrize(
    ("activation", "backend"),
    [(a, KERNELS[i % len(KERNELS)]) for i, a in enumerate(sorted(ACTIVATIONS))],
)
def test_every_activation(activation, backend):
    """Ragged lengths (incl. 0), window and causal together, each activation once."""
    kw = dict(
        activation=activation,
        qk_scale=0.5,
        out_scale=0.25,
        q_lengths=jnp.array([37, 9], jnp.int32),
        kv_lengths=jnp.array([0, 30], jnp.int32),
        window=6,
        causal=True,
    )
    _check_against_reference(backend, _inputs(1, 2, 37, 33, 2, 32, "float32"), "float32", **kw)


@pytest.mark.parametrize(
    ("backend", "dtype", "d"),
    [
        ("pallas_tpu", "bfloat16", 128),
        ("pallas_triton", "float32", 128),
        ("pallas_tpu", "float16", 96),
        ("pallas_triton", "bfloat16", 96),
        ("jax_triton", "float16", 96),
        ("jax_triton", "bfloat16", 128),
    ],
)
def test_head_dims_and_dtypes(backend, dtype, d):
    """D=128 (TPU: lane-dense reshape layout), D=96 (TPU: head-major layout; Pallas Triton: D
    padded to 128; jax_triton: lanes past 96 masked), cross-attention shape, fp16."""
    kw = dict(activation="silu", qk_scale=d**-0.5, out_scale=1 / 24, kv_lengths=jnp.array([24, 5]))
    _check_against_reference(backend, _inputs(2, 2, 40, 24, 2, d, dtype), dtype, **kw)


@pytest.mark.parametrize("backend", KERNELS)
def test_fp16_tiles_are_scaled_before_their_cast(backend):
    """fp16 tiles of Act(α·S) and dS that would overflow before out_scale: the kernels apply
    β (αβ for dS) to the fp32 tile before casting it to fp16, as the reference applies β
    before its cast, so O and the gradients are finite and match the reference."""
    inputs, kw = fp16_overflow_case(11, (2, 40, 1, 32))
    _check_against_reference(backend, inputs, "float16", **kw)


@pytest.mark.parametrize("backend", ["reference", *KERNELS])
def test_masked_positions_contribute_nothing(backend):
    """Sigmoid(0) = 0.5, so any leak of a masked position would show. NaN and ±inf in every
    row past the lengths of q, k, v and dO (inside partially visited tiles, where a kernel
    multiplies masked positions: 0·NaN = NaN, and in fully padded tiles) leave O and all
    gradients bitwise unchanged, and padded rows of O, dQ, dK, dV are exactly zero."""
    q_lengths, kv_lengths = np.array([35, 3]), np.array([20, 0])
    kw = dict(
        activation="sigmoid",
        q_lengths=jnp.asarray(q_lengths, jnp.int32),
        kv_lengths=jnp.asarray(kv_lengths, jnp.int32),
        backend=backend,
        block_q=BLOCK,
        block_kv=BLOCK,
    )
    clean = _inputs(3, 2, 40, 40, 1, 32, "float32")

    q, k, v, do = clean
    want = value_and_grads(lambda *a: gdpa(*a, **kw), *clean)
    got = value_and_grads(
        lambda *a: gdpa(*a, **kw),
        poison_padding(q, q_lengths),
        poison_padding(k, kv_lengths),
        poison_padding(v, kv_lengths),
        poison_padding(do, q_lengths),
    )
    assert_trees_equal(got, want)
    assert_padding_exactly_zero(got, q_lengths, kv_lengths)
    lengths = dict(q_lengths=kw["q_lengths"], kv_lengths=kw["kv_lengths"])
    _assert_close(want[0], gdpa_reference(q, k, v, activation="sigmoid", **lengths), "float32", "O")


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [30, 37])
@pytest.mark.parametrize("backend", KERNELS)
def test_wholly_visible_tiles_inside_a_window(backend, window, causal):
    """A window of several blocks leaves tiles that are wholly visible (where the kernels skip
    the mask, `blocks.unmasked_*_block_range`) between masked ones on both sides, and ragged
    lengths end the band inside a block: the mask must still apply everywhere else. With
    window = 2·16 - 2 a tile one position too far out of the band would be taken as wholly
    visible by an off-by-one."""
    kw = dict(
        activation="sigmoid",  # sigmoid(0) = 0.5: a dropped mask shows
        q_lengths=jnp.array([100, 83], jnp.int32),
        kv_lengths=jnp.array([97, 100], jnp.int32),
        window=window,
        causal=causal,
    )
    _check_against_reference(backend, _inputs(6, 2, 100, 100, 1, 32, "float32"), "float32", **kw)


@pytest.mark.parametrize(("d", "heads"), [(32, 2), (128, 4)])  # [B, H, T, D], [B, T, H·D]
def test_tpu_kernels_take_several_heads_per_step(d, heads):
    """pallas_tpu with several heads per grid step (one step's tiles hold them all, with an
    accumulator per head) against the reference: ragged lengths, a causal window, 4 heads of
    distinct values, so a head reading or writing another's slice shows."""
    kw = dict(
        activation="silu",
        q_lengths=jnp.array([40, 23], jnp.int32),
        kv_lengths=jnp.array([37, 40], jnp.int32),
        window=20,
        causal=True,
    )
    q, k, v, do = _inputs(8, 2, 40, 40, 4, d, "float32")
    tiles = dict(block_q=BLOCK, block_kv=BLOCK, heads_per_step=heads)
    got = value_and_grads(lambda *a: gdpa(*a, backend="pallas_tpu", **tiles, **kw), q, k, v, do)
    want = value_and_grads(lambda *a: gdpa_reference(*a, **kw), q, k, v, do)
    assert_outputs_close(got, want, "float32", tolerance=TOLERANCE)


@pytest.mark.parametrize("backend", KERNELS)
def test_empty_sequences(backend):
    q, k, v, _ = _inputs(5, 2, 8, 0, 1, 32, "float32")
    out, grads = value_and_grads(lambda *a: gdpa(*a, backend=backend), q, k, v, jnp.ones_like(q))
    np.testing.assert_array_equal(out, np.zeros(q.shape))
    np.testing.assert_array_equal(grads[0], np.zeros(q.shape))
    assert gdpa(k, q, q, backend=backend, window=np.int64(2)).shape == k.shape


def test_auto_is_reference_on_cpu_and_pallas_is_tpu_interpret():
    q, k, v, _ = _inputs(4, 1, 20, 12, 2, 32, "float32")
    kw = dict(activation="gelu", window=3, kv_lengths=jnp.array([7]))
    want = gdpa_reference(q, k, v, **kw)
    np.testing.assert_array_equal(gdpa(q, k, v, backend="auto", **kw), want)
    np.testing.assert_array_equal(gdpa(q, k, v, backend="reference", **kw), want)
    got = gdpa(q, k, v, backend="pallas", **kw)  # default tiles, shrunk to the lengths
    _assert_close(got, want, "float32", "O")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(backend="cuda"), "unknown GDPA backend 'cuda'; choose one of"),
        (dict(activation="softmax"), "unknown GDPA activation 'softmax'; choose one of"),
        (dict(q=jnp.zeros((2, 8, 32))), "q must have rank 4"),
        (dict(k=jnp.zeros((2, 8, 2, 64))), "k and v must have the same shape"),
        (dict(v=jnp.zeros((2, 9, 2, 32))), "k and v must have the same shape"),
        (dict(k=jnp.zeros((3, 8, 2, 32)), v=jnp.zeros((3, 8, 2, 32))), "k/v batch, heads"),
        (dict(q=jnp.zeros((2, 8, 2, 32), jnp.int32)), "q has dtype int32"),
        (dict(v=jnp.zeros((2, 8, 2, 32), jnp.bfloat16)), "q, k, v must share one dtype"),
        (dict(q_lengths=jnp.zeros((3,), jnp.int32)), "q_lengths must be an integer array"),
        (dict(kv_lengths=jnp.zeros((2,))), "kv_lengths must be an integer array"),
        (dict(window=-1), "window must be a non-negative int"),
        (dict(window=2.5), "window must be a non-negative int"),
        (dict(causal="False"), r"causal must be a Python bool \(True or False\)"),
        (dict(causal=np.bool_(True)), "got np.True_ of type numpy.bool"),
        (dict(window=2**40), r"window must be at most 2147483647 \(int32\)"),
        (dict(activation=["silu"]), r"unknown GDPA activation \['silu'\]"),
        (dict(q_lengths=[8, 8]), r"q_lengths must be an integer array of shape \(2,\), got \[8"),
        (dict(q_lengths=jnp.array([100, -3])), r"q_lengths must lie in \[0, 8\].*\[100, -3\]"),
        (
            dict(kv_lengths=jnp.array([2**32 - 1, 8], jnp.uint32)),
            r"kv_lengths must lie in \[0, 8\].*\[4294967295\]",
        ),
        (dict(kv_lengths=np.array([8, 9])), r"kv_lengths must lie in \[0, 8\].*\[9\]"),
        (dict(out_scale=float("inf")), "out_scale must be finite"),
        (dict(qk_scale=float("nan")), "qk_scale must be finite"),
        (dict(qk_scale=jnp.float32(0.5)), r"qk_scale must be a Python number \(static\)"),
        (dict(backend="pallas_tpu", heads_per_step=True), "heads_per_step must be a positive"),
        (dict(backend="pallas_triton", block_q=24), "block_q=24 must be a power of two"),
        (dict(backend="pallas_tpu", block_kv=12), "block_kv=12 must be a positive multiple of 8"),
        (
            dict(backend="pallas_tpu", **{n: jnp.zeros((2, 8, 2, 16)) for n in "qkv"}),
            r"head dim D=16 outside",
        ),
    ],
)
def test_invalid_arguments(kwargs, message):
    args = dict(q=jnp.zeros((2, 8, 2, 32)), k=jnp.zeros((2, 8, 2, 32)), v=jnp.zeros((2, 8, 2, 32)))
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        gdpa(args.pop("q"), args.pop("k"), args.pop("v"), **args)


@pytest.mark.parametrize("backend", ["reference", "pallas_tpu"])
def test_traced_lengths_are_clipped(backend):
    """Under jit the lengths are tracers, whose values no check can see: out of [0, T] they
    are clipped to it, as documented (a uint32 above 2³¹ too: clipped before any int32 cast)."""
    q, k, v, _ = _inputs(5, 2, 8, 8, 1, 32, "float32")
    kw = dict(activation="silu", backend=backend, block_q=BLOCK, block_kv=BLOCK)
    got = jax.jit(lambda ql, kl: gdpa(q, k, v, q_lengths=ql, kv_lengths=kl, **kw))(
        jnp.array([100, -3]), jnp.array([2**32 - 1, 9], jnp.uint32)
    )
    want = gdpa(q, k, v, q_lengths=jnp.array([8, 0]), kv_lengths=jnp.array([8, 8]), **kw)
    assert_trees_equal(got, want)


@pytest.mark.parametrize("backend", ["reference", *KERNELS])
@pytest.mark.parametrize("shape", [(0, 8, 2, 32), (2, 8, 0, 32), (2, 0, 2, 32)])
def test_empty_inputs_give_zeros_on_every_backend(backend, shape):
    """No batch, no heads or no keys: a zero output of q's shape, as the reference gives."""
    q = jnp.ones((*shape[:1], 5, *shape[2:]))
    kv = jnp.ones(shape)
    out = gdpa(q, kv, kv, activation="sigmoid", backend=backend)
    assert out.shape == q.shape
    assert not np.any(np.asarray(out))


def test_the_model_op_layer_checks_inputs_on_the_reference_path_too():
    from pallas_kernels import ops

    q = jnp.zeros((2, 8, 2, 32))
    with pytest.raises(ValueError, match="window must be a non-negative int"):
        ops.gdpa(q, q, q, activation="silu", window=-1)
    with pytest.raises(ValueError, match="q, k, v must share one dtype"):
        ops.attention(q.astype(jnp.bfloat16), q, q)
    with pytest.raises(ValueError, match="seeds heads and head dim"):
        ops.seed_pooling(jnp.zeros((4, 1, 32)), q, q)


def test_tuning_table():
    """Device kind, head dim and Tkv regime pick the row; explicit tiles override fwd and bwd."""
    short = default_block_sizes("tpu", "TPU v5 lite", 128, 64)
    long_ = default_block_sizes("tpu", "TPU v6 lite", 128, 4096)
    assert (short.block_q, long_.block_q) == (1024, 512)
    assert (short.heads, long_.heads) == (8, 8)
    # v5e / v6e raise the scoped-VMEM limit for 8 heads a step; v5p (64 MiB) keeps the default.
    assert (short.vmem_limit_mib, long_.vmem_limit_mib) == (64, 64)
    v5p = default_block_sizes("tpu", "TPU v5", 128, 64)
    assert (v5p.heads, v5p.vmem_limit_mib) == (4, None)
    # D = 256: D = 128's tiles; 4 heads in the raised limit on v5e / v6e, else 2.
    for tkv, block_q in ((64, 1024), (4096, 512)):
        v5e, other = (default_block_sizes("tpu", kind, 256, tkv) for kind in ("TPU v5 lite", ""))
        assert (v5e.block_q, v5e.heads, v5e.vmem_limit_mib) == (block_q, 4, 64)
        assert (other.block_q, other.heads, other.vmem_limit_mib) == (block_q, 2, None)
    h100_long = default_block_sizes("gpu", "NVIDIA H100 80GB HBM3", 128, SHORT_KV_MAX + 1)
    # Hopper's 64-row backward tiles take one warpgroup (two would repeat the MMAs).
    assert h100_long.triton_options(backward=False) == (8, 3)
    assert h100_long.triton_options(backward=True) == (4, 2)
    d64 = default_block_sizes("gpu", "NVIDIA H100 80GB HBM3", 64, 4096)
    assert d64.triton_options(backward=False) == d64.triton_options(backward=True) == (4, 3)
    assert default_block_sizes("cpu", "cpu", 64, 64) == BlockSizes(64, 64, 64, 64)
    assert short.with_overrides(256, None) == BlockSizes(
        256, 256, 256, 256, heads=8, vmem_limit_mib=64
    )
    assert short.with_heads(2).heads == 2
    assert short.with_heads(None) == short


def test_jax_triton_without_triton_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` raises ImportError
    q, k, v, _ = _inputs(0, 1, 8, 8, 1, 32, "float32")
    with pytest.raises(ImportError, match=r"backend='jax_triton'.*needs the triton package"):
        gdpa(q, k, v, backend="jax_triton")
