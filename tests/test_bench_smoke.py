"""`kunlun-jax bench`, `compare` and `scaling sweep|fit` end to end on a very small config."""

from __future__ import annotations

import json

import pytest

from kunlun_jax.bench import sweep
from kunlun_jax.bench.accounting import xla_cost
from kunlun_jax.bench.schema import SWEEP_SCHEMA, load, validate_bench
from kunlun_jax.bench.train_bench import ablation_variants, xla_train_flops
from kunlun_jax.cli import main
from kunlun_jax.config import ConfigError, load_config
from kunlun_jax.parallel.aot import lower_train_step
from kunlun_jax.train.experiment import plan_config
from tests.conftest import FAST_TINY, REPO

# tests/test_train.py's config too, so the compile cache shares programs with it. The
# optimizer schedule decays over max(steps, warmup_steps + 1) = 51 steps for any steps <= 50,
# so the bench and both sweep points (train.steps = 3 and 6) run one and the same compiled
# train step.
SMALL = FAST_TINY


def _sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


@pytest.fixture(scope="module")
def bench_file(tmp_path_factory):
    """The bench JSON, with 2 steps after the timed ones traced into traces/ beside it."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    args = ["bench", "--config", "tiny", *_sets(SMALL), "--steps", "3", "--warmup", "1"]
    args += ["--profile", str(out.with_name("traces")), "--profile-steps", "2"]
    assert main([*args, "--batches", "2", "--note", "smoke test", "--out", str(out)]) == 0
    return out


def test_bench_writes_a_valid_measured_record(bench_file):
    doc = json.loads(bench_file.read_text())
    validate_bench(doc)
    (r,) = doc["records"]
    t, f, m = r["timing"], r["flops"], r["mfu"]
    assert r["kind"] == "measured"
    assert r["environment"]["platform"] == "cpu"
    assert t["steps"] == 3
    assert 0 < t["p10_s"] <= t["median_s"] <= t["p90_s"]
    assert t["examples_per_sec"] == pytest.approx(64 / t["median_s"])
    assert 0 < t["final_loss"] < 2
    # MFU is recomputable from the record: model FLOPs / time / measured matmul peak.
    expected = f["train_per_example"] * 64 / t["median_s"] / (r["ceilings"]["matmul_tflops"] * 1e12)
    assert m["vs_measured_matmul"] == pytest.approx(expected)
    assert m["vs_table_peak"] is None  # a CPU has no published peak
    # XLA's count of the whole step (norms, softmax, optimizer too) is near the analytic one.
    assert 0.9 < f["xla_over_analytic_dense"] < 1.5
    assert f["train_per_example_real_tokens"] < f["train_per_example"]
    assert r["memory"]["peak_bytes"] > 0
    assert r["memory"]["peak_source"] == "memory_analysis"
    assert "smoke test" in r["notes"]
    (traced,) = (n for n in r["notes"] if n.startswith("kernels traced"))
    assert traced.startswith("kernels traced (model.kernels=reference): attention: reference × ")
    assert "gdpa: reference × " in traced
    log_dir = bench_file.with_name("traces") / "baseline"
    assert (
        f"device trace of 2 untimed steps after the timed ones: xprof --logdir {log_dir}"
        in (r["notes"])
    )
    assert len(list(log_dir.glob("plugins/profile/*/*.xplane.pb"))) == 1


def test_compare_cli_renders_the_bench_file(bench_file, tmp_path, capsys):
    table, plot = tmp_path / "table.md", tmp_path / "fig.png"
    assert main(["compare", str(bench_file), "--out", str(table), "--plot", str(plot)]) == 0
    text = table.read_text()
    assert "| tiny baseline | cpu | 1 | 64 |" in text
    assert "Compiled estimates" not in text
    assert plot.stat().st_size > 1000
    assert text in capsys.readouterr().out
    # Existing outputs are replaced only with --overwrite; the refusal names them.
    table.write_text("mine")
    assert main(["compare", str(bench_file), "--out", str(table), "--plot", str(plot)]) == 2
    err = capsys.readouterr().err
    assert f"{table}, {plot} already exist: pass --overwrite" in err
    assert table.read_text() == "mine"
    assert main(["compare", str(bench_file), "--out", str(table), "--overwrite"]) == 0
    assert table.read_text() == text


def test_compare_cli_reports_a_bad_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "kunlun-jax/bench", "schema_version": 1}))
    assert main(["compare", str(bad)]) == 2
    assert "records must be a non-empty list" in capsys.readouterr().err
    # NaN is no measurement; the report never overwrites an input file.
    good = tmp_path / "good.json"
    record = json.loads((REPO / "benchmarks/results/aot_base_v5p_4x4x4_record.json").read_text())
    good.write_text(json.dumps(record))
    record["records"][0]["batch_size"] = float("nan")
    bad.write_text(json.dumps(record))
    assert main(["compare", str(bad)]) == 2
    assert "batch_size must be" in capsys.readouterr().err
    assert main(["compare", str(good), "--out", str(good)]) == 2
    assert "is one of the input files" in capsys.readouterr().err
    assert json.loads(good.read_text())["records"]


def test_ablation_switches_each_technique_off_once():
    variants, notes = ablation_variants(load_config("tiny"), platform="cpu")
    assert [v.name for v in variants] == [
        "baseline",
        "-hsp (mean pooling)",
        "-swa (full attention)",
        "-compskip",
        "-event_personalization",
    ]
    assert any("interpret mode" in n for n in notes)
    gpu, _ = ablation_variants(load_config("tiny", ["model.compskip=false"]), platform="gpu")
    assert gpu[1].overrides == ("model.kernels=pallas",)
    assert "-compskip" not in [v.name for v in gpu]
    for v in variants:  # every variant is a valid config
        load_config("tiny", v.overrides)
    with pytest.raises(ConfigError, match="Kunlun's techniques"):
        ablation_variants(load_config("tiny", ["model.arch=interformer"]), platform="cpu")


def test_sweep_and_fit_cli(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["scaling", "sweep", "--config", "tiny", *_sets(SMALL), "--out", str(out)]
    args += ["--grid", "train.steps=3,6"]
    assert main(args) == 0
    points = load(out / "sweep.json", SWEEP_SCHEMA)["points"]
    assert [p["name"] for p in points] == ["steps=3", "steps=6"]
    assert [p["examples"] for p in points] == [3 * 64, 6 * 64]
    assert points[1]["train_compute"] == pytest.approx(2 * points[0]["train_compute"])
    for p in points:
        assert p["family"] == "kunlun"
        assert p["data"] == "synthetic-planted"
        assert 0 < p["floor_ne"] < p["ne"] < 1.5
        assert (out / p["name"] / "metrics.json").is_file()
    # A rerun reads the finished points back instead of retraining them.
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().out.count("already trained") == 2
    # A rerun under another config refuses to read those runs back (or to replace them).
    assert main([*args, "--set", "train.learning_rate=0.01"]) == 2
    assert "holds a run of another config" in capsys.readouterr().err
    # Two points are too few for any fit: each form says why; the figure is still drawn.
    assert main(["scaling", "fit", str(out), "--n-boot", "1"]) == 2
    assert "--n-boot must be >= 20" in capsys.readouterr().err
    assert main(["scaling", "fit", str(out), "--n-boot", "20"]) == 0
    text = capsys.readouterr().out
    assert "power      skipped: this fit needs >= 3 points, got 2" in text
    fit = json.loads((out / "fit.json").read_text())
    assert fit["groups"][0]["floor_ne"] == pytest.approx(points[0]["floor_ne"])
    assert (out / "scaling.png").stat().st_size > 1000


def test_xla_counts_the_plain_jnp_step_once_over_the_global_batch():
    """XLA's cost analysis counts nothing inside Pallas calls on GPU, so XLA's count is of the
    step with plain-jnp kernels, lowered before partitioning: the same (to 0.4%: the mesh's
    sharding annotations) for model.kernels=auto on 4 devices as for reference on one, and
    within the 5% that XLA's optimizations change of the compiled one-device program's own
    count (45.0 vs 47.5 MFLOP). On 4 devices the compiled per-device count times 4 is 52.1
    MFLOP: it counts replicated work 4 times."""
    counts = {}
    for kernels, data in (("reference", 1), ("auto", 4)):
        config = load_config("tiny", [*SMALL, f"model.kernels={kernels}", f"mesh.data={data}"])
        layout, example = plan_config(config)
        counts[kernels] = xla_train_flops(layout, example)
        if data == 1:
            with layout.activate():
                own, _ = xla_cost(lower_train_step(layout, example).compile())
    assert counts["auto"] == pytest.approx(counts["reference"], rel=0.01)
    assert counts["reference"] == pytest.approx(own, rel=0.08)


def test_a_baseline_without_an_analytic_model_is_counted_by_xla():
    """Sweep points of a baseline arch take XLA's count per example (lowered, plain jnp),
    near the compiled one-device program's own."""
    config = load_config("tiny", [*SMALL, "model.arch=dcnv2"])
    per_example = sweep._xla_train_per_example(config)
    layout, example = plan_config(config)
    with layout.activate():
        own, _ = xla_cost(lower_train_step(layout, example).compile())
    assert per_example == pytest.approx(own / config.train.batch_size, rel=0.08)
