"""The evaluation protocol: seeds, mean ± std, the Markdown table, and `kunlun-jax study`."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from kunlun_jax import study
from kunlun_jax.cli import main
from kunlun_jax.config import load_config


def test_mean_std_is_the_sample_statistic():
    out = study.mean_std([0.80, 0.82, 0.84])
    assert out["mean"] == pytest.approx(0.82)
    assert out["std"] == pytest.approx(0.02)  # ddof = 1
    assert out["n"] == 3
    assert math.isnan(study.mean_std([0.5])["std"])
    with pytest.raises(ValueError, match="at least one"):
        study.mean_std([])


def test_aggregate_keeps_metrics_every_run_has():
    runs = [
        {"ne": 0.9, "auc": 0.70, "log_loss": 0.6, "calibration": 1.0, "oracle_ne": 0.5},
        {"ne": 0.8, "auc": 0.74, "log_loss": 0.5, "calibration": 1.1, "step": 300},
    ]
    out = study.aggregate(runs)
    assert set(out) == {"ne", "auc", "log_loss", "calibration"}
    assert out["auc"]["mean"] == pytest.approx(0.72)
    assert out["ne"]["std"] == pytest.approx(np.std([0.9, 0.8], ddof=1))


def test_aggregate_and_table_carry_every_tasks_metrics():
    runs = [
        {"ne": 0.9, "auc": 0.7, "love/ne": 0.95, "love/auc": 0.6, "love/count": 9.0},
        {"ne": 0.8, "auc": 0.7, "love/ne": 0.85, "love/auc": 0.8, "love/count": 9.0},
    ]
    out = study.aggregate(runs)
    assert set(out) == {"ne", "auc", "love/ne", "love/auc"}
    assert out["love/ne"]["mean"] == pytest.approx(0.9)
    multi = _entry("kunlun", [0.8, 0.82])
    multi["summary"]["love/ne"] = study.mean_std([0.9, 0.92])
    lines = study.markdown_table({"entries": [multi, _entry("din", [0.85])]}).splitlines()
    assert "| NE (love) |" in lines[0]
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert "| 0.9100 ± 0.0141 |" in lines[2]
    assert "| – |" in lines[3]


def test_seeds_vary_shuffling_only_on_real_data():
    synthetic = study.seeded(load_config("tiny"), 7)
    assert (synthetic.train.seed, synthetic.data.seed) == (7, 0)
    real = study.seeded(load_config("movielens"), 7)
    assert (real.train.seed, real.data.seed) == (7, 7)
    assert study.test_split(load_config("tiny")) == "eval"
    assert study.test_split(load_config("movielens")) == "test"


def _entry(arch: str, ne: list[float]) -> dict:
    return {
        "config": f"{arch}-cfg",
        "arch": arch,
        "split": "test",
        "steps": 300,
        "seeds": list(range(len(ne))),
        "params": 123_456,
        "forward_flops_per_example": 2.5e6,
        "summary": {
            "ne": study.mean_std(ne),
            "auc": study.mean_std([0.75] * len(ne)),
            "log_loss": study.mean_std([0.6] * len(ne)),
            "calibration": study.mean_std([1.01] * len(ne)),
        },
    }


def test_markdown_table_has_one_row_per_entry_with_mean_and_std():
    table = study.markdown_table(
        {"entries": [_entry("kunlun", [0.80, 0.82, 0.84]), _entry("dcnv2", [0.9])]}, "r.json"
    )
    lines = table.splitlines()
    assert len(lines) == 4
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert "| kunlun | `kunlun-cfg` | test | 3 | 300 | 0.8200 ± 0.0200 |" in lines[2]
    assert "| 0.9000 |" in lines[3]  # one seed: no std
    assert "| 123,456 | 2.50 | [json](r.json) |" in lines[2]
    assert "Bayes-optimal" not in lines[0]


def test_study_rejects_bad_seeds(tmp_path):
    with pytest.raises(ValueError, match="distinct"):
        study.run_study([load_config("tiny")], [1, 1], tmp_path)


def test_study_cli_trains_each_seed_and_writes_json_and_table(tmp_path, capsys):
    out = tmp_path / "study.json"
    args = ["study", "--config", "dcnv2", "--seeds", "0", "1", "--runs-dir", str(tmp_path)]
    args += ["--out", str(out), "--markdown", str(tmp_path / "t.md")]
    for o in (
        "train.steps=3",
        "train.batch_size=32",
        "data.num_train=256",
        "data.num_eval=64",
        "data.synthetic.num_users=50",
        "data.synthetic.num_items=80",
        "data.synthetic.max_history=8",
        "data.synthetic.mean_history=4",
        "mesh.data=1",
    ):
        args += ["--set", o]
    assert main(args) == 0
    captured = capsys.readouterr()
    err = captured.err  # a line per seed as it is done
    assert re.search(
        r"^dcnv2 seed 0: eval NE [0-9.]+, AUC [0-9.]+ \(trained in \d+ s\): ", err, re.M
    )
    assert re.search(r"^dcnv2 seed 1: eval NE", err, re.M)
    result = json.loads(out.read_text())
    (entry,) = result["entries"]
    assert (entry["arch"], entry["split"], entry["seeds"]) == ("dcnv2", "eval", [0, 1])
    assert [r["seed"] for r in entry["runs"]] == [0, 1]
    assert entry["runs"][0]["test"]["ne"] != entry["runs"][1]["test"]["ne"]  # seeds differ
    assert entry["summary"]["ne"]["n"] == 2
    assert np.isfinite(entry["summary"]["ne"]["std"])
    assert entry["forward_flops_per_example"] > 0
    assert entry["params"] > 0
    assert {"command", "date", "jax"} <= set(result["environment"])
    printed = captured.out
    assert "| dcnv2 | `dcnv2` | eval | 2 | 3 |" in printed
    assert (tmp_path / "t.md").read_text().strip() in printed
    assert main(["study", "--render", str(out)]) == 0
    (tmp_path / "bench.json").write_text('{"schema": "kunlun-jax/bench", "records": []}')
    capsys.readouterr()
    assert main(["study", "--render", str(tmp_path / "bench.json")]) == 2
    assert "is not a study result" in capsys.readouterr().err
    assert all(r["train_wall_s"] > 0 for r in entry["runs"])

    # Its outputs exist now: a re-run replaces them only with --overwrite, and says so
    # before training anything.
    written = out.read_text()
    assert main([*args, "--set", "train.steps=4"]) == 2
    assert f"{out}, {tmp_path / 't.md'} already exist: pass --overwrite" in capsys.readouterr().err
    assert out.read_text() == written
    assert sorted(p.name for p in tmp_path.glob("dcnv2-seed*")) == ["dcnv2-seed0", "dcnv2-seed1"]
    args.append("--overwrite")
    # Re-running the study reads the finished runs back instead of training them again ...
    assert main(args) == 0
    (again,) = json.loads(out.read_text())["entries"]
    assert [r["train_wall_s"] for r in again["runs"]] == [None, None]
    assert again["summary"] == entry["summary"]
    # ... and never replaces them with runs of a changed config.
    before = (tmp_path / "dcnv2-seed0" / "metrics.json").read_text()
    assert main([*args, "--set", "train.learning_rate=1e-2"]) == 2
    assert "dcnv2-seed0 holds a run of another config" in capsys.readouterr().err
    assert (tmp_path / "dcnv2-seed0" / "metrics.json").read_text() == before


def test_a_preempted_training_stops_the_study_for_a_resume(tmp_path, monkeypatch, capsys):
    """A study's training that stops for SIGTERM (checkpoint saved) ends the study with the
    preempted exit code and a line saying the same command resumes it; nothing is evaluated."""
    from kunlun_jax.train import loop
    from kunlun_jax.train.preemption import PREEMPTED_EXIT_CODE

    monkeypatch.setattr(loop, "train", lambda *a, **k: {"preempted": True, "step": 2, "signal": 15})
    args = ["study", "--config", "tiny", "--seeds", "0", "--runs-dir", str(tmp_path)]
    assert main([*args, "--out", str(tmp_path / "s.json"), "--set", "mesh.data=1"]) == (
        PREEMPTED_EXIT_CODE
    )
    out = capsys.readouterr().out
    assert f"{tmp_path / 'tiny-seed0'}: preempted by signal 15 after step 2" in out
    assert "run the same command again to resume it" in out
    assert not (tmp_path / "s.json").exists()
