"""`kunlun-jax` command line: train, eval, data, study, config, compile, bench, compare,
scaling."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from kunlun_jax.bench import cli as bench_cli
from kunlun_jax.config import available_configs, load_config, to_dict
from kunlun_jax.outputs import add_overwrite_flag, refuse_to_replace, write_atomically
from kunlun_jax.platform import prefer_present_accelerators, set_platforms_unless_given
from kunlun_jax.train.preemption import PREEMPTED_EXIT_CODE, Preempted

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
    group.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing run (a folder without config.json is refused)",
    )
    group.add_argument("--resume", action="store_true", help="continue an existing run")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    dist = train.add_argument_group(
        "multi-host", "one process per host, same command everywhere (see README: Multi-host)"
    )
    dist.add_argument(
        "--distributed",
        action="store_true",
        help="join a multi-process job (jax.distributed.initialize; TPU pods, SLURM and "
        "Open MPI are detected from the environment, else give the three flags below)",
    )
    dist.add_argument("--coordinator", help="host:port of process 0")
    dist.add_argument("--num-processes", type=int)
    dist.add_argument("--process-id", type=int)

    ev = sub.add_parser("eval", help="evaluate the newest checkpoint of runs")
    ev.add_argument(
        "run_dirs", type=Path, nargs="+", help="run directories written by `train` (e.g. seeds)"
    )
    ev.add_argument(
        "--split",
        default="eval",
        choices=["eval", "test"],
        help="held-out split (test: real datasets only); NE is normalized by its base rate",
    )
    ev.add_argument(
        "--predictions",
        type=Path,
        metavar="CSV",
        help="also write every example's labels and probabilities here (one run directory): "
        "columns index,<task>_label,<task>_prob,... in the split's example order",
    )
    add_overwrite_flag(ev)

    data = sub.add_parser(
        "data", help="prepare or download real datasets; NE ceilings of the synthetic data"
    )
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
    dl.add_argument("--overwrite", action="store_true", help="unpack over an existing copy")
    ceil = data_sub.add_parser(
        "ceilings",
        help="synthetic data: NE a model reaches once it has learned each set of planted terms",
    )
    _add_config_args(ceil)
    ceil.add_argument(
        "--examples",
        type=int,
        help="eval examples to fit on (default: data.num_eval, the ones `train` evaluates)",
    )
    ceil.add_argument(
        "--run",
        dest="run_dirs",
        type=Path,
        action="append",
        default=[],
        help="a trained run directory: also report its embedding tables' spread and learned "
        "item geometry, against its own config's world (repeatable)",
    )
    ceil.add_argument("--out", type=Path, help="also write the report as JSON here")
    add_overwrite_flag(ceil)

    study = sub.add_parser(
        "study", help="train configs over seeds; test NE/AUC/log loss/calibration mean ± std"
    )
    study.add_argument(
        "--config",
        dest="configs",
        action="append",
        help="named config or path (repeatable; one table row each); default: tiny",
    )
    study.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field of every config, e.g. --set data.path=/tmp/ml100k (repeatable)",
    )
    study.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    study.add_argument(
        "--runs-dir",
        type=Path,
        help="default: runs/study-<timestamp>; finished runs of the same config found here are "
        "read back, not trained again (a study resumes)",
    )
    study.add_argument("--out", type=Path, help="write the study JSON here")
    study.add_argument("--markdown", type=Path, help="also write the Markdown table here")
    study.add_argument(
        "--no-progress", action="store_true", help="no training progress and no line per seed"
    )
    add_overwrite_flag(study)
    study.add_argument(
        "--render", type=Path, metavar="JSON", help="only print the table of an existing study"
    )

    cfg = sub.add_parser("config", help="print the resolved config as JSON")
    _add_config_args(cfg)

    aot = sub.add_parser(
        "compile",
        help="compile the sharded train step for a TPU topology that is not attached "
        "(needs libtpu): per-device memory, FLOPs, collectives",
    )
    _add_config_args(aot)
    aot.add_argument("--topology", required=True, help="e.g. v5e:2x2, v5p:4x4x4, v6e:16x16")
    aot.add_argument("--out", type=Path, help="also write the report as JSON here")
    aot.add_argument(
        "--record", type=Path, help="write a compiled-estimate record for `kunlun-jax compare`"
    )
    add_overwrite_flag(aot)
    bench_cli.add_parsers(sub, _add_config_args)  # bench, compare, scaling
    return parser


def _print_metrics(metrics: dict) -> None:
    """SUMMARY_KEYS of the first task, then those of every other task ("<task>/<key>")."""
    tasks = ["", *dict.fromkeys(k.split("/")[0] + "/" for k in metrics if "/" in k)]
    keys = [t + k for t in tasks for k in SUMMARY_KEYS if t + k in metrics]
    width = max(map(len, keys), default=0)
    for key in keys:
        print(f"  {key:>{width}s}: {metrics[key]:.4f}")


def _train(args: argparse.Namespace) -> int:
    import jax

    from kunlun_jax.parallel.distributed import run_stamp
    from kunlun_jax.train.loop import prepare_run_dir, train

    config = load_config(args.config, args.overrides)
    name = args.name or f"{config.name}-{run_stamp()}"
    run_dir = prepare_run_dir(args.runs_dir, name, overwrite=args.overwrite, resume=args.resume)
    lead = jax.process_index() == 0  # with several processes, the first one reports
    if lead:
        print(f"run {name}: {run_dir}")
    metrics = train(config, run_dir, resume=args.resume, progress=not args.no_progress)
    if metrics.get("preempted"):
        if lead:
            print(
                f"preempted by signal {metrics['signal']} after step {metrics['step']}: "
                f"checkpoint saved; continue with the same command plus --resume --name "
                f"{run_dir.name}"
            )
        return PREEMPTED_EXIT_CODE
    if lead:
        print(f"eval ({int(metrics['count'])} examples):")
        _print_metrics(metrics)
        print(f"metrics: {run_dir / 'metrics.json'}  tensorboard: {run_dir / 'tb'}")
    return 0


def _compile(args: argparse.Namespace) -> int:
    from kunlun_jax.bench.schema import bench_document
    from kunlun_jax.parallel.aot import compile_train_step, format_report

    config = load_config(args.config, args.overrides)
    refuse_to_replace([args.out, args.record], args.overwrite)
    report = compile_train_step(config, args.topology, args.overrides or ())
    print(format_report(report))
    record = bench_document([report.pop("bench_record")])  # a file `compare` reads
    for path, payload in ((args.out, report), (args.record, record)):
        if path:
            write_atomically(path, json.dumps(payload, indent=2) + "\n")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from kunlun_jax.study import aggregate
    from kunlun_jax.train.loop import evaluate_run

    if len({Path(d).resolve() for d in args.run_dirs}) < len(args.run_dirs):
        raise ValueError("a run directory is given twice: each run counts once in the summary")
    if args.predictions is not None:
        if len(args.run_dirs) > 1:
            raise ValueError("--predictions takes one run directory (one file per run)")
        refuse_to_replace([args.predictions], args.overwrite)
    runs = [
        {"run_dir": str(d), **evaluate_run(d, args.split, predictions=args.predictions)}
        for d in args.run_dirs
    ]
    if args.predictions is not None:
        print(f"predictions: {args.predictions}", file=sys.stderr)
    if len(runs) == 1:
        print(json.dumps(runs[0], indent=2))
        return 0
    summary = aggregate(runs)
    print(json.dumps({"split": args.split, "runs": runs, "summary": summary}, indent=2))
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
    if args.data_command == "ceilings":
        from kunlun_jax.data import ceilings

        config = load_config(args.config, args.overrides)
        refuse_to_replace([args.out], args.overwrite)
        ceilings.check_runs_share_the_world(config, args.run_dirs)
        report = ceilings.ceilings(config, args.examples)
        report["runs"] = [ceilings.run_embeddings(run) for run in args.run_dirs]
        print(ceilings.render(report))
        if args.out:
            write_atomically(args.out, json.dumps(report, indent=2) + "\n")
        return 0
    unpacked = movielens.download(args.name, args.dest, overwrite=args.overwrite)
    print(f"downloaded {args.name} to {unpacked}")
    return 0


def _study(args: argparse.Namespace) -> int:
    from kunlun_jax import study
    from kunlun_jax.parallel.distributed import run_stamp

    if args.render:
        print(study.markdown_table(json.loads(args.render.read_text()), str(args.render)))
        return 0
    configs = [load_config(name, args.overrides) for name in args.configs or ["tiny"]]
    refuse_to_replace([args.out, args.markdown], args.overwrite)
    runs_dir = args.runs_dir or Path("runs") / f"study-{run_stamp()}"
    result = study.run_study(configs, args.seeds, runs_dir, progress=not args.no_progress)
    if args.out:
        write_atomically(args.out, json.dumps(result, indent=2) + "\n")
    table = study.markdown_table(result, str(args.out) if args.out else "")
    if args.markdown:
        write_atomically(args.markdown, table + "\n")
    print(table)
    print(f"runs: {runs_dir}" + (f"  json: {args.out}" if args.out else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "compile":
        set_platforms_unless_given("cpu")  # deviceless: nothing runs on a TPU
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    else:
        prefer_present_accelerators()
    if getattr(args, "distributed", False):
        from kunlun_jax.parallel.distributed import initialize

        initialize(args.coordinator, args.num_processes, args.process_id)
    try:
        if args.command == "compile":
            return _compile(args)
        if args.command == "train":
            return _train(args)
        if args.command == "eval":
            return _eval(args)
        if args.command == "data":
            return _data(args)
        if args.command in bench_cli.COMMANDS:
            return bench_cli.run(args)
        if args.command == "study":
            return _study(args)
        config = load_config(args.config, args.overrides)
        print(json.dumps(to_dict(config), indent=2))
        return 0
    except Preempted as e:  # a study or sweep's training
        print(e)
        return PREEMPTED_EXIT_CODE
    except _user_errors() as e:
        if os.environ.get(TRACEBACK_ENV):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


TRACEBACK_ENV = "KUNLUN_JAX_TRACEBACK"  # set (to anything) to see an error's traceback


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors printed as one line (exit code 2) instead of a traceback: bad configs,
    arguments, data and paths (ValueError, OSError), and (once training has loaded them)
    non-finite training and unrestorable checkpoints."""
    errors = [ValueError, OSError]
    for module, name in (
        ("kunlun_jax.train.loop", "NonFiniteError"),
        ("kunlun_jax.train.checkpoint", "CheckpointError"),
    ):
        if module in sys.modules:
            errors.append(getattr(sys.modules[module], name))
    return tuple(errors)


if __name__ == "__main__":
    sys.exit(main())
