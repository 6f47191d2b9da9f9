"""Smoke test of the GDPA benchmark script: runs on CPU with --smoke, writes the JSON schema;
the padded-cuDNN yardstick ignores lengths; and every GPU implementation of the quick profile
lowers for an H100 at its shapes (so a GPU session spends no device time on an error that CPU
could have shown)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.gpu_session import target_lines
from benchmarks.kernels import gdpa
from benchmarks.kernels.gdpa import PADDED_IMPL, Case, attention_fn, forward_flops, quick_cases
from pallas_kernels.common.masks import attention_mask
from tests.kernels.helpers import (
    MOSAIC_GPU_CALL,
    TRITON_CALL,
    gpu_kernel_calls,
    normal_inputs,
    run_benchmark_smoke,
)

TIMING_KEYS = ("fwd_ms", "bwd_ms", "fwdbwd_ms", "fwd_tflops", "bwd_tflops", "fwdbwd_tflops")


def test_benchmark_smoke_writes_report(tmp_path):
    report = run_benchmark_smoke("gdpa", tmp_path, timeout=120)
    assert report["baselines"]["copy_gbps"] > 0

    results = report["results"]
    assert {r["impl"] for r in results} == {"gdpa_reference", "tokamax_xla"}
    for r in results:
        assert r["error"] is None, r["error"]
        for key in ("name", "batch", "heads", "tq", "tkv", "head_dim", "lengths", "fwd_flops"):
            assert key in r, key
        assert all(r[k] > 0 for k in TIMING_KEYS), r
        # FLOPs: 4·D·H per pair the kernels' mask leaves (the smoke case is a jagged,
        # windowed, non-causal cross-attention: the window cuts rows at both edges).
        assert r["window"] is not None
        assert not r["causal"]
        assert r["fwd_flops"] == 4 * _mask_pairs(r) * r["head_dim"] * r["heads"]
        assert max(r["q_lengths"]) <= r["tq"]
        assert min(r["q_lengths"]) >= 1
        assert r["computes"] == "real tokens"
        # Minimal traffic (bf16): real rows of the inputs, whole outputs (padded rows are
        # written as zeros): fwd Q, K, V, O; bwd Q, dO, K, V, dQ, dK, dV.
        row = 2 * r["heads"] * r["head_dim"]
        q_sum, kv_sum = sum(r["q_lengths"]), sum(r["kv_lengths"])
        all_q, all_kv = r["batch"] * r["tq"], r["batch"] * r["tkv"]
        assert r["fwd_bytes"] == row * (q_sum + 2 * kv_sum + all_q)
        assert r["bwd_bytes"] == row * (2 * q_sum + 2 * kv_sum + all_q + 2 * all_kv)
        for kind in ("fwd", "bwd"):
            gbps = r[f"{kind}_bytes"] / r[f"{kind}_ms"] * 1e-6
            assert np.isclose(r[f"{kind}_gbps"], gbps)
            assert np.isclose(
                r[f"{kind}_fraction_of_copy"], gbps / report["baselines"]["copy_gbps"]
            )
            assert r[f"{kind}_fraction_of_matmul"] > 0


def _mask_pairs(r: dict) -> int:
    """Positions the kernels' mask (`attention_mask`, the reference's) leaves for a result."""
    mask = attention_mask(
        r["batch"],
        r["tq"],
        r["tkv"],
        q_lengths=jnp.asarray(r["q_lengths"]),
        kv_lengths=jnp.asarray(r["kv_lengths"]),
        window=r["window"],
        causal=r["causal"],
    )
    return int(mask.sum())


@settings(max_examples=40, deadline=None)
@given(
    tq=st.integers(1, 40),
    tkv=st.integers(1, 40),
    window=st.sampled_from([None, 0, 1, 3, 50]),
    causal=st.booleans(),
    data=st.data(),
)
def test_flops_count_the_pairs_the_mask_leaves(tq, tkv, window, causal, data):
    q_lens = data.draw(st.lists(st.integers(0, tq), min_size=2, max_size=2))
    kv_lens = data.draw(st.lists(st.integers(0, tkv), min_size=2, max_size=2))
    case = Case("cross", 2, 3, tq, tkv, 8, "uniform", window, causal)
    flops = forward_flops(case, np.array(q_lens), np.array(kv_lens))
    result = dict(
        batch=2, tq=tq, tkv=tkv, q_lengths=q_lens, kv_lengths=kv_lens, window=window, causal=causal
    )
    assert flops == 4 * 8 * 3 * _mask_pairs(result)


def _timed(impl: str, ms: float, **case) -> dict:
    row = dict(name="self_T8", heads=1, lengths="longtail", window=None, causal=False)
    row |= dict(impl=impl, error=None, fwd_ms=ms, bwd_ms=2 * ms, fwdbwd_ms=3 * ms)
    fractions = dict(fwd_fraction_of_matmul=0.5, bwd_fraction_of_matmul=0.4)
    return row | fractions | dict(fwd_fraction_of_copy=0.1) | case


def test_summary_puts_each_kernel_beside_the_targets_baselines(tmp_path):
    results = [
        _timed("gdpa_pallas", 1.0),
        _timed("gdpa_reference", 4.0),
        _timed(PADDED_IMPL, 2.0),
        _timed("tokamax_cudnn", 0.5),
        _timed("gdpa_jax_triton", 1.0) | dict(error="boom"),
        _timed("gdpa_pallas", 1.0, lengths="full"),  # another case: no baselines ran
    ]
    jagged, full = gdpa.target_summary(results)
    assert jagged["impl"] == "gdpa_pallas"
    assert jagged["lengths"] == "longtail"
    assert (jagged["fwd_fraction_of_matmul"], jagged["bwd_fraction_of_matmul"]) == (0.5, 0.4)
    for kind in ("fwd", "bwd", "fwdbwd"):
        assert jagged[f"{kind}_speedup_vs_reference"] == 4.0
        assert jagged[f"{kind}_speedup_vs_cudnn_padded"] == 2.0
        assert jagged[f"{kind}_speedup_vs_cudnn"] == 0.5
    assert full["lengths"] == "full"
    assert full["fwdbwd_speedup_vs_reference"] is None
    # what a GPU session prints of it beside the targets
    (tmp_path / "gdpa.json").write_text(json.dumps(dict(summary=[jagged, full])))
    assert target_lines(tmp_path) == [
        "gdpa self_T8 H1 longtail gdpa_pallas: of matmul fwd 0.50 bwd 0.40;"
        " fwd+bwd x4.00 vs reference, x2.00 vs padded cuDNN",
        "gdpa self_T8 H1 full gdpa_pallas: of matmul fwd 0.50 bwd 0.40;"
        " fwd+bwd n/a vs reference, n/a vs padded cuDNN",
    ]


def test_padded_yardstick_computes_the_whole_padded_batch():
    case = Case("cross_Tq8_Tkv8", 2, 1, 8, 8, 32, "uniform")
    q, k, v = normal_inputs(0, [(2, 8, 1, 32)] * 3, "float32")
    lens = jnp.array([8, 3], jnp.int32)
    jagged = attention_fn("tokamax_xla", case, None, None)(q, k, v, lens, lens)
    padded = attention_fn("tokamax_xla_padded", case, None, None)(q, k, v, lens, lens)
    unmasked = attention_fn("tokamax_xla", case, None, None)(q, k, v, None, None)
    np.testing.assert_array_equal(np.asarray(padded), np.asarray(unmasked))
    np.testing.assert_allclose(np.asarray(padded[0]), np.asarray(jagged[0]), rtol=1e-6)
    assert not np.allclose(np.asarray(padded[1, :3]), np.asarray(jagged[1, :3]))


GPU_KERNELS = {
    "gdpa_pallas": (TRITON_CALL, 3),
    "gdpa_mosaic_gpu": (MOSAIC_GPU_CALL, 3),
    "tokamax_mosaic": (MOSAIC_GPU_CALL, 3),
    "tokamax_triton": (TRITON_CALL, 2),
}


@pytest.mark.filterwarnings("ignore:The Pallas Triton backend is deprecated:DeprecationWarning")
@pytest.mark.parametrize("impl", sorted(GPU_KERNELS))
def test_quick_profile_lowers_for_an_h100(impl):
    target, count = GPU_KERNELS[impl]
    for case in quick_cases(head_dim=128):
        q = jax.ShapeDtypeStruct((case.batch, case.tq, case.heads, case.head_dim), jnp.bfloat16)
        kv = jax.ShapeDtypeStruct((case.batch, case.tkv, case.heads, case.head_dim), q.dtype)
        lengths = jax.ShapeDtypeStruct((case.batch,), jnp.int32)
        attend = attention_fn(impl, case, None, None)
        calls = gpu_kernel_calls(attend, q, kv, kv, lengths, lengths)
        assert calls == {target: count}, (impl, case, calls)
