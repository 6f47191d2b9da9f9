"""NE ceilings of the synthetic data's nested feature sets (`kunlun_jax.data.ceilings`)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from kunlun_jax.cli import main
from kunlun_jax.config import load_config
from kunlun_jax.data import ceilings
from kunlun_jax.data.synthetic import STREAMS, SyntheticSource


@pytest.fixture(scope="module")
def report() -> dict:
    return ceilings.ceilings(load_config("tiny"), num_examples=4000)


def test_each_feature_set_lowers_the_ne_down_to_the_bayes_optimum(report):
    ne = [row["ne"] for row in report["ceilings"]]
    assert [row["features"] for row in report["ceilings"]] == [n for n, _ in ceilings.FEATURE_SETS]
    assert 0.75 < ne[0] < 0.97  # context and dense features carry a little of the signal
    # Nested in-sample fits: more features never fit worse, and each planted quantity adds.
    assert all(later < earlier - 0.005 for earlier, later in itertools.pairwise(ne))
    # Every planted term: the labels' own p_true, up to fitting the term weights in-sample.
    assert ne[-1] == pytest.approx(report["bayes_ne"], abs=0.01)
    assert report["oracle_ne"] == pytest.approx(report["bayes_ne"], abs=0.03)


def test_event_recency_is_the_sequence_terms_weights():
    cfg = load_config("tiny").data.synthetic
    source = SyntheticSource(cfg, num_examples=8, seed=0, split="eval")
    batch = source.batch(range(8))
    recency = source.event_recency(batch)
    for s, stream in enumerate(STREAMS):
        events = batch["seqs"][stream]
        real = np.arange(recency.shape[-1]) < events["length"][:, None]
        expected = np.where(real, (1 + events["dt"] / 3600.0) ** -0.5, 0.0)
        np.testing.assert_allclose(recency[:, s], expected, rtol=1e-5)


def test_ceilings_refuse_data_without_the_planted_model():
    with pytest.raises(ValueError, match="teacher = false"):
        ceilings.ceilings(load_config("tiny", ["data.synthetic.teacher=true"]))
    with pytest.raises(ValueError, match="need the planted synthetic click model"):
        ceilings.ceilings(load_config("movielens", ["data.path=/nonexistent"]))
    with pytest.raises(ValueError, match=r"need >= 100 eval examples \(--examples"):
        ceilings.ceilings(load_config("tiny"), num_examples=10)


def test_cli_prints_and_writes_the_ceilings(tmp_path, capsys):
    out = tmp_path / "c.json"
    assert main(["data", "ceilings", "--examples", "500", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "recency_counts" in printed
    assert "bayes_optimal" in printed
    assert len(json.loads(out.read_text())["ceilings"]) == len(ceilings.FEATURE_SETS)
    assert main(["data", "ceilings", "--set", "data.synthetic.teacher=true"]) == 2
    assert "teacher = false" in capsys.readouterr().err


def test_item_geometry_is_one_for_the_worlds_own_vectors_and_near_zero_for_random_ones():
    source = SyntheticSource(
        load_config("tiny").data.synthetic, num_examples=1, seed=0, split="eval"
    )
    own = np.pad(source.world.item_vec, ((0, 5), (0, 3)))  # padding rows and columns
    assert ceilings.item_geometry(own, source) == pytest.approx(1.0, abs=1e-9)
    rotated = own[:, :8] @ np.linalg.qr(np.random.default_rng(0).normal(size=(8, 8)))[0]
    assert ceilings.item_geometry(rotated, source) == pytest.approx(1.0, abs=1e-9)
    random = np.random.default_rng(1).normal(size=own.shape)
    assert abs(ceilings.item_geometry(random, source)) < 0.05
