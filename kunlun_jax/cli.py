"""`kunlun-jax` command line: train, eval, config."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from kunlun_jax.config import ConfigError, available_configs, load_config, to_dict
from kunlun_jax.data.spec import BatchError
from kunlun_jax.data.validate import DataError
from kunlun_jax.platform import prefer_present_accelerators

SUMMARY_KEYS = ("ne", "oracle_ne", "auc", "log_loss", "calibration", "examples_per_sec")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", default="tiny", help=f"named config ({', '.join(available_configs())}) or path"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set model.num_layers=4 (repeatable)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kunlun-jax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model and evaluate it")
    _add_config_args(train)
    train.add_argument("--name", help="run name (default: <config>-<timestamp>)")
    train.add_argument("--runs-dir", default="runs", type=Path)
    group = train.add_mutually_exclusive_group()
    group.add_argument("--overwrite", action="store_true", help="replace an existing run")
    group.add_argument("--resume", action="store_true", help="continue an existing run")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")

    ev = sub.add_parser("eval", help="evaluate the newest checkpoint of a run")
    ev.add_argument("run_dir", type=Path, help="a run directory written by `train`")

    data = sub.add_parser("data", help="prepare or download real datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    prep = data_sub.add_parser("prepare", help="raw MovieLens files -> compact arrays + manifest")
    prep.add_argument("name", help="movielens-100k | movielens-1m | movielens-latest-small")
    prep.add_argument("src", type=Path, help="directory with the raw files")
    prep.add_argument("out", type=Path, help="output directory (must not exist unless empty)")
    prep.add_argument("--max-rows", type=int, help="read only the first N ratings")
    prep.add_argument("--on-error", choices=["raise", "skip"], default="raise")
    prep.add_argument("--overwrite", action="store_true", help="replace files in a non-empty OUT")
    dl = data_sub.add_parser("download", help="fetch a dataset from GroupLens (checksum checked)")
    dl.add_argument("name")
    dl.add_argument("dest", type=Path)

    cfg = sub.add_parser("config", help="print the resolved config as JSON")
    _add_config_args(cfg)
    return parser


def _print_metrics(metrics: dict) -> None:
    for key in SUMMARY_KEYS:
        if key in metrics:
            print(f"  {key:>16s}: {metrics[key]:.4f}")


def _train(args: argparse.Namespace) -> int:
    from kunlun_jax.train.loop import prepare_run_dir, train

    config = load_config(args.config, args.overrides)
    name = args.name or f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = prepare_run_dir(args.runs_dir, name, overwrite=args.overwrite, resume=args.resume)
    print(f"run {name}: {run_dir}")
    metrics = train(config, run_dir, resume=args.resume, progress=not args.no_progress)
    print(f"eval ({int(metrics['count'])} examples):")
    _print_metrics(metrics)
    print(f"metrics: {run_dir / 'metrics.json'}  tensorboard: {run_dir / 'tb'}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from kunlun_jax.train.loop import evaluate_run

    metrics = evaluate_run(args.run_dir)
    print(json.dumps(metrics, indent=2))
    return 0


def _data(args: argparse.Namespace) -> int:
    from kunlun_jax.data import movielens

    if args.data_command == "prepare":
        if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
            raise FileExistsError(f"{args.out} is not empty; pass --overwrite to replace it")
        manifest = movielens.prepare(
            args.name, args.src, args.out, max_rows=args.max_rows, on_error=args.on_error
        )
        print(json.dumps(manifest, indent=2))
        print(f"prepared {args.name} into {args.out}: use --set data.path={args.out}")
        return 0
    print(f"downloaded {args.name} to {movielens.download(args.name, args.dest)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    prefer_present_accelerators()
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "eval":
            return _eval(args)
        if args.command == "data":
            return _data(args)
        config = load_config(args.config, args.overrides)
        print(json.dumps(to_dict(config), indent=2))
        return 0
    except (ConfigError, BatchError, DataError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
