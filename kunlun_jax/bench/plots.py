"""matplotlib figures for `kunlun-jax compare` and `kunlun-jax scaling fit` (headless, Agg).

Compare: measured throughput and MFU per run; compiled estimates, when present, in their own
hatched panel titled as roofline bounds. Scaling: NE vs training compute C with the fitted
curves, NE vs GFLOPs per example, NE vs layers; one colour per (family, data) group and the
known entropy floor as a dashed line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from kunlun_jax.bench.fit import GroupFit, group_points


def _label(record: dict[str, Any]) -> str:
    return f"{record['name']}\n{record['environment']['device_kind']}"


def plot_compare(records: Sequence[dict[str, Any]], path: Path | str) -> None:
    """Bar charts of a compare report (module docstring), written to `path`."""
    measured = [r for r in records if r["kind"] == "measured"]
    estimates = [r for r in records if r["kind"] == "compiled_estimate"]
    panels = (2 if measured else 0) + (1 if estimates else 0)
    if not panels:
        raise ValueError("no records to plot")
    width = max(6.0, 1.2 * max(len(measured), len(estimates)))
    fig, axes = plt.subplots(panels, 1, figsize=(width, 3.2 * panels), squeeze=False)
    axes = list(axes[:, 0])
    if measured:
        ax = axes.pop(0)
        x = np.arange(len(measured))
        ax.bar(x, [r["timing"]["examples_per_sec"] for r in measured], color="tab:blue")
        ax.set_yscale("log")
        ax.set_ylabel("examples/s (measured)")
        ax.set_xticks(x, [_label(r) for r in measured], fontsize=7)
        ax = axes.pop(0)
        table = [r["mfu"]["vs_table_peak"] or 0.0 for r in measured]
        matmul = [r["mfu"]["vs_measured_matmul"] for r in measured]
        ax.bar(x - 0.2, table, 0.4, label="vs published peak (0: none)", color="tab:orange")
        ax.bar(x + 0.2, matmul, 0.4, label="vs same-run matmul", color="tab:green")
        ax.set_ylabel("MFU (measured)")
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.set_xticks(x, [_label(r) for r in measured], fontsize=7)
        ax.legend(fontsize=7)
    if estimates:
        ax = axes.pop(0)
        x = np.arange(len(estimates))
        bounds = [r["estimate"]["roofline_examples_per_sec"] for r in estimates]
        ax.bar(x, bounds, color="white", edgecolor="tab:red", hatch="//")
        ax.set_yscale("log")
        ax.set_ylabel("examples/s upper bound")
        ax.set_title("COMPILED ESTIMATES: roofline bounds, not measurements", fontsize=9)
        labels = [f"{r['name']}\n{r['estimate']['topology']}" for r in estimates]
        ax.set_xticks(x, labels, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_scaling(
    points: Sequence[dict[str, Any]], fits: Sequence[GroupFit], path: Path | str
) -> None:
    """The three scaling panels (module docstring), written to `path`."""
    groups = group_points(points)
    fit_of = {(g.family, g.data): g for g in fits}
    fig, (ax_c, ax_g, ax_l) = plt.subplots(1, 3, figsize=(15, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    floors_drawn = set()
    for i, ((family, data), pts) in enumerate(groups.items()):
        colour = colours[i % len(colours)]
        label = f"{family} · {data}"
        compute = np.array([p["train_compute"] for p in pts])
        ne = np.array([p["ne"] for p in pts])
        ax_c.scatter(compute, ne, color=colour, label=label)
        g = fit_of.get((family, data))
        if g is not None:
            grid = np.geomspace(compute.min(), compute.max(), 50)
            for form, style in (("saturating", "-"), ("power", ":"), ("reducible", "--")):
                if form in g.fits:
                    f = g.fits[form]
                    ax_c.plot(grid, f.predict(grid, g.floor_ne), style, color=colour, lw=1,
                              label=f"{form}: b = {f.params['b']:.3g}")  # fmt: skip
        gflops = np.array([p["forward_flops_per_example"] / 1e9 for p in pts])
        order = np.argsort(gflops)
        ax_g.plot(gflops[order], ne[order], "o-", color=colour, label=label)
        layers = np.array([p["num_layers"] for p in pts])
        for width in sorted({p["d_model"] for p in pts}):
            sel = np.array([p["d_model"] == width for p in pts])
            order = np.argsort(layers[sel])
            ax_l.plot(layers[sel][order], ne[sel][order], "o-", color=colour,
                      alpha=0.4 + 0.6 * (width / max(p["d_model"] for p in pts)),
                      label=f"{family} d={width}")  # fmt: skip
        floor = g.floor_ne if g is not None else None
        if floor is not None and data not in floors_drawn:
            floors_drawn.add(data)
            for ax in (ax_c, ax_g, ax_l):
                ax.axhline(floor, color="gray", ls="--", lw=0.8)
            ax_c.annotate(f"entropy floor {floor:.3f}", (compute.min(), floor), fontsize=7,
                          xytext=(0, 3), textcoords="offset points", color="gray")  # fmt: skip
    ax_c.set(xscale="log", xlabel="training compute C (FLOPs)", ylabel="eval NE")
    ax_g.set(xscale="log", xlabel="forward GFLOPs / example", ylabel="eval NE")
    for ax in (ax_c, ax_g):
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax_l.set(xlabel="layers", ylabel="eval NE")
    for ax in (ax_c, ax_g, ax_l):
        ax.legend(fontsize=6)
    data_labels = sorted({d for _, d in groups})
    fig.suptitle(f"data: {'; '.join(data_labels)}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
