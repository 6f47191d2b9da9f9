"""Smoke test of the HSP benchmark: runs on CPU with --smoke, writes the JSON schema; and the
quick profile's GPU kernels lower for an H100 at its shapes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.gpu_session import target_lines
from benchmarks.kernels import hsp
from benchmarks.kernels.hsp import pool_fn, quick_cases
from tests.kernels.helpers import (
    MOSAIC_GPU_CALL,
    TRITON_CALL,
    gpu_kernel_calls,
    run_benchmark_smoke,
)

RATES = ("pool_fwd_tflops", "pool_fwdbwd_tflops", "kv_gbps", "examples_per_s")


def test_benchmark_smoke_writes_report(tmp_path):
    report = run_benchmark_smoke("hsp", tmp_path, timeout=180)
    speedup = report["results"][0]["impls"]["tokamax_xla"]["hsp_speedup_vs_reference"]
    assert target_lines(tmp_path) == [  # what a GPU session prints beside the target
        f"hsp B2_T32_longtail tokamax_xla: fwd+bwd x{speedup:.2f} vs reference"
    ]

    (r,) = report["results"]
    assert set(r["impls"]) == {"hsp_reference", "tokamax_xla"}
    assert r["tail"]["tail_fwd_ms"] > 0
    assert r["tail"]["tail_fwdbwd_ms"] > 0
    lengths = np.array(r["kv_lengths"])
    assert len(lengths) == r["batch"]
    assert lengths.min() >= 1
    assert lengths.max() <= r["t"]
    # FLOPs on real tokens: 4·S·Σ len·H·D.
    d = r["heads"] * r["head_dim"]
    assert r["pool_fwd_flops"] == 4 * r["seeds"] * d * lengths.sum()
    for impl, e in r["impls"].items():
        assert e["error"] is None, (impl, e["error"])
        assert not e["interpret"]
        for key in ("pool_fwd_ms", "pool_fwdbwd_ms", "hsp_fwd_ms", "hsp_fwdbwd_ms", *RATES):
            assert e[key] > 0, (impl, key)
        assert e["tail_share_of_hsp"] > 0
        assert e["examples_per_s"] == r["batch"] / e["hsp_fwdbwd_ms"] * 1e3
        assert e["hsp_speedup_vs_reference"] > 0
    assert r["impls"]["hsp_reference"]["hsp_speedup_vs_reference"] == 1.0


def test_a_case_is_saved_after_the_tail_and_after_every_implementation():
    """A GPU session's time limit may end a case midway: what was measured is on disk."""
    args = hsp.parse_args(["--smoke", "--out", "unused.json"])
    saved = []

    def save(result):
        saved.append((result["tail"]["tail_fwdbwd_ms"], sorted(result["impls"])))

    hsp.run_case(hsp.smoke_cases()[0], ["hsp_reference"], args, save)
    assert [impls for _, impls in saved] == [[], ["hsp_reference"]]
    assert saved[0][0] > 0


@pytest.mark.filterwarnings("ignore:The Pallas Triton backend is deprecated:DeprecationWarning")
@pytest.mark.parametrize(
    ("impl", "target", "count"),
    [
        ("hsp_pallas", TRITON_CALL, 2),
        ("tokamax_mosaic", MOSAIC_GPU_CALL, 3),
        ("tokamax_triton", TRITON_CALL, 2),
    ],
)
def test_quick_profile_lowers_for_an_h100(impl, target, count):
    for case in quick_cases():
        seeds = jax.ShapeDtypeStruct((case.seeds, case.heads, case.head_dim), jnp.bfloat16)
        kv = jax.ShapeDtypeStruct((case.batch, case.t, case.heads, case.head_dim), seeds.dtype)
        lengths = jax.ShapeDtypeStruct((case.batch,), jnp.int32)
        calls = gpu_kernel_calls(pool_fn(impl, None), seeds, kv, kv, lengths)
        assert calls == {target: count}, (impl, case, calls)
