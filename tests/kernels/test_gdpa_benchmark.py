"""Smoke test of the GDPA benchmark script: runs on CPU with --smoke, writes the JSON schema."""

from __future__ import annotations

from tests.kernels.helpers import REPO, run_benchmark_smoke

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
