"""Bench arithmetic (FLOPs, MFU, roofline, peaks), the result schema and the compare report."""

from __future__ import annotations

import copy
import json

import pytest

from kunlun_jax.bench.accounting import TRAIN_FACTOR, example_flops, flops_section, mfu
from kunlun_jax.bench.compare import load_records, markdown_report
from kunlun_jax.bench.roofline import DevicePeak, roofline, table_peak
from kunlun_jax.bench.schema import (
    RECORD,
    SchemaError,
    bench_document,
    markdown,
    validate_bench,
    validate_record,
)
from kunlun_jax.config import load_config, to_dict
from kunlun_jax.data.synthetic import feature_spec
from kunlun_jax.flops import model_flops

PEAK = DevicePeak("chip", bf16_tflops=100.0, hbm_gbps=1000.0, hbm_gib=16.0, source="test")


def test_mfu_is_model_flops_over_time_over_peak():
    # 1e12 FLOPs per step in 0.1 s is 10 TFLOP/s: 10% of a 100 TFLOP/s chip.
    assert mfu(1e12, 0.1, 100e12) == pytest.approx(0.10)
    assert mfu(1e12, 0.1, None) is None
    with pytest.raises(ValueError, match="step_seconds"):
        mfu(1e12, 0.0, 100e12)


def test_train_flops_are_three_forwards_of_the_analytic_model():
    cfg = load_config("tiny")
    spec = feature_spec(cfg.data.synthetic)
    f = example_flops(cfg, spec, batch_size=256)
    report = model_flops(cfg.model, spec, batch_size=256)
    assert f.source == "analytic"
    assert f.forward == report.forward
    assert f.train == TRAIN_FACTOR * report.forward
    assert f.params == report.params
    # The reference path computes full (windowed-away) score matrices: the dense count is larger.
    assert f.dense_train > f.train


def test_flops_section_ratio_and_real_tokens():
    cfg = load_config("tiny")
    spec = feature_spec(cfg.data.synthetic)
    dense = example_flops(cfg, spec, batch_size=64).dense_train
    section = flops_section(
        cfg, spec, batch_size=64, xla_train_per_example=1.1 * dense, real_lengths={"click": 3.0}
    )
    assert section["xla_over_analytic_dense"] == pytest.approx(1.1)
    assert section["train_per_example_real_tokens"] < section["train_per_example"]


def test_roofline_takes_the_slower_of_compute_and_memory():
    compute_bound = roofline(flops=1e12, bytes_accessed=1e6, peak=PEAK)
    assert compute_bound.bound_s == pytest.approx(0.01)
    assert compute_bound.limiter == "compute"
    memory_bound = roofline(flops=1e9, bytes_accessed=1e10, peak=PEAK)
    assert memory_bound.bound_s == pytest.approx(0.01)
    assert memory_bound.limiter == "memory"
    with pytest.raises(ValueError, match="must be >= 0"):
        roofline(-1.0, 0.0, PEAK)


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA B200", "B200"),
        ("TPU v5 lite", "TPU v5e"),
        ("TPU v5", "TPU v5p"),
        ("TPU v6 lite", "TPU v6e"),
    ],
)
def test_peak_table_matches_jax_device_kinds(kind, name):
    assert table_peak(kind).name == name


def test_no_table_peak_for_cpu_or_unknown_devices():
    assert table_peak("cpu") is None
    assert table_peak("NVIDIA H100 PCIe") is None  # a different (lower) peak: not guessed


def _measured(name="tiny baseline", device="cpu", median=0.1):
    return dict(
        kind="measured",
        name=name,
        variant="baseline",
        config_name="tiny",
        overrides=[],
        config=to_dict(load_config("tiny")),
        environment=dict(
            device_kind=device,
            platform="cpu",
            device_count=1,
            jax="0",
            jaxlib="0",
            python="3",
            date="2026-01-01T00:00:00+00:00",
            command="test",
        ),
        batch_size=256,
        num_devices=1,
        flops=dict(
            convention="test convention",
            source="analytic",
            forward_per_example=1e6,
            train_per_example=3e6,
            train_per_example_real_tokens=None,
            dense_train_per_example=3.2e6,
            xla_train_per_example=3.3e6,
            xla_over_analytic_dense=3.3 / 3.2,
        ),
        timing=dict(
            steps=10,
            warmup=2,
            distinct_batches=2,
            compile_s=1.0,
            median_s=median,
            p10_s=median * 0.9,
            p90_s=median * 1.2,
            examples_per_sec=256 / median,
            final_loss=0.6,
        ),
        ceilings=dict(
            matmul_dtype="float32",
            matmul_n=1024,
            matmul_tflops=0.05,
            copy_bytes=1 << 20,
            copy_gbps=5.0,
        ),
        table_peak=None,
        memory=dict(
            peak_bytes=3 << 20,
            peak_source="memory_analysis",
            argument_bytes=1,
            output_bytes=1,
            temp_bytes=1,
            alias_bytes=0,
        ),
        mfu=dict(vs_table_peak=None, vs_measured_matmul=0.15, vs_table_peak_real_tokens=None),
        notes=["a caveat"],
    )


def _estimate():
    r = _measured(name="tiny v5e")
    for key in ("timing", "ceilings", "memory", "mfu"):
        del r[key]
    r["kind"] = "compiled_estimate"
    r["estimate"] = dict(
        topology="v5e:2x2",
        device_kind="TPU v5 lite",
        xla_flops_per_device=2e11,
        xla_bytes_per_device=1e9,
        memory_per_device_bytes=1 << 30,
        peak=dict(name="TPU v5e", bf16_tflops=197.0, hbm_gbps=819.0, source="doc"),
        compute_s=2e11 / 197e12,
        memory_s=1e9 / 819e9,
        roofline_step_s=1e9 / 819e9,
        limiter="memory",
        roofline_examples_per_sec=256 / (1e9 / 819e9),
    )
    return r


def test_schema_accepts_both_kinds():
    validate_bench(bench_document([_measured(), _estimate()]))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.update(kind="guessed"), r"record.kind = 'guessed' is not one of"),
        (lambda r: r["timing"].pop("median_s"), r"record.timing.median_s is missing"),
        (lambda r: r["timing"].update(median_s="fast"), r"record.timing.median_s must be number"),
        (
            lambda r: r["mfu"].update(vs_measured_matmul=None),
            r"vs_measured_matmul must not be null",
        ),
        (lambda r: r.update(batch_size=True), r"record.batch_size must be int"),
        (lambda r: r.update(estimate=_estimate()["estimate"]), r"measured record needs"),
        (lambda r: r.pop("ceilings"), r"measured record needs"),
    ],
)
def test_schema_rejects_bad_measured_records(mutate, message):
    record = copy.deepcopy(_measured())
    mutate(record)
    with pytest.raises(SchemaError, match=message):
        validate_record(record)


def test_schema_never_lets_an_estimate_carry_measured_times():
    record = _estimate()
    record["timing"] = _measured()["timing"]
    with pytest.raises(SchemaError, match="never mixed with measurements"):
        validate_record(record)


def test_schema_rejects_wrong_headers():
    with pytest.raises(SchemaError, match="schema must be"):
        validate_bench({"schema": "other", "schema_version": 1, "records": []})
    with pytest.raises(SchemaError, match="schema_version"):
        validate_bench({"schema": "kunlun-jax/bench", "schema_version": 99, "records": []})


def test_schema_reference_lists_nested_fields():
    rows = markdown(RECORD)
    assert any(row.startswith("| `timing.median_s` |") for row in rows)
    assert any(row.startswith("| `estimate.roofline_step_s` |") for row in rows)


def test_compare_renders_measured_and_estimates_in_separate_tables(tmp_path):
    a, b = tmp_path / "cpu.json", tmp_path / "tpu.json"
    a.write_text(json.dumps(bench_document([_measured(median=0.1)])))
    b.write_text(json.dumps(bench_document([_measured("tiny gpu", "NVIDIA H200"), _estimate()])))
    text = markdown_report(load_records([a, b]), link_dir="results")
    measured, estimates = text.split("### Compiled estimates")
    assert "roofline" not in measured.split("\n", 1)[1].split("Notes")[0]
    rows = [line for line in measured.splitlines() if line.startswith("| tiny")]
    assert len(rows) == 2
    # median 100 ms [90, 120]; 256 / 0.1 = 2,560 examples/s; 3e6 FLOPs = 0.003 GFLOPs;
    # MFU 15.00%; XLA/analytic 1.031; source linked.
    # MFU 15.00%, on real tokens unknown (no real-token count)
    assert "| 100 [90, 120] | 2,560 | 0.003 | – | 15.00% | – |" in rows[0]
    header, rule = measured.splitlines()[2:4]
    assert rule.count("---") == header.count("|") - 1
    assert "| 1.031 | [cpu.json](results/cpu.json) |" in rows[0]
    assert "NVIDIA H200" in rows[1]
    est_rows = [line for line in estimates.splitlines() if line.startswith("| tiny")]
    assert len(est_rows) == 1
    assert "v5e:2x2 (TPU v5 lite)" in est_rows[0]
    assert "| memory |" in est_rows[0]
    assert "- a caveat" in text


def test_real_token_mfu_is_recorded_or_derived_from_the_flop_counts():
    from kunlun_jax.bench.compare import real_tokens_mfu

    record = _measured()
    record["flops"]["train_per_example_real_tokens"] = 1.5e6  # half the padded 3e6
    assert real_tokens_mfu(record) == pytest.approx(0.075)  # a record from before the field
    record["mfu"]["vs_measured_matmul_real_tokens"] = 0.07
    validate_record(record)
    assert real_tokens_mfu(record) == 0.07


def test_compare_names_the_bad_file(tmp_path):
    bad = tmp_path / "bad.json"
    record = _measured()
    del record["flops"]
    bad.write_text(
        json.dumps({"schema": "kunlun-jax/bench", "schema_version": 1, "records": [record]})
    )
    with pytest.raises(SchemaError, match=r"bad\.json: records\[0\]\.flops is missing"):
        load_records([bad])


@pytest.mark.parametrize("warmup", [1, 3])
def test_median_of_means_times_only_after_compile_and_warmup(warmup):
    from kunlun_jax.bench.ceilings import median_of_means

    calls = []
    median_of_means(lambda: calls.append(1), (), iters=4, repeats=3, warmup=warmup)
    assert len(calls) == 1 + warmup + 3 * 4


def test_median_of_means_warms_up_for_at_least_warmup_s():
    import time

    from kunlun_jax.bench.ceilings import median_of_means

    calls = []
    median_of_means(lambda: calls.append(time.sleep(0.01)), (), iters=1, repeats=1, warmup_s=0.1)
    assert len(calls) >= 1 + 9 + 1  # compile call, >= 0.1 s of 10 ms calls, the timed one


@pytest.mark.parametrize(
    ("before", "after", "source"),
    [(None, 100, "memory_stats"), (50, 100, "memory_stats"), (100, 100, "memory_analysis")],
)
def test_a_variant_reads_the_device_peak_only_where_it_raised_it(
    monkeypatch, before, after, source
):
    """The device counter only grows: a later variant that peaked lower reads XLA's analysis."""
    from kunlun_jax.bench import train_bench

    monkeypatch.setattr(train_bench, "_device_peak", lambda: after)
    monkeypatch.setattr(train_bench, "memory_analysis", lambda _: {"peak_bytes": 7, "temp": 1})
    memory = train_bench._memory(object(), before)
    assert memory == {
        "peak_bytes": after if source == "memory_stats" else 7,
        "peak_source": source,
        "temp": 1,
    }
