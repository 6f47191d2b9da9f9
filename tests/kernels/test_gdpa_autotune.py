"""GDPA tile autotuning: measured rows before the hand-picked table, the override the tuner
times candidates under, and the tuner end to end on CPU (jax_triton in Triton's interpreter:
the plumbing, not the timings), including resume, the budget and --install."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from benchmarks.kernels import gdpa_autotune
from pallas_kernels.common.tiles import BlockSizes
from pallas_kernels.gdpa import gdpa, mosaic_gpu
from pallas_kernels.gdpa.tuning import (
    default_block_sizes,
    override_block_sizes,
    table_block_sizes,
    tuned_block_sizes,
)
from tests.kernels.helpers import normal_inputs

H100 = "NVIDIA H100 80GB HBM3"


def _row(impl, kind, dim, regime, sizes):
    return dict(impl=impl, device_kind=kind, head_dim=dim, regime=regime, sizes=sizes)


def test_measured_rows_match_impl_exact_device_regime_and_the_tightest_head_dim():
    a, b = BlockSizes(128, 32, 64, 64, 8, 3), BlockSizes(64, 128, 32, 32, 4, 2)
    rows = (
        _row("pallas_triton", H100, 128, "long", dataclasses.asdict(a)),
        _row("pallas_triton", H100, 64, "long", dataclasses.asdict(b)),
    )
    assert tuned_block_sizes(rows, "pallas_triton", H100, 64, "long") == b
    assert tuned_block_sizes(rows, "pallas_triton", H100, 65, "long") == a
    assert tuned_block_sizes(rows, "pallas_triton", H100, 129, "long") is None
    assert tuned_block_sizes(rows, "jax_triton", H100, 64, "long") is None
    assert tuned_block_sizes(rows, "pallas_triton", "NVIDIA H200", 64, "long") is None
    assert tuned_block_sizes(rows, "pallas_triton", H100, 64, "short") is None


def test_override_wins_and_explicit_blocks_still_win_over_it():
    table = table_block_sizes("gpu", H100, 128, "long")
    assert default_block_sizes("gpu", H100, 128, 4096, "pallas_triton") == table
    tiny = BlockSizes(16, 16, 16, 16)
    with override_block_sizes(tiny):
        assert default_block_sizes("gpu", H100, 128, 4096, "pallas_triton") == tiny
        q, k, v = normal_inputs(0, [(1, 40, 1, 32)] * 3, "float32")
        # Same numbers whatever the tiles: the override only changes the blocking.
        got = gdpa(q, k, v, backend="jax_triton")
        want = gdpa(q, k, v, backend="jax_triton", block_q=32, block_kv=64)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    assert default_block_sizes("gpu", H100, 128, 4096, "pallas_triton") == table


def test_tuner_end_to_end_on_cpu(tmp_path):
    out = tmp_path / "tune.json"
    args = ["--impl", "jax_triton", "--smoke", "--iters", "1", "--warmup", "1"]
    report = gdpa_autotune.main([*args, "--out", str(out)])
    assert json.loads(out.read_text()) == report
    assert [(k["head_dim"], k["regime"]) for k in report["keys"]] == [(32, "short"), (32, "long")]
    for key in report["keys"]:
        assert len(key["candidates"]) == 2
        assert all(c["error"] is None and c["ms"] > 0 for c in key["candidates"])
        assert key["best"]["ms"] == min(c["ms"] for c in key["candidates"])
        assert key["table_ms"] > 0
        assert key["speedup_vs_table"] > 0

    # Resuming from the report times nothing new; a zero budget stops before any candidate.
    again = gdpa_autotune.main(
        [*args, "--out", str(tmp_path / "b.json"), "--resume-from", str(out)]
    )
    assert [len(k["candidates"]) for k in again["keys"]] == [2, 2]
    assert again["resumed_from"] == dict(path=str(out), environment=report["environment"])
    stopped = gdpa_autotune.main([*args, "--out", str(tmp_path / "c.json"), "--budget-s", "0"])
    assert all(k["stopped"] == "budget" and not k["candidates"] for k in stopped["keys"])

    table = tmp_path / "tuned.json"
    rows = gdpa_autotune.install(report, table)
    assert len(rows) == 2
    assert gdpa_autotune.install(report, table) == rows  # same keys replace, not duplicate
    best_short = BlockSizes(**report["keys"][0]["best"]["sizes"])
    kind = report["environment"]["device_kind"]
    assert tuned_block_sizes(tuple(rows), "jax_triton", kind, 32, "short") == best_short


def test_search_spaces():
    triton = gdpa_autotune.candidates("pallas_triton")
    assert len(triton) == len(set(triton)) == 36
    assert all(c.block_q == c.block_q_bwd and c.block_kv == c.block_kv_bwd for c in triton)
    warps = {(c.triton_options(False)[0], c.triton_options(True)[0]) for c in triton}
    assert warps == {(4, 4), (8, 4), (8, 8)}  # (forward, backward)
    assert all(
        c.block_q % 128 == 0 and c.block_kv % 128 == 0
        for c in gdpa_autotune.candidates("pallas_tpu")
    )
    # Mosaic GPU on CPU: Hopper's kernels (the interpreter); each candidate a valid tile.
    mosaic = gdpa_autotune.candidates("pallas_mosaic_gpu")
    assert {(c.block_kv, c.block_q_bwd) for c in mosaic} == {
        (64, 32),
        (64, 64),
        (128, 32),
        (128, 64),
    }
    assert all(
        mosaic_gpu.block_sizes("hopper", "", 64, 64, c.block_kv, c.block_q_bwd) == c for c in mosaic
    )
    untuned = gdpa_autotune.untuned_block_sizes("pallas_mosaic_gpu", "cpu", 64, "long")
    assert untuned == mosaic_gpu.untuned_block_sizes("hopper") in mosaic
