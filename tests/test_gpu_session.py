"""The one-call GPU session driver (`benchmarks/gpu_session.py`) and the --quick profiles it
runs, on CPU with stand-in stages: budgets, timeouts, skips, logs and the session record."""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from benchmarks import gpu_session
from benchmarks.gpu_session import Stage
from benchmarks.kernels import gdpa, hsp, swa
from tests.conftest import REPO


def _stage(code: str, cap_s: float = 30, min_s: float = 0) -> Stage:
    line = f"-c {shlex.quote(code)}"
    return Stage(line, cap_s=cap_s, min_s=min_s, smoke=line)


def test_stages_run_in_order_under_the_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(
        gpu_session,
        "STAGES",
        {
            "ok": _stage("import os, sys; print('hello', os.environ['SEEN'])"),
            "fails": _stage("raise SystemExit(3)"),
            "hangs": _stage("import time; time.sleep(60)", cap_s=1.5),
            "late": _stage("print('never')", min_s=1e6),
        },
    )
    monkeypatch.setenv("SEEN", "env passed")
    session = gpu_session.main(
        ["--out", str(tmp_path), "--budget-s", "60", "--stages", "ok", "fails", "hangs", "late"]
    )
    status = {s["stage"]: s["status"] for s in session["stages"]}
    assert status == {"ok": "ok", "fails": "failed", "hangs": "timed out", "late": "skipped"}
    by_name = {s["stage"]: s for s in session["stages"]}
    assert by_name["fails"]["returncode"] == 3
    assert 1.5 <= by_name["hangs"]["seconds"] < 30
    assert (tmp_path / "ok.log").read_text().strip() == "hello env passed"
    assert not (tmp_path / "late.log").exists()
    assert json.loads((tmp_path / "session.json").read_text()) == session


def test_the_archive_holds_every_file_after_every_stage(tmp_path, monkeypatch):
    """The device tool returns at most 8 files, so `--archive` packs the whole output
    directory, replaced after each stage (a later stage's failure keeps the earlier files)."""
    monkeypatch.setattr(
        gpu_session,
        "STAGES",
        {
            "writes": _stage(f"open({str(tmp_path / 'work' / 'r.json')!r}, 'w').write('1')"),
            "fails": _stage("raise SystemExit(1)"),
        },
    )
    work, packed = tmp_path / "work", tmp_path / "out" / "gpu_session.tar.gz"
    packed.parent.mkdir()
    gpu_session.main(["--out", str(work), "--archive", str(packed)])
    with tarfile.open(packed) as tar:
        names = set(tar.getnames())
        assert tar.extractfile("r.json").read() == b"1"
        assert json.load(tar.extractfile("session.json"))["stages"][1]["status"] == "failed"
    assert names == {"writes.log", "fails.log", "r.json", "session.json"}
    assert [p.name for p in packed.parent.iterdir()] == ["gpu_session.tar.gz"]
    with pytest.raises(SystemExit):
        gpu_session.main(["--out", str(work), "--archive", str(work / "a.tar.gz")])


def test_the_shell_driver_returns_two_files_and_archives_the_rest(tmp_path):
    """`gpu_session.sh OUT` as the device call runs it (here: the preflight stage on CPU, no
    carried wheels): OUT gets the archive and session.json only, the archive everything."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",  # python3: this venv's
        "GPU_SESSION_WORK": str(tmp_path / "work"),
        "GPU_SESSION_WHEELS": str(tmp_path / "no_wheels"),
        "JAX_PLATFORMS": "cpu",
    }
    out = tmp_path / "out"
    command = ["bash", "benchmarks/gpu_session.sh", str(out), "--stages", "preflight"]
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True, timeout=300)
    assert sorted(p.name for p in out.iterdir()) == ["gpu_session.tar.gz", "session.json"]
    with tarfile.open(out / "gpu_session.tar.gz") as tar:
        names = set(tar.getnames())
        preflight = json.load(tar.extractfile("preflight.json"))
    assert names == {"device.txt", "imports.log", "preflight.json", "preflight.log", "session.json"}
    assert preflight["platform"] == "cpu"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    assert preflight["commit"] == (head.stdout.strip() if head.returncode == 0 else None)


def test_a_stage_gets_only_what_is_left_of_the_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(
        gpu_session, "STAGES", {"long": _stage("import time; time.sleep(60)", cap_s=100)}
    )
    session = gpu_session.main(["--out", str(tmp_path), "--budget-s", "2", "--stages", "long"])
    (record,) = session["stages"]
    assert record["status"] == "timed out"
    assert record["timeout_s"] <= 2


def test_real_stages_fit_the_default_budget_and_write_under_out(tmp_path):
    # correctness before timings
    assert list(gpu_session.STAGES)[:3] == ["preflight", "tests", "gdpa"]
    assert sum(s.min_s for s in gpu_session.STAGES.values()) <= gpu_session.DEFAULT_BUDGET_S
    # Both issues' kernel benchmarks run in one call even when every stage before them uses
    # its whole cap (the device allowance, 15 minutes with the machine's start, fits one call).
    names = list(gpu_session.STAGES)
    before_hsp = names[: names.index("hsp")]
    assert before_hsp[-2:] == ["gdpa", "swa"]
    caps = sum(gpu_session.STAGES[n].cap_s for n in before_hsp)
    assert caps + gpu_session.STAGES["hsp"].min_s <= gpu_session.DEFAULT_BUDGET_S
    for stage in gpu_session.STAGES.values():
        assert stage.min_s <= stage.cap_s
        command = stage.command(tmp_path)
        outputs = [b for a, b in itertools.pairwise(command) if a in ("--out", "--plot")]
        assert all(path.startswith(str(tmp_path)) for path in outputs), command


def test_quick_profiles():
    cases = gdpa.quick_cases(128)
    assert {(c.heads, c.head_dim) for c in cases} == {(8, 128)}
    assert {c.is_self for c in cases} == {True, False}
    assert {c.lengths for c in cases} == {"full", "uniform", "longtail"}
    assert any(c.causal for c in cases)
    args = gdpa.parse_args(["--quick", "--out", "x.json"])
    assert args.impls == list(gdpa.QUICK_IMPLS)
    assert "gdpa_jax_triton" in args.impls
    swa_cases = swa.quick_cases(128, 8, 128)
    assert {(c.tq, c.window) for c in swa_cases} == {(1024, 128), (1024, None)} | {
        (4096, 128),
        (4096, None),
    }
    assert swa.parse_args(["--quick", "--out", "x.json"]).impls == list(swa.QUICK_IMPLS)
    assert {c.t for c in hsp.quick_cases()} == {1024, 4096}
    assert hsp.parse_args(["--quick", "--out", "x.json"]).impls == list(hsp.QUICK_IMPLS)
    assert {"hsp_pallas", "hsp_reference"} <= set(hsp.QUICK_IMPLS)  # the >= 3x target


def test_preflight_records_devices_and_versions(tmp_path):
    report = gpu_session.main(["--out", str(tmp_path), "--preflight"])
    assert json.loads((tmp_path / "preflight.json").read_text()) == report
    assert report["platform"] == "cpu"
    assert report["versions"]["jax"] == "0.11.2"
    assert report["versions"]["triton"] == "3.9.0"
    assert report["versions"]["jax_triton"] == "0.4.1"  # the test extra's (it imports on CPU)


# Stages not run by the twin test: the kernel benchmarks' smoke tests run their `--smoke`
# command lines (tests/kernels/helpers.run_benchmark_smoke); bench's is parsed and its config
# loaded (the parse test), and the bench CLI runs in-process at a smaller `tiny` in
# tests/test_bench_smoke.py (as a subprocess the twin takes ~45 s of compiles).
RUN_ELSEWHERE = ("gdpa", "swa", "hsp", "bench")


def test_every_real_stage_command_line_parses(tmp_path):
    """The command lines a GPU session runs (not their CPU twins), through each module's own
    argument parser, and `bench`'s config loads: a typo in a flag fails here."""
    from benchmarks.kernels import gdpa_autotune
    from kunlun_jax.cli import _parser
    from kunlun_jax.config import load_config

    parsers = {
        "benchmarks.kernels.gdpa": gdpa.parse_args,
        "benchmarks.kernels.swa": swa.parse_args,
        "benchmarks.kernels.hsp": hsp.parse_args,
        "benchmarks.kernels.gdpa_autotune": gdpa_autotune.parse_args,
        "kunlun_jax.cli": _parser().parse_args,
    }
    parsed = {}
    for name, stage in gpu_session.STAGES.items():
        for smoke in (False, True):
            flag, module, *argv = stage.command(tmp_path, smoke=smoke)[1:]
            assert flag == "-m", (name, smoke)
            if module in parsers:
                parsed[name, smoke] = parsers[module](argv)
    assert {name for name, _ in parsed} == {"gdpa", "swa", "hsp", "bench", "tune", "tune_mosaic"}
    assert all(parsed[name, False].quick for name in ("gdpa", "swa", "hsp"))
    assert parsed["swa", False].window == 128
    assert {parsed[n, False].impl for n in ("tune", "tune_mosaic")} == {
        "pallas_triton",
        "pallas_mosaic_gpu",
    }
    for smoke in (False, True):
        bench = parsed["bench", smoke]
        assert bench.command == "bench"
        assert bench.overwrite  # a repeated session replaces its own bench_base.json
        load_config(bench.config, bench.overrides)


def test_every_other_stage_command_runs_in_its_cpu_sized_twin(tmp_path):
    """`--smoke`: the same modules and flags at CPU shapes, so a typo in a stage's command line
    is found here, not in a GPU session (RUN_ELSEWHERE: see there)."""
    stages = [name for name in gpu_session.STAGES if name not in RUN_ELSEWHERE]
    argv = ["--out", str(tmp_path), "--smoke", "--budget-s", "900", "--stages", *stages]
    session = gpu_session.main(argv)
    status = {s["stage"]: s["status"] for s in session["stages"]}
    logs = {name: (tmp_path / f"{name}.log").read_text()[-2000:] for name in status}
    assert status == dict.fromkeys(stages, "ok"), logs
    for name in ("preflight", "gdpa_autotune_pallas_triton", "gdpa_autotune_pallas_mosaic_gpu"):
        assert json.loads((tmp_path / f"{name}.json").read_text()), name
    assert "collected" in logs["tests"] or "tests collected" in logs["tests"]


def test_the_carried_wheels_are_the_locked_versions():
    """benchmarks/device_wheels.sh downloads each of its packages at requirements.lock's pin
    (jax-triton at the gpu extra's): a package it names that the lock lost would stop it."""
    script = (REPO / "benchmarks" / "device_wheels.sh").read_text()
    names = re.search(r"^NAMES=\((.*)\)$", script, re.MULTILINE)[1].split()
    lock = (REPO / "requirements.lock").read_text().splitlines()
    pinned = {line.split("==")[0] for line in lock if "==" in line}
    assert {"grain", "tokamax", "xprof", "pydantic"} <= set(names) <= pinned
    assert re.search(r"jax-triton==[0-9.]+", (REPO / "pyproject.toml").read_text())


def test_the_target_summary_reads_results_cut_off_mid_stage(tmp_path):
    """hsp.json as a stage cut off after our kernel but before the XLA reference leaves it."""
    result = {"name": "B8_T4096", "impls": {"hsp_pallas": {"error": None, "fwdbwd_ms": 1.0}}}
    (tmp_path / "hsp.json").write_text(json.dumps({"results": [result]}))
    lines = gpu_session.target_lines(tmp_path)
    assert lines == ["hsp B8_T4096 hsp_pallas: fwd+bwd n/a vs reference"]
