"""A whole GPU session in one device call: stages in priority order under a wall-clock budget.

    python -m benchmarks.gpu_session --out OUT [--budget-s 540] [--stages tests gdpa ...]

(`benchmarks/gpu_session.sh OUT` installs the carried wheels first, then runs this.)

Stages, most important first: `preflight` (device and package versions, which imports fail),
`tests` (the GPU kernel tests in bf16, so the timings that follow
are of kernels known to be right on the hardware), `gdpa`, `swa`, `hsp` (the kernel benchmarks'
--quick profiles), `bench` (the `base` train step), `tune` and `tune_mosaic` (the GDPA tile
searches of pallas_triton and pallas_mosaic_gpu, which resume from
benchmarks/results/gdpa_autotune_<impl>.json when that is from the same device kind). Each
stage is a subprocess, so a crash or hang ends only that stage, with a timeout of what is left
of the budget, capped per stage.
Its output goes to OUT/<stage>.log; the benchmarks rewrite their JSON after every result, so
a stage cut off by its timeout keeps what it measured. A stage whose minimum no longer fits
is recorded as skipped. OUT/session.json lists every stage's command, return code, seconds
and files. Last it prints the measured numbers beside the issues' targets (`target_lines`),
which the device call's output tail carries. The device tool returns at most 8 files from
its OUT, so with `--archive A` the whole output directory is also packed into A (a .tar.gz,
replaced atomically after every stage: a call killed mid-stage still returns what the
finished stages wrote); `gpu_session.sh` points OUT at a work directory and A into the
device's OUT. The device allowance (15 minutes per session) also pays for the machine's
start (a minute or two), so the default budget (DEFAULT_BUDGET_S) fits one call of at most
600 s with the wheels' install, and its caps let both issues' stages run in it: the caps of
every stage up to `swa` plus the minimum of `hsp` fit the budget (a test checks it); `bench`
and the tile searches get what is left, or a second call (`--stages bench tune tune_mosaic`).
`--smoke` runs every stage's CPU-sized twin (benchmarks --smoke, tests collected only, `tiny`
step): a dry run of the command lines.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shlex
import subprocess
import sys
import tarfile
import time
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage: `python` + the arguments in `args` (a shell-quoted line, "{out}" replaced by
    the output directory), a time cap and the minimum worth starting with; `env` is added to
    the environment."""

    args: str
    cap_s: float
    min_s: float
    smoke: str  # the same stage at CPU-sized shapes (`--smoke`: a dry run of the commands)
    env: tuple[tuple[str, str], ...] = ()

    def command(self, out: Path, *, smoke: bool = False) -> list[str]:
        line = (self.smoke if smoke else self.args).format(out=shlex.quote(str(out)))
        return [sys.executable, *shlex.split(line)]


def _tune(impl: str) -> str:
    """The GDPA tile search of `impl`, resumed from the committed report of an earlier session
    (used when it is from the same device kind)."""
    return (
        f"-m benchmarks.kernels.gdpa_autotune --impl {impl}"
        f" --resume-from benchmarks/results/gdpa_autotune_{impl}.json"
        f" --out {{out}}/gdpa_autotune_{impl}.json"
    )


DEFAULT_BUDGET_S = 540  # seconds of stages in one device call (600 s at most, install included)

STAGES: dict[str, Stage] = {
    "preflight": Stage(
        "-m benchmarks.gpu_session --preflight --out {out}",
        cap_s=60,
        min_s=10,
        smoke="-m benchmarks.gpu_session --preflight --out {out}",
    ),
    "tests": Stage(
        # -v: each test's result is in the log as it ends, also when the stage is cut off.
        "-m pytest -m gpu -v -rA tests/kernels/test_on_gpu.py -k 'bfloat16 or swa or seed'",
        cap_s=130,
        min_s=60,
        smoke="-m pytest -m gpu -q --co tests/kernels/test_on_gpu.py -k 'bfloat16 or swa or seed'",
        env=(("KUNLUN_TEST_PLATFORMS", "cuda"),),
    ),
    "gdpa": Stage(
        "-m benchmarks.kernels.gdpa --quick --out {out}/gdpa.json",
        cap_s=200,
        min_s=60,
        smoke="-m benchmarks.kernels.gdpa --smoke --out {out}/gdpa.json",
    ),
    "swa": Stage(
        "-m benchmarks.kernels.swa --quick --window 128 --out {out}/swa.json --plot {out}/swa.png",
        cap_s=75,
        min_s=40,
        smoke="-m benchmarks.kernels.swa --smoke --out {out}/swa.json --plot {out}/swa.png",
    ),
    "hsp": Stage(
        "-m benchmarks.kernels.hsp --quick --out {out}/hsp.json",
        cap_s=75,
        min_s=40,
        smoke="-m benchmarks.kernels.hsp --smoke --out {out}/hsp.json",
    ),
    "bench": Stage(  # --overwrite: a repeated session replaces its own work directory's file
        "-m kunlun_jax.cli bench --config base --steps 10 --out {out}/bench_base.json --overwrite",
        cap_s=150,
        min_s=90,
        smoke="-m kunlun_jax.cli bench --config tiny --set mesh.data=1 --steps 2 --warmup 1"
        " --out {out}/bench_base.json --overwrite",
    ),
    "tune": Stage(
        _tune("pallas_triton") + " --budget-s 150",
        cap_s=200,
        min_s=60,
        smoke=_tune("pallas_triton") + " --smoke --iters 1 --warmup 1 --budget-s 60",
    ),
    # Four candidates a key on Hopper. Smoke: the command line and the report only (no budget:
    # the Mosaic GPU interpreter takes about a minute for the smoke's candidates).
    "tune_mosaic": Stage(
        _tune("pallas_mosaic_gpu") + " --budget-s 90",
        cap_s=120,
        min_s=45,
        smoke=_tune("pallas_mosaic_gpu") + " --smoke --budget-s 0",
    ),
}


def run_stage(name: str, stage: Stage, out: Path, timeout_s: float, *, smoke: bool) -> dict:
    """Run one stage with its output in OUT/<name>.log; the record of what happened."""
    command = stage.command(out, smoke=smoke)
    start = time.monotonic()
    with open(out / f"{name}.log", "w") as log:
        try:
            rc = subprocess.run(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **({} if smoke else dict(stage.env))},
                timeout=timeout_s,
                check=False,
            ).returncode
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            rc, status = None, "timed out"
    return dict(
        stage=name,
        status=status,
        returncode=rc,
        seconds=round(time.monotonic() - start, 1),
        timeout_s=round(timeout_s, 1),
        command=command,
    )


PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "grain", "tokamax", "triton")


def preflight(out: Path) -> dict:
    """OUT/preflight.json: the device and the versions of what the stages import (a package
    that fails to import is recorded with its error, e.g. jax_triton against the image's
    triton), so a failed stage can be told apart from a missing dependency."""
    import importlib

    import jax

    from kunlun_jax.provenance import code_version

    versions = {}
    for name in (*PACKAGES, "jax_triton"):
        try:
            versions[name] = getattr(importlib.import_module(name), "__version__", "?")
        except Exception as e:  # recorded, not raised: the point is to see all of them
            versions[name] = f"import failed: {type(e).__name__}: {str(e)[:200]}"
    device = jax.devices()[0]
    report = dict(
        device_kind=device.device_kind,
        platform=device.platform,
        compute_capability=getattr(device, "compute_capability", None),
        device_count=jax.device_count(),
        versions=versions,
        **code_version(),  # the commit the results name (KUNLUN_JAX_COMMIT on a device's copy)
    )
    (out / "preflight.json").write_text(json.dumps(report, indent=1))
    return report


def _number(value: float | None, prefix: str = "") -> str:
    return "n/a" if value is None else f"{prefix}{value:.2f}"


def target_lines(out: Path) -> list[str]:
    """The issues' H100 targets beside what the benchmark JSONs in `out` measured (those that
    exist), one line each: GDPA's `summary` rows (forward / backward fractions of the same-run
    matmul, >= 0.70 / 0.50; fwd+bwd speedups over the XLA reference, >= 3, and over padded
    cuDNN, > 1 on jagged lengths), SWA's speedup over the fastest full attention per T (>= 5
    at w = 128, T = 4096) and HSP's over the XLA composition (>= 3)."""
    lines = []
    if (path := out / "gdpa.json").exists():
        for r in json.loads(path.read_text()).get("summary", []):
            lines.append(
                f"gdpa {r['name']} H{r['heads']} {r['lengths']} {r['impl']}: of matmul fwd"
                f" {_number(r['fwd_fraction_of_matmul'])}"
                f" bwd {_number(r['bwd_fraction_of_matmul'])};"
                f" fwd+bwd {_number(r['fwdbwd_speedup_vs_reference'], 'x')} vs reference,"
                f" {_number(r['fwdbwd_speedup_vs_cudnn_padded'], 'x')} vs padded cuDNN"
            )
    if (path := out / "swa.json").exists() and (sweep := json.loads(path.read_text()).get("sweep")):
        for impl, series in sweep["impls"].items():
            speedups = zip(sweep["t"], series["speedup_vs_best_full"], strict=True)
            points = ", ".join(f"T={t} {_number(x, 'x')}" for t, x in speedups)
            lines.append(f"swa w={sweep['window']} {impl} vs best full attention: {points}")
    if (path := out / "hsp.json").exists():
        for r in json.loads(path.read_text())["results"]:
            for impl, e in r["impls"].items():
                if e.get("error") is None and impl != "hsp_reference":
                    # absent where the reference failed or was cut off by the stage's cap
                    speedup = _number(e.get("hsp_speedup_vs_reference"), "x")
                    lines.append(f"hsp {r['name']} {impl}: fwd+bwd {speedup} vs reference")
    return lines


def archive(out: Path, path: Path) -> None:
    """Pack the files of `out` (names relative to it) into the .tar.gz `path`, atomically: a
    reader sees the previous archive or the new one, never a partial file."""
    partial = path.with_name(f".{path.name}.partial")
    with tarfile.open(partial, "w:gz") as tar:
        for file in sorted(p for p in out.rglob("*") if p.is_file()):
            tar.add(file, arcname=str(file.relative_to(out)))
    os.replace(partial, path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--preflight", action="store_true", help="only write OUT/preflight.json")
    parser.add_argument(
        "--smoke", action="store_true", help="dry run of every stage at CPU-sized shapes"
    )
    parser.add_argument(
        "--budget-s", type=float, default=DEFAULT_BUDGET_S, help="wall-clock budget"
    )
    parser.add_argument("--stages", nargs="+", choices=list(STAGES), default=list(STAGES))
    parser.add_argument(
        "--archive", type=Path, help="also pack OUT into this .tar.gz after every stage"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.archive and args.archive.resolve().is_relative_to(args.out.resolve()):
        parser.error(f"--archive {args.archive} must lie outside --out {args.out}")
    if args.preflight:
        return preflight(args.out)
    deadline = time.monotonic() + args.budget_s
    session = dict(
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        command=shlex.join(
            [sys.executable, "-m", "benchmarks.gpu_session", *(argv or sys.argv[1:])]
        ),
        budget_s=args.budget_s,
        stages=[],
    )
    for name in args.stages:
        stage = STAGES[name]
        left = deadline - time.monotonic()
        if left < stage.min_s:
            record = dict(stage=name, status="skipped", reason=f"{left:.0f} s left")
        else:
            record = run_stage(name, stage, args.out, min(stage.cap_s, left), smoke=args.smoke)
        print(json.dumps(record), flush=True)
        session["stages"].append(record)
        session["files"] = sorted(p.name for p in args.out.iterdir())
        (args.out / "session.json").write_text(json.dumps(session, indent=1))
        if args.archive:
            archive(args.out, args.archive)
    try:
        lines = target_lines(args.out)
    except Exception as e:  # the results are written and archived: a summary bug must not fail
        lines = [f"no summary ({type(e).__name__}: {e}); read the JSONs"]
    print("\n".join(["targets (issues 5 and 6):", *lines]), flush=True)
    return session


if __name__ == "__main__":
    main()
