"""SWA: our kernels (pallas_tpu in Pallas interpret mode, jax_triton in Triton's interpreter on
CPU) and tokamax's XLA path against the reference, `jax.nn.dot_product_attention`, the
block-skipping grids and the dispatch.

Ground truth is `attention_reference` in fp32 on the same (dtype-rounded) inputs. Errors are
normalized per output (O, dQ, dK, dV): max|x - ref| / max(max|ref|, 1e-2). Tolerances per
input dtype, measured worst cases in parentheses: fp32 5e-4 (1e-6 typical; 2e-4 for dQ of
rows that see a single key, window 0, where dQ = P ⊙ (dP - δ) cancels to exactly 0 and fp32
leaves ~2e-6), bf16 2e-2 (5e-3), fp16 5e-3 (8e-4): bf16 / fp16 kernels feed P and dS to the
MXU in the input dtype. A leaked masked key, a skipped tile or a wrong softmax statistic
shows up as 1e-2 or more.
Tiles of 16 rows make every test shape multi-block, so skipping and ragged edges are exercised.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pallas_kernels import ops
from pallas_kernels.common import blocks
from pallas_kernels.common.masks import attention_mask, rows_with_keys
from pallas_kernels.common.tiles import BlockSizes
from pallas_kernels.common.tpu import TileGrid, heads_per_step
from pallas_kernels.swa import attention_reference, swa_attention
from pallas_kernels.swa.tokamax_gpu import gpu_implementation, local_window
from pallas_kernels.swa.tuning import default_block_sizes
from tests.kernels.helpers import (
    as_f32,
    assert_close,
    assert_outputs_close,
    assert_trees_equal,
    normal_inputs,
    poison_padding,
    value_and_grads,
)

TOLERANCE = {"float32": 5e-4, "bfloat16": 2e-2, "float16": 5e-3}
BLOCK = 16
KERNELS = ("pallas_tpu", "jax_triton")


def _inputs(seed: int, b: int, tq: int, tkv: int, h: int, d: int, dtype: str):
    """q, do [B, Tq, H, D] and k, v [B, Tkv, H, D], standard normal, in `dtype` (numpy RNG:
    no per-shape XLA compiles)."""
    shapes = ((b, tq, h, d), (b, tkv, h, d), (b, tkv, h, d), (b, tq, h, d))
    return normal_inputs(seed, shapes, dtype)


_assert_close = functools.partial(assert_close, tolerance=TOLERANCE)


def _check_against_reference(backend: str, inputs, dtype: str, **kw) -> tuple:
    """Backend vs fp32 reference for O, dQ, dK, dV; returns the backend's (O, grads)."""
    q, k, v, do = inputs
    blocks_kw = dict(block_q=BLOCK, block_kv=BLOCK) if backend in KERNELS else {}
    got = value_and_grads(
        lambda q, k, v: swa_attention(q, k, v, backend=backend, **blocks_kw, **kw), q, k, v, do
    )
    want = value_and_grads(lambda q, k, v: attention_reference(q, k, v, **kw), *as_f32(q, k, v, do))
    _assert_close(got[0], want[0], dtype, "O")
    for name, g, w in zip(("dQ", "dK", "dV"), got[1], want[1], strict=True):
        _assert_close(g, w, dtype, name)
    return got


def _assert_empty_rows_exactly_zero(got, q_lengths, kv_lengths, window) -> None:
    """Rows that see no key have O = dQ = 0 exactly; padded key rows have dK = dV = 0."""
    o, dq, dk, dv = (np.asarray(x, np.float32) for x in (got[0], *got[1]))
    b, tq = o.shape[:2]
    lens = dict(q_lengths=q_lengths, kv_lengths=kv_lengths, window=window)
    empty = ~np.asarray(rows_with_keys(b, tq, dk.shape[1], **lens))
    assert not o[empty].any()
    assert not dq[empty].any()
    if kv_lengths is not None:
        for row, n in enumerate(np.asarray(kv_lengths)):
            assert not dk[row, n:].any()
            assert not dv[row, n:].any()


@st.composite
def _cases(draw, max_t: int = 40):
    b, h = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    tq = draw(st.integers(1, max_t))
    tkv = tq if draw(st.booleans()) else draw(st.integers(1, max_t))

    def lengths(t):
        return draw(st.one_of(st.none(), st.lists(st.integers(0, t), min_size=b, max_size=b)))

    kw = dict(
        q_lengths=lengths(tq),
        kv_lengths=lengths(tkv),
        window=draw(st.one_of(st.none(), st.integers(0, 4), st.integers(max_t, max_t + 20))),
        causal=draw(st.booleans()),
        scale=draw(st.sampled_from((None, 0.3))),
    )
    kw.update({n: None if kw[n] is None else jnp.asarray(kw[n], jnp.int32) for n in _LENGTHS})
    d = draw(st.sampled_from((32, 64)))
    dtype = draw(st.sampled_from(("float32", "bfloat16")))
    return (draw(st.integers(0, 2**16)), b, tq, tkv, h, d, dtype), kw


_LENGTHS = ("q_lengths", "kv_lengths")


@pytest.mark.parametrize("backend", KERNELS)
@settings(max_examples=6, deadline=None, derandomize=True)
@given(case=_cases())
def test_kernels_match_reference(backend, case):
    (seed, b, tq, tkv, h, d, dtype), kw = case
    got = _check_against_reference(backend, _inputs(seed, b, tq, tkv, h, d, dtype), dtype, **kw)
    _assert_empty_rows_exactly_zero(got, kw["q_lengths"], kw["kv_lengths"], kw["window"])


@settings(max_examples=4, deadline=None, derandomize=True)
@given(case=_cases(max_t=24))
def test_tokamax_xla_matches_reference(case):
    """tokamax's XLA attention with our window mapping (`local_window`) and row masking: the
    same mask and values as the reference (its Pallas kernels refuse CPU)."""
    (seed, b, tq, tkv, h, d, dtype), kw = case
    got = _check_against_reference(
        "tokamax_xla", _inputs(seed, b, tq, tkv, h, d, dtype), dtype, **kw
    )
    _assert_empty_rows_exactly_zero(got, kw["q_lengths"], kw["kv_lengths"], kw["window"])


@pytest.mark.parametrize(
    ("backend", "dtype", "d", "h", "window", "causal"),
    [
        ("pallas_tpu", "bfloat16", 128, 2, 5, False),  # D = 128: lane-dense [B, T, H·D] layout
        ("pallas_tpu", "float16", 32, 1, None, True),  # H = 1: the reshape layout at D < 128
        ("jax_triton", "bfloat16", 96, 2, 5, True),  # D = 96: lanes past D masked
        ("jax_triton", "float16", 64, 1, None, False),
    ],
)
def test_kernels_match_jax_nn(backend, dtype, d, h, window, causal):
    """Against `jax.nn.dot_product_attention` on self-attention with shared ragged lengths
    (the model's use), compared on real query rows; padded rows get zero cotangent."""
    q, k, v, do = _inputs(7, 2, 37, 37, h, d, dtype)
    lengths = jnp.array([37, 21], jnp.int32)
    real = (np.arange(37)[None, :] < np.asarray(lengths)[:, None])[:, :, None, None]
    do = jnp.where(real, do, 0)
    kw = dict(q_lengths=lengths, kv_lengths=lengths, window=window, causal=causal)
    got = value_and_grads(
        lambda q, k, v: swa_attention(q, k, v, backend=backend, block_q=16, block_kv=16, **kw),
        q,
        k,
        v,
        do,
    )
    want = value_and_grads(
        lambda q, k, v: jax.nn.dot_product_attention(
            q,
            k,
            v,
            query_seq_lengths=lengths,
            key_value_seq_lengths=lengths,
            local_window_size=None if window is None else (window, window),
            is_causal=causal,
            implementation="xla",
        ),
        *as_f32(q, k, v, do),
    )
    _assert_close(np.where(real, got[0], 0), np.where(real, want[0], 0), dtype, "O")
    for name, g, w in zip(("dQ", "dK", "dV"), got[1], want[1], strict=True):
        _assert_close(g, w, dtype, name)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [30, 37])
@pytest.mark.parametrize("backend", KERNELS)
def test_wholly_visible_tiles_inside_a_window(backend, window, causal):
    """Wholly visible tiles (where the Triton kernels skip the mask) between masked ones,
    ragged lengths ending inside a tile; window 30 = 2·16 - 2 puts a tile one position past
    the band's edge (test_gdpa.py's case)."""
    kw = dict(
        q_lengths=jnp.array([100, 83], jnp.int32),
        kv_lengths=jnp.array([97, 100], jnp.int32),
        window=window,
        causal=causal,
    )
    _check_against_reference(backend, _inputs(6, 2, 100, 100, 1, 32, "float32"), "float32", **kw)


@pytest.mark.parametrize("backend", ["reference", *KERNELS])
def test_masked_positions_contribute_nothing(backend):
    """NaN and ±inf in every row past the lengths of q, k, v and dO (inside partially visited
    tiles, where a kernel multiplies masked positions: 0·NaN = NaN, and in fully padded tiles)
    leave O and all gradients bitwise unchanged; rows that see no key and padded keys get
    exactly zero."""
    q_lengths, kv_lengths = np.array([35, 3]), np.array([20, 0])
    kw = dict(
        q_lengths=jnp.asarray(q_lengths, jnp.int32),
        kv_lengths=jnp.asarray(kv_lengths, jnp.int32),
        window=6,
        backend=backend,
        block_q=BLOCK,
        block_kv=BLOCK,
    )
    clean = _inputs(3, 2, 40, 40, 2, 32, "float32")

    q, k, v, do = clean
    want = value_and_grads(lambda *a: swa_attention(*a, **kw), *clean)
    got = value_and_grads(
        lambda *a: swa_attention(*a, **kw),
        poison_padding(q, q_lengths),
        poison_padding(k, kv_lengths),
        poison_padding(v, kv_lengths),
        poison_padding(do, q_lengths),
    )
    assert_trees_equal(got, want)
    _assert_empty_rows_exactly_zero(got, kw["q_lengths"], kw["kv_lengths"], 6)
    ref = attention_reference(
        q, k, v, q_lengths=kw["q_lengths"], kv_lengths=kw["kv_lengths"], window=6
    )
    _assert_close(want[0], ref, "float32", "O")


def _kernel_grids(
    t: int, window: int | None, causal: bool, heads: int = 2, **kw
) -> dict[str, tuple[int, ...]]:
    """Grid of each SWA pallas_call in fwd + bwd at sequence length t, 128-row tiles (traced,
    not run)."""
    x = jax.ShapeDtypeStruct((1, t, heads, 128), jnp.bfloat16)
    kw |= dict(window=window, causal=causal, backend="pallas_tpu", block_q=128, block_kv=128)

    def fwd_bwd(q, k, v):
        return jax.vjp(lambda q, k, v: swa_attention(q, k, v, **kw), q, k, v)[1](q)

    eqns = jax.make_jaxpr(fwd_bwd)(x, x, x).eqns
    return {
        str(e.params["name"]): e.params["grid_mapping"].grid
        for e in eqns
        if e.primitive.name == "pallas_call"
    }


@pytest.mark.parametrize("causal", [False, True])
def test_grids_visit_only_the_window(causal):
    """With 128-row tiles each kernel visits its outer block's window as one band: grid
    (B, H, T / 128, 1) whatever T, the band 384 rows at w = 100 (256 causal) where the blocked
    steps would visit 3 (2) tiles of 128. So the visited rows double when T doubles (cost ∝
    T·w), while full attention's tiles quadruple."""
    tiles = TileGrid(1, 2, 128, 128, 32, 32, window=100, causal=causal)
    assert tiles.can_band()
    assert blocks.max_kv_blocks(128, 128, 32, window=100, causal=causal) == (2 if causal else 3)
    assert (
        tiles.band_rows(q_outer=True) == tiles.band_rows(q_outer=False) == (256 if causal else 384)
    )
    for t in (4096, 8192):
        grids = _kernel_grids(t, 100, causal)
        assert set(grids) == {"swa_fwd_tpu", "swa_dkdv_tpu", "swa_dq_tpu"}
        for grid in grids.values():
            assert grid == (1, 2, t // 128, 1), grids
    full = [_kernel_grids(t, None, causal)["swa_fwd_tpu"] for t in (1024, 2048)]
    assert [np.prod(g) for g in full] == [2 * 8 * 8, 2 * 16 * 16]


@pytest.mark.parametrize("window", [None, 20])
def test_blocked_kernels_take_several_heads_per_step(window):
    """The blocked (unbanded: 16-row tiles) kernels with 2 heads per grid step, each with its
    own running softmax statistics and accumulators, against the reference."""
    kw = dict(
        q_lengths=jnp.array([40, 23], jnp.int32),
        kv_lengths=jnp.array([37, 40], jnp.int32),
        window=window,
    )
    assert _kernel_grids(128, window, False, 4, heads_per_step=2)["swa_fwd_tpu"][1] == 2
    q, k, v, do = _inputs(8, 2, 40, 40, 4, 32, "float32")
    tiles = dict(block_q=BLOCK, block_kv=BLOCK, heads_per_step=2)
    got = value_and_grads(
        lambda *a: swa_attention(*a, backend="pallas_tpu", **tiles, **kw), q, k, v, do
    )
    want = value_and_grads(lambda *a: attention_reference(*a, **kw), q, k, v, do)
    assert_outputs_close(got, want, "float32", tolerance=TOLERANCE)


def test_heads_per_step_divides_the_heads():
    assert [heads_per_step(4, most) for most in (1, 2, 3, 4, 8)] == [1, 2, 2, 4, 4]
    assert (heads_per_step(6, 4), heads_per_step(5, 4), heads_per_step(1, 4)) == (3, 1, 1)


@pytest.mark.parametrize(
    ("window", "causal", "d", "h", "heads", "q_lengths", "kv_lengths"),
    [
        (100, False, 128, 1, 1, (600, 257), (555, 300)),
        (37, True, 64, 2, 2, (600, 257), (555, 300)),  # [B, H, T, D] layout, 2 heads a step
        (100, False, 128, 4, 4, (600, 257), (555, 300)),  # [B, T, H·D] layout, 4 heads a step
        (100, False, 128, 1, 1, (0, 130), (600, 0)),
    ],
)
def test_banded_kernels_match_reference(window, causal, d, h, heads, q_lengths, kv_lengths):
    """The banded kernels (one grid step per outer block and `heads` heads, its band's first
    row element-indexed, no running state) against the reference with ragged and zero
    lengths, NaN in every row past them: a band reaches past the lengths, and the kernels zero
    what they read there. Outer blocks past the lengths write exact zeros."""
    t = 600
    q_lengths, kv_lengths = np.array(q_lengths), np.array(kv_lengths)
    kw = dict(
        q_lengths=jnp.asarray(q_lengths, jnp.int32),
        kv_lengths=jnp.asarray(kv_lengths, jnp.int32),
        window=window,
        causal=causal,
    )
    for grid in _kernel_grids(t, window, causal, h, heads_per_step=heads).values():
        assert grid[1:] == (h // heads, 5, 1)  # banded: head blocks, q or kv blocks, one step
    tiles = dict(block_q=128, block_kv=128, heads_per_step=heads)
    q, k, v, do = _inputs(5, 2, t, t, h, d, "float32")
    got = value_and_grads(
        lambda *a: swa_attention(*a, backend="pallas_tpu", **tiles, **kw),
        poison_padding(q, q_lengths),
        poison_padding(k, kv_lengths),
        poison_padding(v, kv_lengths),
        poison_padding(do, q_lengths),
    )
    want = value_and_grads(lambda *a: attention_reference(*a, **kw), q, k, v, do)
    assert_outputs_close(got, want, "float32", tolerance=TOLERANCE)
    _assert_empty_rows_exactly_zero(got, kw["q_lengths"], kw["kv_lengths"], window)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    lens=st.lists(st.integers(0, 12), min_size=4, max_size=4),
    window=st.one_of(st.none(), st.integers(0, 14)),
    causal=st.booleans(),
)
def test_rows_with_keys_is_the_masks_row_any(lens, window, causal):
    """Fixed shapes (Tq = 12 > Tkv = 9 covers rows past the keys), so eager ops compile once."""
    tq, tkv = 12, 9
    q_lengths = jnp.asarray(lens[:2], jnp.int32)
    kv_lengths = jnp.minimum(jnp.asarray(lens[2:], jnp.int32), tkv)
    kw = dict(q_lengths=q_lengths, kv_lengths=kv_lengths, window=window)
    mask = attention_mask(2, tq, tkv, causal=causal, **kw)
    want = np.asarray(mask).any(axis=(1, 3))
    np.testing.assert_array_equal(rows_with_keys(2, tq, tkv, **kw), want)


def test_dispatch_on_cpu():
    """auto and reference are the reference (bitwise); pallas is the TPU kernel in interpret
    mode; ops.attention routes the same way."""
    q, k, v, _ = _inputs(4, 2, 20, 20, 2, 32, "float32")
    kw = dict(window=3, causal=True, q_lengths=jnp.array([20, 7]), kv_lengths=jnp.array([20, 7]))
    want = attention_reference(q, k, v, **kw)
    np.testing.assert_array_equal(swa_attention(q, k, v, backend="auto", **kw), want)
    np.testing.assert_array_equal(ops.attention(q, k, v, kernels="auto", **kw), want)
    np.testing.assert_array_equal(ops.attention(q, k, v, kernels="reference", **kw), want)
    _assert_close(swa_attention(q, k, v, backend="pallas", **kw), want, "float32", "O")
    _assert_close(ops.attention(q, k, v, kernels="pallas", **kw), want, "float32", "O")


def test_empty_sequences():
    q, k, v, _ = _inputs(5, 2, 8, 0, 1, 32, "float32")
    out, grads = value_and_grads(
        lambda *a: swa_attention(*a, window=2, backend="pallas_tpu"), q, k, v, jnp.ones_like(q)
    )
    np.testing.assert_array_equal(out, np.zeros(q.shape))
    np.testing.assert_array_equal(grads[0], np.zeros(q.shape))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(backend="cuda"), "unknown SWA backend 'cuda'; choose one of"),
        (dict(backend="tokamax"), "backend='tokamax' names tokamax's GPU kernels"),
        (dict(q=jnp.zeros((2, 8, 32))), "q must have rank 4"),
        (dict(q=jnp.zeros((2, 8, 2, 32), jnp.int32)), "q has dtype int32; SWA supports"),
        (dict(kv_lengths=jnp.zeros((3,), jnp.int32)), "kv_lengths must be an integer array"),
        (dict(q_lengths=jnp.array([8, 12])), r"q_lengths must lie in \[0, 8\].*\[12\]"),
        (dict(window=-1), "window must be a non-negative int"),
        (dict(backend="pallas_tpu", block_kv=12), "block_kv=12 must be a positive multiple of 8"),
        (dict(heads_per_step=0), "heads_per_step must be a positive int or None, got 0"),
        (dict(scale=float("nan")), "scale must be finite"),
        (dict(causal=1), r"causal must be a Python bool \(True or False\)"),
    ],
)
def test_invalid_arguments(kwargs, message):
    args = dict(q=jnp.zeros((2, 8, 2, 32)), k=jnp.zeros((2, 8, 2, 32)), v=jnp.zeros((2, 8, 2, 32)))
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        swa_attention(args.pop("q"), args.pop("k"), args.pop("v"), **args)


@pytest.mark.parametrize("backend", ["reference", "pallas_tpu", "jax_triton"])
@pytest.mark.parametrize("shape", [(0, 8, 2, 32), (2, 8, 0, 32), (2, 0, 2, 32)])
def test_empty_inputs_give_zeros_on_every_backend(backend, shape):
    """No batch, no heads or no keys: a zero output of q's shape (a row with no visible key
    outputs zero, `attention_reference`)."""
    q = jnp.ones((*shape[:1], 5, *shape[2:]))
    kv = jnp.ones(shape)
    out = swa_attention(q, kv, kv, window=2, backend=backend)
    assert out.shape == q.shape
    assert not np.any(np.asarray(out))


def test_tokamax_mapping_and_gpu_choice():
    """Our |i - j| <= w is tokamax's (w, w); causal keeps the past half (w, 0). Hopper and
    newer get tokamax's Mosaic GPU kernel, older GPUs its Triton one."""
    assert local_window(None, False) is None
    assert local_window(7, False) == (7, 7)
    assert local_window(7, True) == (7, 0)
    assert gpu_implementation(SimpleNamespace(compute_capability="9.0")) == "mosaic"
    assert gpu_implementation(SimpleNamespace(compute_capability="10.0")) == "mosaic"
    assert gpu_implementation(SimpleNamespace(compute_capability="8.0")) == "triton"


def test_tuning_table():
    """Windows up to 128 take 256-row (banded) tiles, wider ones and full attention larger
    ones; CPU gets the fallback."""
    assert default_block_sizes("tpu", "TPU v5 lite", 128, 16).block_q == 256
    assert default_block_sizes("tpu", "TPU v5 lite", 256, 16).block_q == 256
    assert default_block_sizes("tpu", "TPU v6 lite", 128, 256).block_q == 256
    assert default_block_sizes("tpu", "TPU v6 lite", 128, None).block_q == 512
    assert default_block_sizes("tpu", "TPU v6 lite", 128, 4096).block_q == 512
    heads = [default_block_sizes("tpu", "TPU v5 lite", d, 16).heads for d in (128, 256)]
    assert heads == [8, 4]
    # D = 256, w <= 128: v5e's backward takes 128-row tiles, other chips' 256.
    v5e, v6e = (default_block_sizes("tpu", k, 256, 100) for k in ("TPU v5 lite", "TPU v6 lite"))
    assert v5e.tiles(backward=True) == (128, 128)
    assert v6e.tiles(backward=True) == (256, 256)
    assert v5e.tiles(backward=False) == v6e.tiles(backward=False) == (256, 256)
    # D = 256 full attention (and windows past the windowed rows): 4 heads in the raised limit
    # on v5e / v6e, 2 in the default elsewhere; a window <= 128 meets its own row first.
    for window in (None, 4096):
        v6e, v5p = (default_block_sizes("tpu", k, 256, window) for k in ("TPU v6 lite", "TPU v5"))
        assert (v6e.block_q, v6e.heads, v6e.vmem_limit_mib) == (512, 4, 64)
        assert (v5p.block_q, v5p.heads, v5p.vmem_limit_mib) == (512, 2, None)
    for window in (16, 300, None):  # v5e / v6e: 8 heads in a raised scoped-VMEM limit
        assert default_block_sizes("tpu", "TPU v6 lite", 128, window).vmem_limit_mib == 64
        v5p = default_block_sizes("tpu", "TPU v5", 128, window)
        assert (v5p.heads, v5p.vmem_limit_mib) == (4, None)
    assert default_block_sizes("cpu", "cpu", 64, 16) == BlockSizes(64, 64, 64, 64)
