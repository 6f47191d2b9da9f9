"""The `bench`, `compare` and `scaling` subcommands of `kunlun-jax` (wired in kunlun_jax/cli.py).

kunlun-jax bench --config tiny --steps 20 --out bench.json
kunlun-jax bench --config tiny --kernels reference,pallas --out kernels.json
kunlun-jax bench --config tiny --ablate --out ablation.json        # MFU ablation
kunlun-jax compare a.json b.json --out table.md --plot fig.png
kunlun-jax scaling sweep --config tiny --grid model.d_model=16,32 --out runs/sweep
kunlun-jax scaling fit runs/sweep [runs/sweep_interformer] --ratio kunlun/interformer
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kunlun_jax.bench.schema import SchemaError
from kunlun_jax.outputs import add_overwrite_flag, refuse_to_replace, write_atomically

COMMANDS = ("bench", "compare", "scaling")


def add_parsers(sub: Any, add_config_args: Callable[[argparse.ArgumentParser], None]) -> None:
    """Adds the subcommands to `kunlun-jax`'s subparsers (add_config_args: --config/--set)."""
    from kunlun_jax.bench.fit import FORMS
    from kunlun_jax.bench.train_bench import BenchOptions

    d = BenchOptions()
    bench = sub.add_parser("bench", help="time the train step: examples/s, MFU, memory (JSON)")
    add_config_args(bench)
    bench.add_argument("--out", type=Path, required=True, help="result JSON path")
    mode = bench.add_mutually_exclusive_group()
    mode.add_argument(
        "--kernels",
        help="comma-separated model.kernels backends, one record each (reference,pallas)",
    )
    mode.add_argument(
        "--ablate",
        action="store_true",
        help="MFU ablation: the config, then each technique (GDPA kernel, HSP, SWA, CompSkip, "
        "event personalization) switched off",
    )
    bench.add_argument("--steps", type=int, default=d.steps, help="timed steps")
    bench.add_argument("--warmup", type=int, default=d.warmup, help="untimed steps")
    bench.add_argument("--batches", type=int, default=d.distinct_batches, help="distinct batches")
    bench.add_argument("--note", action="append", default=[], help="caveat stored in the JSON")
    bench.add_argument(
        "--profile",
        type=Path,
        help="trace untimed steps after the timed ones into DIR/<variant> (xprof --logdir)",
    )
    bench.add_argument(
        "--profile-steps", type=int, default=d.profile_steps, help="steps traced with --profile"
    )
    add_overwrite_flag(bench)

    compare = sub.add_parser("compare", help="bench JSON files -> one Markdown table and a plot")
    compare.add_argument("files", nargs="+", type=Path)
    compare.add_argument("--out", type=Path, help="write the Markdown here (also printed)")
    compare.add_argument("--plot", type=Path, help="write a figure (png, pdf, svg)")
    compare.add_argument("--link-dir", help="link source files under this path in the table")
    add_overwrite_flag(compare)

    scaling = sub.add_parser("scaling", help="scaling-law sweeps and fits")
    ssub = scaling.add_subparsers(dest="scaling_command", required=True)
    sweep = ssub.add_parser("sweep", help="train a grid of configs, record NE vs compute")
    add_config_args(sweep)
    sweep.add_argument(
        "--grid",
        action="append",
        required=True,
        metavar="KEY=V1,V2",
        help="a swept config field and its values (repeatable: the grid is their product)",
    )
    sweep.add_argument("--family", help="model family label (default: model.arch or kunlun)")
    sweep.add_argument("--out", type=Path, required=True, help="sweep directory")
    sweep.add_argument(
        "--workers", type=int, default=1, help="points trained at once (CPU: overlaps compiles)"
    )
    fit = ssub.add_parser("fit", help="fit NE(C) power laws with uncertainty, plot, compare")
    fit.add_argument("sweeps", nargs="+", type=Path, help="sweep directories or sweep.json files")
    fit.add_argument("--exponent", choices=FORMS, default="power", help="form used for --ratio")
    fit.add_argument("--ratio", help="NUM/DEN families: scaling-efficiency ratio with its CI")
    fit.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples")
    fit.add_argument("--out", type=Path, help="fit JSON (default: <first sweep>/fit.json)")
    fit.add_argument("--plot", type=Path, help="figure (default: <first sweep>/scaling.png)")
    add_overwrite_flag(fit)


def _bench(args: argparse.Namespace) -> int:
    import jax

    from kunlun_jax.bench.schema import bench_document
    from kunlun_jax.bench.train_bench import (
        BenchOptions,
        Variant,
        ablation_variants,
        kernel_variants,
        run_bench,
    )
    from kunlun_jax.config import load_config

    refuse_to_replace([args.out], args.overwrite)
    notes: list[str] = []
    if args.ablate:
        base = load_config(args.config, args.overrides)
        variants, notes = ablation_variants(base, jax.devices()[0].platform)
    elif args.kernels:
        variants = kernel_variants([k.strip() for k in args.kernels.split(",") if k.strip()])
    else:
        variants = [Variant("baseline")]
    for note in notes:
        print(f"note: {note}")
    options = BenchOptions(
        args.steps,
        args.warmup,
        args.batches,
        (*args.note, *notes),
        profile=args.profile,
        profile_steps=args.profile_steps,
    )
    records = run_bench(args.config, args.overrides, variants, options)
    write_atomically(args.out, json.dumps(bench_document(records), indent=1))
    print(f"wrote {args.out}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from kunlun_jax.bench.compare import load_records, markdown_report

    inputs = {Path(f).resolve() for f in args.files}
    for out in (args.out, args.plot):
        if out is not None and out.resolve() in inputs:
            raise ValueError(f"{out} is one of the input files: write the report elsewhere")
    refuse_to_replace([args.out, args.plot], args.overwrite)
    records = load_records(args.files)
    text = markdown_report(records, link_dir=args.link_dir)
    print(text)
    if args.out:
        write_atomically(args.out, text)
    if args.plot:
        from kunlun_jax.bench.plots import plot_compare

        plot_compare([r for r, _ in records], args.plot)
        print(f"plot: {args.plot}")
    return 0


def _sweep_file(path: Path) -> Path:
    from kunlun_jax.bench.sweep import SWEEP_FILE

    return path / SWEEP_FILE if path.is_dir() else path


MIN_BOOTSTRAP = 20  # resamples: fewer give no meaningful 95% interval
_DEVICE_KEYS = ("device_kind", "platform", "device_count", "jax", "jaxlib", "flax", "tokamax")


def _fit(args: argparse.Namespace) -> int:
    from kunlun_jax.bench.fit import efficiency_ratio, fit_group, group_points
    from kunlun_jax.bench.plots import plot_scaling
    from kunlun_jax.bench.schema import SWEEP_SCHEMA, load
    from kunlun_jax.provenance import environment

    if args.n_boot < MIN_BOOTSTRAP:
        raise ValueError(
            f"--n-boot must be >= {MIN_BOOTSTRAP} for a 95% interval, got {args.n_boot}"
        )
    files = list(dict.fromkeys(_sweep_file(p).resolve() for p in args.sweeps))  # each file once
    first = files[0].parent
    out, plot = args.out or first / "fit.json", args.plot or first / "scaling.png"
    refuse_to_replace([out, plot], args.overwrite)
    points = [pt for f in files for pt in load(f, SWEEP_SCHEMA)["points"]]
    groups = [fit_group(pts, n_boot=args.n_boot) for pts in group_points(points).values()]
    for g in groups:
        floor = "unknown (real data)" if g.floor_ne is None else f"{g.floor_ne:.4f}"
        print(f"{g.family} · {g.data}: {g.n_points} points, entropy floor {floor}")
        for form, f in g.fits.items():
            key = "eta" if form == "loglinear" else "b"
            lo, hi = f.ci[key]
            print(f"  {form:10s} {key} = {f.exponent:.4g}  95% CI [{lo:.4g}, {hi:.4g}]  "
                  f"rms {f.rms_residual:.2g}")  # fmt: skip
            for note in f.notes:
                print(f"    note: {note}")
        for form, why in g.skipped.items():
            print(f"  {form:10s} skipped: {why}")
    ratios = []
    if args.ratio:
        num, sep, den = args.ratio.partition("/")
        if not sep:
            raise ValueError(
                f"--ratio {args.ratio!r} must look like NUM/DEN, e.g. kunlun/interformer"
            )
        by_key = {(g.family, g.data): g for g in groups}
        for data in sorted({g.data for g in groups}):
            a, b = by_key.get((num, data)), by_key.get((den, data))
            if a is None or b is None or args.exponent not in a.fits or args.exponent not in b.fits:
                print(f"ratio {num}/{den} on {data}: needs a {args.exponent} fit of both families")
                continue
            r = efficiency_ratio(a.fits[args.exponent], b.fits[args.exponent], num, den)
            ratios.append(dict(r.to_json(), data=data))
            print(f"ratio {num}/{den} ({args.exponent}) on {data}: {r.value:.3g} "
                  f"95% CI [{r.ci[0]:.3g}, {r.ci[1]:.3g}]")  # fmt: skip
    doc = dict(
        sources=[str(f) for f in files],
        groups=[g.to_json() for g in groups],
        ratios=ratios,
        # The fitted points' devices and versions (each point also keeps its own), and this fit's.
        measured_on=[
            dict(env)
            for env in sorted(
                {tuple((k, pt["environment"].get(k)) for k in _DEVICE_KEYS) for pt in points}
            )
        ],
        environment=environment(),
        note="real-data and synthetic (teacher / planted) groups are fitted separately; "
        "see each group's data label",
    )
    write_atomically(out, json.dumps(doc, indent=1))
    plot_scaling(points, groups, plot)
    print(f"wrote {out} and {plot}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Runs a bench/compare/scaling command; schema and fit errors exit with status 2."""
    try:
        if args.command == "bench":
            return _bench(args)
        if args.command == "compare":
            return _compare(args)
        if args.scaling_command == "sweep":
            from kunlun_jax.bench.sweep import parse_grid, run_sweep

            axes = parse_grid(args.grid)
            run_sweep(
                args.config,
                args.overrides,
                axes,
                args.out,
                family=args.family,
                workers=args.workers,
            )
            print(f"wrote {args.out / 'sweep.json'}")
            return 0
        return _fit(args)
    except (SchemaError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
