"""Mosaic GPU GDPA kernels (forward, dQ, dK/dV; Hopper and Blackwell) in the Mosaic GPU
interpreter vs the reference.

The interpreter runs the kernels' TMA copies, barriers, double-buffered loops, wgmma calls
(Hopper) and tcgen05 MMAs with TMEM loads and stores (Blackwell) on the host; it does not check
the hardware's layout rules (test_gdpa_mosaic_gpu_lowering.py lowers the same kernels for
sm_90 and sm_100). Tolerances and error normalization as in test_gdpa.py.
"""

from __future__ import annotations

import dataclasses
import functools
import types
from unittest import mock

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pallas_kernels.common.activations import ACTIVATIONS
from pallas_kernels.common.target import compile_target
from pallas_kernels.common.tiles import BlockSizes
from pallas_kernels.gdpa import gdpa, gdpa_reference, mosaic_gpu, tuning
from pallas_kernels.gdpa.mosaic_gpu import ARCHS, arch_for, gdpa_mosaic_gpu
from pallas_kernels.gdpa.tuning import override_block_sizes
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

TOLERANCE = {"bfloat16": 2e-2, "float16": 5e-3}
# A barrier protocol error (e.g. unbalanced ping-pong meetings) deadlocks the interpreter: fail
# the test, not CI's time limit. Each test takes well under a minute.
pytestmark = pytest.mark.timeout(600, method="thread")


@pytest.mark.parametrize("arch", sorted(ARCHS))
@settings(max_examples=8, deadline=None)
@given(
    batch=st.integers(1, 2),
    tq=st.integers(1, 200),
    tkv=st.integers(1, 200),
    heads=st.integers(1, 2),
    head_dim=st.sampled_from([32, 64, 96, 128]),
    activation=st.sampled_from(sorted(ACTIVATIONS)),
    dtype=st.sampled_from(sorted(TOLERANCE)),
    window=st.sampled_from([None, 0, 5, 70, 300]),
    causal=st.booleans(),
    block_kv=st.sampled_from([64, 128]),
    data=st.data(),
)
def test_values_and_gradients_match_the_reference(
    arch, batch, tq, tkv, heads, head_dim, activation, dtype, window, causal, block_kv, data
):
    dkdv_block_q = data.draw(st.sampled_from(ARCHS[arch].DKDV_Q_BLOCKS), "dkdv_block_q")
    q_lens = np.array(data.draw(st.lists(st.integers(0, tq), min_size=batch, max_size=batch)))
    kv_lens = np.array(data.draw(st.lists(st.integers(0, tkv), min_size=batch, max_size=batch)))
    q, k, v, do = normal_inputs(
        tq * 1000 + tkv,
        [
            (batch, tq, heads, head_dim),
            *[(batch, tkv, heads, head_dim)] * 2,
            (batch, tq, heads, head_dim),
        ],
        dtype,
    )
    # Masked keys and values hold large values: they must contribute exactly nothing.
    real_kv = np.arange(tkv)[None, :, None, None] < kv_lens[:, None, None, None]
    k = jnp.where(real_kv, k, 1e3).astype(dtype)
    v = jnp.where(real_kv, v, 1e3).astype(dtype)
    kwargs = dict(
        activation=activation,
        qk_scale=0.5,
        out_scale=1.0 / max(tkv, 1),
        q_lengths=jnp.asarray(q_lens, jnp.int32),
        kv_lengths=jnp.asarray(kv_lens, jnp.int32),
        window=window,
        causal=causal,
    )
    kernel = functools.partial(
        gdpa_mosaic_gpu,
        interpret=True,
        arch=arch,
        block_kv=block_kv,
        dkdv_block_q=dkdv_block_q,
        **kwargs,
    )
    got, got_grads = value_and_grads(kernel, q, k, v, do)
    assert got.shape == q.shape
    assert got.dtype == q.dtype
    want, want_grads = value_and_grads(
        functools.partial(gdpa_reference, **kwargs), *as_f32(q, k, v), do.astype(jnp.float32)
    )
    assert_close(got, want, dtype, f"O ({activation})", tolerance=TOLERANCE)
    for name, g, w in zip(("dQ", "dK", "dV"), got_grads, want_grads, strict=True):
        assert_close(g, w, dtype, f"{name} ({activation})", tolerance=TOLERANCE)
    padded_rows = np.arange(tq)[None, :] >= q_lens[:, None]
    assert not np.any(np.asarray(got, np.float32)[padded_rows]), "padded query rows must be 0"


@pytest.mark.parametrize(
    ("tq", "tkv", "window", "causal", "splits", "dkdv_block_q"),
    [(600, 40, None, False, 3, 64), (520, 300, 70, True, 2, 32), (300, 64, None, True, 8, 64)],
)
def test_hopper_dkdv_query_splits(tq, tkv, window, causal, splits, dkdv_block_q):
    """Hopper's dK/dV grid split over query ranges (fp32 partials summed after) gives the
    reference's gradients, also with empty splits (8 splits of 6 query blocks) and with
    32-row query blocks. Real shapes split only at >= 8 query blocks a split
    (`tuning.dkdv_q_splits`): forced here."""
    q, k, v, do = normal_inputs(
        tq + tkv, [(2, tq, 2, 64), *[(2, tkv, 2, 64)] * 2, (2, tq, 2, 64)], "bfloat16"
    )
    kwargs = dict(
        activation="gelu_tanh",
        qk_scale=0.5,
        out_scale=1.0 / tkv,
        q_lengths=jnp.array([tq, tq // 3], jnp.int32),
        kv_lengths=jnp.array([tkv, tkv - 7], jnp.int32),
        window=window,
        causal=causal,
    )
    with mock.patch.object(mosaic_gpu, "dkdv_q_splits", return_value=splits):
        kernel = functools.partial(
            gdpa_mosaic_gpu, interpret=True, arch="hopper", dkdv_block_q=dkdv_block_q, **kwargs
        )
        _, got = value_and_grads(kernel, q, k, v, do)
    _, want = value_and_grads(
        functools.partial(gdpa_reference, **kwargs), *as_f32(q, k, v), do.astype(jnp.float32)
    )
    for name, g, w in zip(("dQ", "dK", "dV"), got, want, strict=True):
        assert_close(g, w, "bfloat16", name, tolerance=TOLERANCE)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_wholly_visible_tiles_inside_a_window(arch, causal):
    """A window of several tiles: wholly visible tiles (no mask built, `store_scores`) between
    masked ones, ragged lengths ending inside a tile. Window 190 = 3·64 - 2, so an off-by-one
    at the band's edge would take a tile with one hidden position for wholly visible."""
    q, k, v, do = normal_inputs(7, [(2, 520, 1, 32)] * 4, "bfloat16")
    kwargs = dict(
        activation="sigmoid",  # sigmoid(0) = 0.5: a dropped mask shows
        q_lengths=jnp.array([520, 450], jnp.int32),
        kv_lengths=jnp.array([500, 520], jnp.int32),
        window=190,
        causal=causal,
    )
    kernel = functools.partial(gdpa_mosaic_gpu, interpret=True, arch=arch, **kwargs)
    got = value_and_grads(kernel, q, k, v, do)
    want = value_and_grads(
        functools.partial(gdpa_reference, **kwargs), *as_f32(q, k, v), do.astype(jnp.float32)
    )
    names = ("O", "dQ", "dK", "dV")
    for name, g, w in zip(names, (got[0], *got[1]), (want[0], *want[1]), strict=True):
        assert_close(g, w, "bfloat16", name, tolerance=TOLERANCE)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_masked_positions_contribute_nothing(arch):
    """NaN and ±inf in every row past the lengths of q, k, v and dO (the kernels' TMA copies
    read whole blocks, padded rows included) leave O and every gradient bitwise unchanged,
    and padded rows of O, dQ, dK, dV are exactly zero."""
    q_lengths, kv_lengths = np.array([100, 3]), np.array([70, 0])
    kernel = functools.partial(
        gdpa_mosaic_gpu,
        interpret=True,
        arch=arch,
        activation="sigmoid",  # sigmoid(0) = 0.5: a leaked masked position shows
        q_lengths=jnp.asarray(q_lengths, jnp.int32),
        kv_lengths=jnp.asarray(kv_lengths, jnp.int32),
    )
    clean = normal_inputs(9, [(2, 130, 1, 32)] * 4, "bfloat16")
    lengths = (q_lengths, kv_lengths, kv_lengths, q_lengths)  # of q, k, v, dO
    want = value_and_grads(kernel, *clean)
    got = value_and_grads(kernel, *map(poison_padding, clean, lengths))
    assert_trees_equal(got, want)
    assert_padding_exactly_zero(got, q_lengths, kv_lengths)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_fp16_tiles_are_scaled_before_their_cast(arch):
    """fp16 score tiles that would overflow before out_scale (test_gdpa.py's case): β (αβ
    for dS) applies to the fp32 tile before its cast to fp16, so O and the gradients are
    finite and match the reference."""
    (q, k, v, do), kwargs = fp16_overflow_case(11, (2, 40, 1, 32))
    got = value_and_grads(
        functools.partial(gdpa_mosaic_gpu, interpret=True, arch=arch, **kwargs), q, k, v, do
    )
    want = value_and_grads(
        functools.partial(gdpa_reference, **kwargs), *as_f32(q, k, v), do.astype(jnp.float32)
    )
    assert_outputs_close(got, want, "float16", tolerance=TOLERANCE)


def test_head_dims_above_128_are_a_clear_error():
    q, k, v = normal_inputs(0, [(1, 64, 1, 192)] * 3, "bfloat16")
    with pytest.raises(ValueError, match=r"D=192.*backend='pallas_triton'"):
        gdpa_mosaic_gpu(q, k, v, interpret=True)


def test_block_kv_outside_the_choices_is_a_clear_error():
    q, k, v = normal_inputs(0, [(1, 64, 1, 64)] * 3, "bfloat16")
    with pytest.raises(ValueError, match="block_kv must be one of"):
        gdpa_mosaic_gpu(q, k, v, block_kv=32, interpret=True)


def test_tiles_are_the_measured_row_else_untuned_and_checked():
    h100, untuned = "NVIDIA H100 80GB HBM3", mosaic_gpu.untuned_block_sizes("hopper")
    assert untuned == BlockSizes(128, 64, 64, 128)
    assert mosaic_gpu.block_sizes("hopper", h100, 128, 4096) == untuned
    assert mosaic_gpu.block_sizes("blackwell", "NVIDIA B200", 128, 64).block_q_bwd == 128
    tuned = BlockSizes(128, 128, 32, 128)
    row = dict(
        impl="pallas_mosaic_gpu",
        device_kind=h100,
        head_dim=128,
        regime="long",
        sizes=dataclasses.asdict(tuned),
    )
    with mock.patch.object(tuning, "tuned_rows", return_value=(row,)):
        assert mosaic_gpu.block_sizes("hopper", h100, 128, 4096) == tuned
        assert mosaic_gpu.block_sizes("hopper", h100, 128, 64) == untuned  # the short regime
        assert mosaic_gpu.block_sizes("hopper", "NVIDIA H200", 128, 4096) == untuned
        explicit = mosaic_gpu.block_sizes("hopper", h100, 128, 4096, block_kv=64)
        assert explicit == dataclasses.replace(tuned, block_kv=64)
    triton_tile = override_block_sizes(BlockSizes(64, 64, 64, 64))
    with triton_tile, pytest.raises(ValueError, match=r"block_q, block_kv_bwd = \(128, 128\)"):
        mosaic_gpu.block_sizes("hopper", h100, 128, 4096)
    with pytest.raises(ValueError, match=r"dkdv_block_q \(block_q_bwd\).*\(32, 64\) on hopper"):
        mosaic_gpu.block_sizes("hopper", h100, 64, 64, dkdv_block_q=128)
    with pytest.raises(ValueError, match=r"\(128,\) on blackwell"):
        mosaic_gpu.block_sizes("blackwell", "NVIDIA B200", 64, 64, dkdv_block_q=64)


def test_fp32_inputs_are_refused():
    q, k, v = normal_inputs(0, [(1, 64, 1, 64)] * 3, "float32")
    with pytest.raises(ValueError, match="bf16 or f16"):
        gdpa_mosaic_gpu(q, k, v, interpret=True)


def test_the_public_op_runs_it_by_name_only():
    q, k, v = normal_inputs(1, [(2, 70, 2, 64), (2, 24, 2, 64), (2, 24, 2, 64)], "bfloat16")
    lens = jnp.array([70, 9], jnp.int32), jnp.array([24, 5], jnp.int32)
    kwargs = dict(
        activation="gelu_tanh", out_scale=0.25, q_lengths=lens[0], kv_lengths=lens[1], window=9
    )
    got = gdpa(q, k, v, backend="pallas_mosaic_gpu", **kwargs)
    want = gdpa_reference(*as_f32(q, k, v), **kwargs)
    assert_close(got, want, "bfloat16", "O", tolerance=TOLERANCE)


def _gpu(kind: str, capability: str):
    return types.SimpleNamespace(platform="gpu", device_kind=kind, compute_capability=capability)


def test_the_device_kind_picks_the_kernels():
    assert arch_for(_gpu("NVIDIA H100 80GB HBM3", "9.0")) == "hopper"
    assert arch_for(_gpu("NVIDIA B200", "10.0")) == "blackwell"
    assert arch_for(types.SimpleNamespace(platform="cpu", device_kind="cpu")) == "hopper"
    with pytest.raises(ValueError, match=r"NVIDIA A100.*sm_80.*backend='pallas_triton'"):
        arch_for(_gpu("NVIDIA A100-SXM4-80GB", "8.0"))
    q, k, v = normal_inputs(0, [(1, 64, 1, 64)] * 3, "bfloat16")
    with compile_target(_gpu("NVIDIA B200", "10.0")), pytest.raises(ValueError, match="128"):
        gdpa(q, k, v, backend="pallas_mosaic_gpu", block_q=64)  # Blackwell's query tile is 128
    with pytest.raises(ValueError, match="unknown Mosaic GPU architecture"):
        gdpa_mosaic_gpu(q, k, v, arch="ampere", interpret=True)
