"""Scaling-law fits of NE against training compute C, with uncertainty.

Forms (x = C / C0, C0 = the geometric mean of the points' C, for conditioning; `a` is
reported in the original units, NE = a·C^(−b) + c):

* "power":      NE = a·C^(−b), least squares on log NE = log a − b·log C (the pure power law
  "in log space");
* "saturating": NE = a·C^(−b) + c, nonlinear least squares (scipy.optimize.curve_fit) with
  a, b, c >= 0; needs >= 4 points;
* "reducible":  NE − floor = a·C^(−b) with the data's known entropy floor (teacher-mode and
  planted synthetic data know theirs exactly), least squares in log space; needs every NE
  above the floor;
* "loglinear":  NE = ne0 − eta·log(C / C0), the spec's linear-in-log form; eta is the NE
  gained per e-fold of compute.

Uncertainty: standard errors from the least-squares covariance, and 95% intervals from a
residual bootstrap (refit on fitted values plus resampled residuals, in the space the fit is
done in; `n_boot` resamples, seeded). With few points the intervals are rough; they are
reported as computed, never widened or narrowed by hand.

Scaling efficiency of a family is its exponent (b, or eta for loglinear); the efficiency
ratio of two families (e.g. Kunlun / InterFormer, ≈ 2 in the paper's abstract) comes with
the percentile interval of the ratio of their independent bootstrap samples.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

FORMS = ("power", "saturating", "reducible", "loglinear")
CI_LEVEL = 0.95
B_MAX = 10.0  # upper bound on the saturating fit's exponent


@dataclasses.dataclass(frozen=True)
class Fit:
    """One fitted form.

    params: a, b (and c) for the power forms, ne0 and eta for loglinear; c0: the C the fit is
    centred at; stderr: covariance standard errors (None where undefined); ci: bootstrap
    interval per param; rms_residual: in NE units; exponent_samples: bootstrap samples of the
    efficiency exponent (b or eta), kept for ratios and not written to JSON; notes: warnings
    a reader must see (e.g. a parameter the points do not determine).
    """

    form: str
    params: dict[str, float]
    stderr: dict[str, float | None]
    ci: dict[str, tuple[float, float]]
    c0: float
    n_points: int
    rms_residual: float
    exponent_samples: np.ndarray = dataclasses.field(repr=False, compare=False)
    notes: tuple[str, ...] = ()

    @property
    def exponent(self) -> float:
        """The scaling-efficiency exponent: eta for loglinear, b otherwise."""
        return self.params["eta" if self.form == "loglinear" else "b"]

    def predict(self, compute: np.ndarray | float, floor: float | None = None) -> np.ndarray:
        """NE predicted at training compute C (floor: the reducible form's floor)."""
        c = np.asarray(compute, np.float64)
        p = self.params
        if self.form == "loglinear":
            return p["ne0"] - p["eta"] * np.log(c / self.c0)
        offset = p.get("c", 0.0) if self.form != "reducible" else float(floor or 0.0)
        return p["a"] * c ** (-p["b"]) + offset

    def to_json(self) -> dict[str, Any]:
        return dict(
            form=self.form,
            params=self.params,
            stderr=self.stderr,
            ci={k: list(v) for k, v in self.ci.items()},
            ci_level=CI_LEVEL,
            c0=self.c0,
            n_points=self.n_points,
            rms_residual=self.rms_residual,
            notes=list(self.notes),
        )


def _check(compute: np.ndarray, ne: np.ndarray, minimum: int) -> None:
    if compute.shape != ne.shape or compute.ndim != 1:
        raise ValueError(f"compute {compute.shape} and ne {ne.shape} must be equal-length 1-D")
    if len(ne) < minimum:
        raise ValueError(f"this fit needs >= {minimum} points, got {len(ne)}")
    if np.any(compute <= 0) or np.any(ne <= 0):
        raise ValueError("compute and NE must be > 0")
    if len(np.unique(compute)) < 2:
        raise ValueError("compute must take at least two distinct values")


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Least squares y = beta0 + beta1·x over the rows of y ([n] or [k, n]); (beta, cov of the
    first fit or None with no residual degrees of freedom)."""
    design = np.stack([np.ones_like(x), x], axis=1)
    beta, *_ = np.linalg.lstsq(design, np.atleast_2d(y).T, rcond=None)
    beta = beta.T  # [k, 2]
    cov = None
    if y.ndim == 1 and len(x) > 2:
        resid = y - design @ beta[0]
        cov = resid @ resid / (len(x) - 2) * np.linalg.inv(design.T @ design)
    return (beta[0] if y.ndim == 1 else beta), cov


def _interval(samples: np.ndarray) -> tuple[float, float]:
    tail = (1 - CI_LEVEL) / 2 * 100
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return float(lo), float(hi)


def _log_space_fit(compute: np.ndarray, y: np.ndarray, form: str, n_boot: int, seed: int) -> Fit:
    """Power law y = a·C^(−b) fitted as a line in (log C, log y)."""
    c0 = float(np.exp(np.mean(np.log(compute))))
    x, ly = np.log(compute / c0), np.log(y)
    beta, cov = _ols(x, ly)
    fitted = beta[0] + beta[1] * x
    rng = np.random.default_rng(seed)
    resid = ly - fitted
    boot = fitted + rng.choice(resid, size=(n_boot, len(x)), replace=True)
    betas, _ = _ols(x, boot)  # [n_boot, 2]
    b_samples = -betas[:, 1]
    a_samples = np.exp(betas[:, 0]) * c0**b_samples
    b = -float(beta[1])
    a = float(np.exp(beta[0]) * c0**b)
    stderr: dict[str, float | None] = dict(a=None, b=None)
    if cov is not None:
        # log a = beta0 + b·log C0, beta0 and beta1 uncorrelated (x is centred): delta method.
        var_log_a = cov[0, 0] + math.log(c0) ** 2 * cov[1, 1]
        stderr = dict(a=float(a * math.sqrt(var_log_a)), b=float(math.sqrt(cov[1, 1])))
    return Fit(
        form=form,
        params=dict(a=a, b=b),
        stderr=stderr,
        ci=dict(a=_interval(a_samples), b=_interval(b_samples)),
        c0=c0,
        n_points=len(x),
        rms_residual=0.0,  # set by the caller in NE units
        exponent_samples=b_samples,
    )


def _with_rms(fit: Fit, compute: np.ndarray, ne: np.ndarray, floor: float | None = None) -> Fit:
    rms = float(np.sqrt(np.mean((fit.predict(compute, floor) - ne) ** 2)))
    return dataclasses.replace(fit, rms_residual=rms)


def fit_power(compute: Sequence[float], ne: Sequence[float], *, n_boot: int = 2000,
              seed: int = 0) -> Fit:  # fmt: skip
    """NE = a·C^(−b) in log space (module docstring)."""
    c, y = np.asarray(compute, np.float64), np.asarray(ne, np.float64)
    _check(c, y, 3)
    return _with_rms(_log_space_fit(c, y, "power", n_boot, seed), c, y)


def fit_reducible(
    compute: Sequence[float], ne: Sequence[float], floor: float, *, n_boot: int = 2000,
    seed: int = 0,
) -> Fit:  # fmt: skip
    """NE − floor = a·C^(−b) in log space, with the known entropy floor."""
    c, y = np.asarray(compute, np.float64), np.asarray(ne, np.float64)
    _check(c, y, 3)
    if np.any(y <= floor):
        raise ValueError(f"every NE must be above the floor {floor:.4f}; min NE is {y.min():.4f}")
    return _with_rms(_log_space_fit(c, y - floor, "reducible", n_boot, seed), c, y, floor)


def _saturating(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a * x ** (-b) + c


def _curve_fit(x: np.ndarray, y: np.ndarray, p0: Sequence[float]) -> tuple[np.ndarray, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)
        return curve_fit(
            _saturating, x, y, p0=p0, bounds=([0.0, 0.0, 0.0], [np.inf, B_MAX, np.inf]),
            maxfev=2_000,
        )  # fmt: skip


def fit_saturating(compute: Sequence[float], ne: Sequence[float], *, n_boot: int = 500,
                   seed: int = 0) -> Fit:  # fmt: skip
    """NE = a·C^(−b) + c by nonlinear least squares (module docstring)."""
    c, y = np.asarray(compute, np.float64), np.asarray(ne, np.float64)
    _check(c, y, 4)
    c0 = float(np.exp(np.mean(np.log(c))))
    x = c / c0
    spread = max(float(y.max() - y.min()), 1e-6)
    p, cov = _curve_fit(x, y, (spread, 0.5, max(float(y.min()) - spread, 0.0)))
    fitted = _saturating(x, *p)
    resid = y - fitted
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n_boot):
        try:
            q, _ = _curve_fit(x, fitted + rng.choice(resid, len(x), replace=True), p)
        except RuntimeError:  # no convergence on this resample: counted in the notes
            continue
        samples.append(q)
    s = np.asarray(samples).reshape(-1, 3)
    if len(s) < 2:
        raise RuntimeError(f"only {len(s)} of {n_boot} bootstrap refits converged")
    a_orig = p[0] * c0 ** p[1]
    stderr: dict[str, float | None] = dict(a=None, b=None, c=None)
    if np.all(np.isfinite(cov)):
        # a = a'·C0^b: delta method with the full covariance of (a', b).
        grad = np.array([c0 ** p[1], a_orig * math.log(c0)])
        var_a = float(grad @ cov[:2, :2] @ grad)
        stderr = dict(a=math.sqrt(max(var_a, 0.0)), b=float(np.sqrt(cov[1, 1])),
                      c=float(np.sqrt(cov[2, 2])))  # fmt: skip
    fit = Fit(
        form="saturating",
        params=dict(a=float(a_orig), b=float(p[1]), c=float(p[2])),
        stderr=stderr,
        ci=dict(a=_interval(s[:, 0] * c0 ** s[:, 1]), b=_interval(s[:, 1]), c=_interval(s[:, 2])),
        c0=c0,
        n_points=len(x),
        rms_residual=0.0,
        exponent_samples=s[:, 1],
        notes=_saturating_notes(p[1], _interval(s[:, 1]), n_boot - len(s), n_boot),
    )
    return _with_rms(fit, c, y)


def _saturating_notes(
    b: float, ci: tuple[float, float], failed: int, n_boot: int
) -> tuple[str, ...]:
    """Warnings when the points do not determine the saturating form: the exponent or its
    interval reaches the fit's bound, or bootstrap refits fail to converge (their samples are
    missing from the interval, which is then too narrow)."""
    notes = []
    if max(b, ci[1]) >= 0.999 * B_MAX:
        notes.append(
            f"b reaches the fit's bound {B_MAX:g} (estimate or interval): these points do not "
            "determine the saturating form; prefer the power or reducible fit"
        )
    if failed > 0.05 * n_boot:
        notes.append(
            f"{failed} of {n_boot} bootstrap refits did not converge: these points do not "
            "determine the saturating form and its interval is too narrow; prefer the power "
            "or reducible fit"
        )
    return tuple(notes)


def fit_loglinear(compute: Sequence[float], ne: Sequence[float], *, n_boot: int = 2000,
                  seed: int = 0) -> Fit:  # fmt: skip
    """NE = ne0 − eta·log(C / C0), least squares (module docstring)."""
    c, y = np.asarray(compute, np.float64), np.asarray(ne, np.float64)
    _check(c, y, 3)
    c0 = float(np.exp(np.mean(np.log(c))))
    x = np.log(c / c0)
    beta, cov = _ols(x, y)
    fitted = beta[0] + beta[1] * x
    rng = np.random.default_rng(seed)
    boot = fitted + rng.choice(y - fitted, size=(n_boot, len(x)), replace=True)
    betas, _ = _ols(x, boot)
    se = None if cov is None else np.sqrt(np.diag(cov))
    fit = Fit(
        form="loglinear",
        params=dict(ne0=float(beta[0]), eta=-float(beta[1])),
        stderr=dict(
            ne0=None if se is None else float(se[0]), eta=None if se is None else float(se[1])
        ),
        ci=dict(ne0=_interval(betas[:, 0]), eta=_interval(-betas[:, 1])),
        c0=c0,
        n_points=len(x),
        rms_residual=0.0,
        exponent_samples=-betas[:, 1],
    )
    return _with_rms(fit, c, y)


@dataclasses.dataclass(frozen=True)
class Ratio:
    """exponent(numerator) / exponent(denominator) with its bootstrap interval."""

    numerator: str
    denominator: str
    form: str
    value: float
    ci: tuple[float, float]

    def to_json(self) -> dict[str, Any]:
        return dict(dataclasses.asdict(self), ci=list(self.ci), ci_level=CI_LEVEL)


def efficiency_ratio(num: Fit, den: Fit, num_name: str, den_name: str) -> Ratio:
    """Scaling-efficiency ratio of two fits of the same form (module docstring)."""
    if num.form != den.form:
        raise ValueError(f"cannot compare a {num.form} exponent with a {den.form} one")
    n = min(len(num.exponent_samples), len(den.exponent_samples))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = num.exponent_samples[:n] / den.exponent_samples[:n]
    ratios = ratios[np.isfinite(ratios)]
    value = num.exponent / den.exponent if den.exponent else math.inf
    ci = _interval(ratios) if len(ratios) else (math.nan, math.nan)
    return Ratio(num_name, den_name, num.form, float(value), ci)


@dataclasses.dataclass(frozen=True)
class GroupFit:
    """Every applicable form fitted to one (family, data) group of sweep points.

    floor_ne: the data's known entropy floor (None for real data); skipped: form -> reason.
    """

    family: str
    data: str
    n_points: int
    floor_ne: float | None
    fits: dict[str, Fit]
    skipped: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return dict(
            family=self.family,
            data=self.data,
            n_points=self.n_points,
            floor_ne=self.floor_ne,
            fits={k: f.to_json() for k, f in self.fits.items()},
            skipped=self.skipped,
        )


def group_points(points: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], list]:
    """Sweep points by (family, data label), in first-seen order."""
    groups: dict[tuple[str, str], list] = {}
    for p in points:
        groups.setdefault((p["family"], p["data"]), []).append(p)
    return groups


def fit_group(
    points: Sequence[Mapping[str, Any]], *, n_boot: int = 1000, seed: int = 0
) -> GroupFit:
    """Fits every form that applies to one group (same family and data)."""
    compute = [p["train_compute"] for p in points]
    ne = [p["ne"] for p in points]
    floors = {p["floor_ne"] for p in points}
    floor = floors.pop() if len(floors) == 1 else None
    fits, skipped = {}, {}
    attempts = {
        "power": lambda: fit_power(compute, ne, n_boot=n_boot, seed=seed),
        "saturating": lambda: fit_saturating(compute, ne, n_boot=min(n_boot, 500), seed=seed),
        "loglinear": lambda: fit_loglinear(compute, ne, n_boot=n_boot, seed=seed),
    }
    if floor is not None:
        attempts["reducible"] = lambda: fit_reducible(compute, ne, floor, n_boot=n_boot, seed=seed)
    else:
        skipped["reducible"] = "no known entropy floor (real data, or points disagree on it)"
    for form, attempt in attempts.items():
        try:
            fits[form] = attempt()
        except (ValueError, RuntimeError) as e:
            skipped[form] = str(e)
    first = points[0]
    return GroupFit(first["family"], first["data"], len(points), floor, fits, skipped)
