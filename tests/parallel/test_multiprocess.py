"""Multi-host training for real: two processes (2 CPU devices each, gloo collectives) joined by
`jax.distributed`, each reading only its rows of every batch, against one process with the
same 4 devices (the test's own). The processes alternate along the mesh's batch axis, as on a
topology-ordered TPU mesh (`interleaved_mesh.py`), so each reads two separate spans of rows.
Slow (three trainings), still part of `make test`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from kunlun_jax.config import load_config
from kunlun_jax.train.loop import prepare_run_dir, train
from tests.conftest import REPO

pytestmark = pytest.mark.slow

SETS = [
    "data.num_train=1024",
    "data.num_eval=256",
    "data.synthetic.max_history=8",
    "data.synthetic.mean_history=4",
    "model.d_model=16",
    "model.num_layers=2",
    "model.n_seed=4",
    "model.head_hidden=[16]",
    "model.streams.impression.max_len=4",
    "train.batch_size=32",
    "train.steps=4",
    "train.log_every=2",
]


def _train(
    runs: Path, name: str, devices: int, *extra: str, cli: str = "tests.parallel.interleaved_mesh"
) -> subprocess.Popen:
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
        # Compile speed over code speed, as in conftest.py (three trainings compile here).
        "XLA_FLAGS": "--xla_backend_optimization_level=0 "
        f"--xla_force_host_platform_device_count={devices}",
    }
    args = ["train", "--config", "tiny", "--no-progress", "--runs-dir", str(runs), "--name", name]
    args += [a for s in SETS for a in ("--set", s)]
    return subprocess.Popen(
        [sys.executable, "-m", cli, *args, *extra],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _two_hosts(runs: Path, name: str, timeout: float, **kwargs: str) -> list[tuple[int, str]]:
    """(exit code, output) of each process of a two-process `train` (2 CPU devices each)."""
    port = _free_port()
    hosts = [
        _train(
            runs,
            name,
            2,
            "--distributed",
            "--coordinator",
            f"localhost:{port}",
            "--num-processes",
            "2",
            "--process-id",
            str(i),
            **kwargs,
        )
        for i in range(2)
    ]
    try:
        outs = [p.communicate(timeout=timeout)[0] for p in hosts]
    finally:
        for p in hosts:
            p.kill()
    return [(p.returncode, out) for p, out in zip(hosts, outs, strict=True)]


def test_two_processes_train_like_one_process_with_the_same_devices(tmp_path):
    if jax.default_backend() != "cpu" or jax.device_count() < 4:
        pytest.skip("the one-process reference trains on 4 of this process's CPU devices")
    hosts = _two_hosts(tmp_path, "multi", timeout=900)
    for code, out in hosts:
        assert code == 0, out[-3000:]
        assert "mesh processes: [0, 1, 0, 1]" in out
    # The first process reports the run; the other prints nothing of it.
    (_, first), (_, second) = hosts
    assert "eval (256 examples):" in first
    assert "run multi:" in first
    assert "eval (" not in second
    assert "run multi:" not in second
    # The same 4 devices in one process: this one (its 8 simulated devices, the first 4).
    single = prepare_run_dir(tmp_path, "single", overwrite=False, resume=False)
    one = train(load_config("tiny", SETS), single, progress=False, devices=jax.devices()[:4])

    multi = json.loads((tmp_path / "multi" / "metrics.json").read_text())
    assert multi["mesh"] == one["mesh"] == {"data": 4, "fsdp": 1, "model": 1}
    for key in ("ne", "auc", "log_loss", "calibration"):
        assert multi[key] == pytest.approx(one[key], rel=1e-5), key


def test_a_bad_batch_on_one_host_stops_every_host_with_an_error(tmp_path):
    """Process 1's first batch has an id out of range: it names the field, process 0 names
    process 1, and both exit at once. Before, process 0 entered the step alone and failed 86 s
    later with a Gloo key-value timeout (on GPUs and TPUs a collective waits longer)."""
    (code0, out0), (code1, out1) = _two_hosts(
        tmp_path, "bad", timeout=240, cli="tests.parallel.bad_batch_on_one_host"
    )
    assert code1 == 2, out1[-3000:]
    assert "error: the batch of train step 0: batch field 'sparse' column 0" in out1
    assert code0 == 2, out0[-3000:]
    assert "error: the batch of train step 0 failed validation on process 1" in out0
