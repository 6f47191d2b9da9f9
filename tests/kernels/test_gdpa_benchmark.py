"""Smoke test of the GDPA benchmark script: runs on CPU with --smoke, writes the JSON schema;
the padded-cuDNN yardstick ignores lengths; and every GPU implementation of the quick profile
lowers for an H100 at its shapes (so a GPU session spends no device time on an error that CPU
could have shown)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.kernels.gdpa import Case, attention_fn, quick_cases
from tests.kernels.helpers import (
    MOSAIC_GPU_CALL,
    REPO,
    TRITON_CALL,
    gpu_kernel_calls,
    normal_inputs,
    run_benchmark_smoke,
)

SCRIPT = REPO / "benchmarks" / "kernels" / "gdpa.py"
TIMING_KEYS = ("fwd_ms", "bwd_ms", "fwdbwd_ms", "fwd_tflops", "bwd_tflops", "fwdbwd_tflops")


def test_benchmark_smoke_writes_report(tmp_path):
    report = run_benchmark_smoke([str(SCRIPT)], tmp_path / "gdpa.json", timeout=120)
    assert report["baselines"]["copy_gbps"] > 0

    results = report["results"]
    assert {r["impl"] for r in results} == {"gdpa_reference", "tokamax_xla"}
    for r in results:
        assert r["error"] is None, r["error"]
        for key in ("name", "batch", "heads", "tq", "tkv", "head_dim", "lengths", "fwd_flops"):
            assert key in r, key
        assert all(r[k] > 0 for k in TIMING_KEYS), r
        # FLOPs on real tokens: Σ_rows 4·q_len·min(kv_len, 2w + 1)·D·H (the smoke case is a
        # jagged, windowed, non-causal cross-attention).
        assert r["window"] is not None
        assert not r["causal"]
        kv_eff = [min(n, 2 * r["window"] + 1) for n in r["kv_lengths"]]
        real = sum(q * kv for q, kv in zip(r["q_lengths"], kv_eff, strict=True))
        assert r["fwd_flops"] == 4 * real * r["head_dim"] * r["heads"]
        assert max(r["q_lengths"]) <= r["tq"]
        assert min(r["q_lengths"]) >= 1
        # Minimal traffic on real tokens (bf16): fwd Q, O, K, V; bwd Q, dO, dQ, K, V, dK, dV.
        row = 2 * r["heads"] * r["head_dim"]
        q_sum, kv_sum = sum(r["q_lengths"]), sum(r["kv_lengths"])
        assert r["fwd_bytes"] == row * (2 * q_sum + 2 * kv_sum)
        assert r["bwd_bytes"] == row * (3 * q_sum + 4 * kv_sum)
        for kind in ("fwd", "bwd"):
            gbps = r[f"{kind}_bytes"] / r[f"{kind}_ms"] * 1e-6
            assert np.isclose(r[f"{kind}_gbps"], gbps)
            assert np.isclose(
                r[f"{kind}_fraction_of_copy"], gbps / report["baselines"]["copy_gbps"]
            )
            assert r[f"{kind}_fraction_of_matmul"] > 0


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
