import importlib.util
import os
import subprocess
import sys

import pytest

from kunlun_jax import platform
from tests.conftest import REPO

PICK_A_DEVICE = """
import jax  # jax reads JAX_PLATFORMS here, before the CLI chooses the platforms
from kunlun_jax.platform import prefer_present_accelerators
prefer_present_accelerators()
import os
print(jax.devices()[0].platform, os.environ["JAX_PLATFORMS"])
"""
# The kernel benchmarks (`python -m benchmarks.kernels.<op>`) choose them when their package loads.
BENCHMARK_PICKS_A_DEVICE = """
import jax
import benchmarks.kernels.gdpa
import os
print(jax.devices()[0].platform, os.environ["JAX_PLATFORMS"])
"""


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -c code` in a fresh interpreter, JAX_PLATFORMS unset unless `env` sets it."""
    base = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**base, **env},
        capture_output=True,
        text=True,
        check=True,
    )


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="needs libtpu installed")
@pytest.mark.skipif(platform.tpu_present(), reason="a TPU is present")
@pytest.mark.parametrize(
    "code", [PICK_A_DEVICE, BENCHMARK_PICKS_A_DEVICE], ids=["api", "benchmark"]
)
def test_no_tpu_probe_when_libtpu_is_installed_and_jax_was_imported_first(code):
    """With libtpu installed and no TPU, starting jax prints no libtpu init trace, although
    jax was imported (and read the environment) before the platforms were chosen."""
    proc = _python(code)
    platform, chosen = proc.stdout.split()
    assert (platform in ("cpu", "gpu"), chosen) == (True, "cuda,cpu")
    assert "TPU" not in proc.stderr, proc.stderr


def test_an_explicit_jax_platforms_wins():
    assert _python(PICK_A_DEVICE, JAX_PLATFORMS="cpu").stdout.split() == ["cpu", "cpu"]


@pytest.mark.parametrize(
    ("topology", "accelerator_type"),
    [("v5e:2x2", "v5litepod-4"), ("v5p:4x4x4", "v5p-128"), ("v6e:16x16", "v6e-256"), ("x:1", None)],
)
def test_an_absent_tpu_is_described_as_the_slice_compiled_for(
    monkeypatch, topology, accelerator_type
):
    monkeypatch.setattr(platform, "tpu_present", lambda: False)
    for name in ("TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(name, raising=False)
    platform.describe_absent_tpu(topology)
    assert os.environ.get("TPU_ACCELERATOR_TYPE") == accelerator_type
    assert os.environ["TPU_WORKER_HOSTNAMES"] == "localhost"
    monkeypatch.setenv("TPU_ACCELERATOR_TYPE", "mine")
    platform.describe_absent_tpu("v6e:2x2")
    assert os.environ["TPU_ACCELERATOR_TYPE"] == "mine"


@pytest.mark.tpu
@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="needs libtpu installed")
@pytest.mark.skipif(platform.tpu_present(), reason="a TPU is present")
def test_a_deviceless_topology_loads_libtpu_without_an_error_trace():
    code = "from kunlun_jax.parallel.aot import tpu_devices; print(len(tpu_devices('v5p:2x2x2')))"
    proc = _python(code, JAX_PLATFORMS="cpu")  # as the suite runs it: deviceless
    assert proc.stdout.split() == ["8"]
    assert "TPU" not in proc.stderr, proc.stderr
