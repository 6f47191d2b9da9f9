"""Scaling-law fits recover known exponents from noisy synthetic points; grid parsing."""

from __future__ import annotations

import numpy as np
import pytest

from kunlun_jax.bench.fit import (
    efficiency_ratio,
    fit_group,
    fit_loglinear,
    fit_power,
    fit_reducible,
    fit_saturating,
)
from kunlun_jax.bench.sweep import grid_points, parse_grid, point_name, split_values
from kunlun_jax.config import ConfigError

COMPUTE = np.geomspace(1e12, 1e16, 8)
N_BOOT = 200


def _noisy(values, sigma, seed, multiplicative=False):
    noise = np.random.default_rng(seed).normal(0.0, sigma, len(values))
    return values * np.exp(noise) if multiplicative else values + noise


def _covers(fit, key, truth):
    lo, hi = fit.ci[key]
    return lo <= truth <= hi


def test_pure_power_law_recovers_exponent_in_log_space():
    ne = _noisy(2.0 * COMPUTE**-0.05, 0.003, seed=0, multiplicative=True)
    fit = fit_power(COMPUTE, ne, n_boot=N_BOOT)
    assert fit.params["b"] == pytest.approx(0.05, abs=0.003)
    assert fit.params["a"] == pytest.approx(2.0, rel=0.15)
    assert _covers(fit, "b", 0.05)
    assert fit.stderr["b"] < 0.003


def test_saturating_fit_recovers_exponent_and_floor():
    ne = _noisy(0.5 * (COMPUTE / 1e12) ** -0.3 + 0.4, 0.002, seed=1)
    fit = fit_saturating(COMPUTE, ne, n_boot=N_BOOT)
    assert fit.params["b"] == pytest.approx(0.3, abs=0.02)
    assert fit.params["c"] == pytest.approx(0.4, abs=0.01)
    assert _covers(fit, "b", 0.3)
    assert _covers(fit, "c", 0.4)
    assert fit.rms_residual < 0.004
    assert fit.notes == ()


def test_saturating_fit_flags_an_undetermined_exponent():
    # A drop, then noise around a plateau: resampled fits run b to the bound (10), which the
    # fit must say (these are the NEs of the CPU teacher-mode sweep in benchmarks/results).
    fit = fit_saturating(COMPUTE[:4], [0.9316, 0.9261, 0.9248, 0.9263], n_boot=20)
    assert any("do not determine" in n for n in fit.notes)


def test_reducible_fit_uses_the_known_floor():
    ne = _noisy(0.5 * (COMPUTE / 1e12) ** -0.3 + 0.4, 0.002, seed=2)
    fit = fit_reducible(COMPUTE, ne, floor=0.4, n_boot=N_BOOT)
    assert fit.params["b"] == pytest.approx(0.3, abs=0.01)
    assert _covers(fit, "b", 0.3)
    with pytest.raises(ValueError, match="above the floor"):
        fit_reducible(COMPUTE, ne, floor=0.6)


def test_loglinear_slope():
    ne = _noisy(0.8 - 0.01 * np.log(COMPUTE / 1e14), 0.001, seed=3)
    fit = fit_loglinear(COMPUTE, ne, n_boot=N_BOOT)
    assert fit.params["eta"] == pytest.approx(0.01, abs=0.001)
    assert _covers(fit, "eta", 0.01)


def test_efficiency_ratio_has_a_covering_interval():
    fast = fit_power(COMPUTE, _noisy(2 * COMPUTE**-0.1, 0.003, 4, True), n_boot=N_BOOT)
    slow = fit_power(COMPUTE, _noisy(2 * COMPUTE**-0.05, 0.003, 5, True), n_boot=N_BOOT)
    ratio = efficiency_ratio(fast, slow, "kunlun", "interformer")
    assert ratio.value == pytest.approx(2.0, rel=0.1)
    assert ratio.ci[0] <= 2.0 <= ratio.ci[1]
    assert ratio.ci[1] - ratio.ci[0] < 0.5
    with pytest.raises(ValueError, match="cannot compare"):
        efficiency_ratio(fast, fit_loglinear(COMPUTE, 2 * COMPUTE**-0.1, n_boot=10), "a", "b")


def test_fits_refuse_too_few_or_degenerate_points():
    with pytest.raises(ValueError, match=">= 4 points"):
        fit_saturating(COMPUTE[:3], [0.9, 0.8, 0.7])
    with pytest.raises(ValueError, match="two distinct"):
        fit_power([1e12] * 3, [0.9, 0.8, 0.7])


def test_fit_group_skips_reducible_without_a_known_floor():
    points = [
        dict(family="kunlun", data="movielens-100k", train_compute=c, ne=n, floor_ne=None)
        for c, n in zip(COMPUTE[:4], [0.95, 0.93, 0.92, 0.915], strict=True)
    ]
    group = fit_group(points, n_boot=20)
    assert set(group.fits) == {"power", "saturating", "loglinear"}
    assert "no known entropy floor" in group.skipped["reducible"]
    assert group.to_json()["fits"]["power"]["params"]["b"] > 0


def test_grid_parsing():
    assert split_values("[16,8],[32]") == ["[16,8]", "[32]"]
    axes = parse_grid(["model.d_model=16,32", "model.num_layers=1,2"])
    points = grid_points(axes)
    assert points[1] == ("model.d_model=16", "model.num_layers=2")
    assert len(points) == 4
    assert point_name(points[1]) == "d_model=16,num_layers=2"
    with pytest.raises(ConfigError, match=r"section\.key=v1,v2"):
        parse_grid(["model.d_model"])
    with pytest.raises(ConfigError, match="repeats a key"):
        parse_grid(["model.d_model=1", "model.d_model=2"])
