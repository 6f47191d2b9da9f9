"""Smoke test of the SWA benchmark script: runs on CPU with --smoke, writes the JSON schema
(per-case results, the time-vs-T sweep with full attention beside SWA) and the plot; and the
quick profile's tokamax kernels lower for an H100 at its shapes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from benchmarks.gpu_session import target_lines
from benchmarks.kernels.swa import attention_fn, quick_cases, sweep_summary
from tests.kernels.helpers import (
    MOSAIC_GPU_CALL,
    TRITON_CALL,
    gpu_kernel_calls,
    run_benchmark_smoke,
)

TIMING_KEYS = ("fwd_ms", "bwd_ms", "fwdbwd_ms", "fwd_tflops", "bwd_tflops", "fwdbwd_tflops")


def test_benchmark_smoke_writes_report(tmp_path):
    report = run_benchmark_smoke("swa", tmp_path, timeout=180)
    (line,) = target_lines(tmp_path)  # what a GPU session prints beside the target
    speedups = report["sweep"]["impls"]["tokamax_xla"]["speedup_vs_best_full"]
    assert line == "swa w=2 tokamax_xla vs best full attention: " + ", ".join(
        f"T={t} x{x:.2f}" for t, x in zip((16, 32), speedups, strict=True)
    )
    assert (tmp_path / "swa.png").stat().st_size > 0

    results = report["results"]
    assert {r["impl"] for r in results} == {"tokamax_xla"}
    assert len(results) == 4  # T in (16, 32), windowed and full
    for r in results:
        assert r["error"] is None, r["error"]
        assert all(r[k] > 0 for k in TIMING_KEYS), r
        # FLOPs: 4·D·H per (query, key) pair inside the window (full lengths here; the
        # window is shorter at both ends of the sequence).
        t, w = r["tq"], r["window"]
        pairs = t * t if w is None else sum(min(i + w, t - 1) - max(i - w, 0) + 1 for i in range(t))
        assert r["fwd_flops"] == 4 * r["batch"] * pairs * r["head_dim"] * r["heads"]

    sweep = report["sweep"]
    assert sweep["window"] == 2
    assert sweep["t"] == [16, 32]
    for impl, series in sweep["impls"].items():
        for kind in ("swa", "full"):
            want = [
                r["fwdbwd_ms"]
                for r in results
                if r["impl"] == impl and (r["window"] is None) == (kind == "full")
            ]
            assert series[f"{kind}_fwdbwd_ms"] == want
        assert series["speedup_vs_full"] == [
            f / s for s, f in zip(series["swa_fwdbwd_ms"], series["full_fwdbwd_ms"], strict=True)
        ]
        # One implementation ran: the fastest full attention is its own.
        assert series["speedup_vs_best_full"] == series["speedup_vs_full"]
    assert [b["impl"] for b in sweep["best_full"]] == ["tokamax_xla"] * 2


def test_the_swa_target_compares_with_the_fastest_full_attention():
    def row(impl, t, window, ms):
        return dict(impl=impl, tq=t, window=window, lengths="full", causal=False, fwdbwd_ms=ms)

    results = [
        row("jax_triton", 4096, 128, 1.0),
        row("jax_triton", 4096, None, 8.0),
        row("tokamax_cudnn", 4096, 128, 2.0),
        row("tokamax_cudnn", 4096, None, 4.0),
    ]
    sweep = sweep_summary(results)
    assert sweep["best_full"] == [dict(impl="tokamax_cudnn", fwdbwd_ms=4.0)]
    assert sweep["impls"]["jax_triton"]["speedup_vs_full"] == [8.0]
    assert sweep["impls"]["jax_triton"]["speedup_vs_best_full"] == [4.0]
    assert sweep["impls"]["tokamax_cudnn"]["speedup_vs_best_full"] == [2.0]


@pytest.mark.filterwarnings("ignore:The Pallas Triton backend is deprecated:DeprecationWarning")
@pytest.mark.parametrize(
    ("impl", "target", "count"),
    [("tokamax_mosaic", MOSAIC_GPU_CALL, 3), ("tokamax_triton", TRITON_CALL, 2)],
)
def test_quick_profile_lowers_for_an_h100(impl, target, count):
    for case in quick_cases(window=128, heads=8, head_dim=128):
        x = jax.ShapeDtypeStruct((case.batch, case.tq, case.heads, case.head_dim), jnp.bfloat16)
        lengths = jax.ShapeDtypeStruct((case.batch,), jnp.int32)
        calls = gpu_kernel_calls(attention_fn(impl, case, None, None), x, x, x, lengths, lengths)
        assert calls == {target: count}, (impl, case, calls)
