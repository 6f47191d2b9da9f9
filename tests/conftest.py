"""Test setup: CPU unless KUNLUN_TEST_PLATFORMS says otherwise; shared tiny specs and batches."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

# libtpu (installed for deviceless TPU compiles) would otherwise probe for a TPU at start-up.
os.environ.setdefault("JAX_PLATFORMS", os.environ.get("KUNLUN_TEST_PLATFORMS", "cpu"))
# On CPU the Triton-language kernels (gdpa backend "jax_triton") run in Triton's interpreter,
# which `@triton.jit` picks when a kernel is defined: set before anything imports triton. The
# cubin compile test runs in a subprocess without it.
if os.environ["JAX_PLATFORMS"] == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")
# On CPU the suite's time is mostly XLA compiles of small programs: trade generated-code speed
# for compile speed (about 2x), and share compiled programs between tests through a cache
# (identical train steps are built many times, e.g. to check exact resume).
# 8 simulated CPU devices for the sharding tests (device 0 alone for everything else:
# training tests pin `mesh.data=1`, plain `jax.jit` uses the default device). A GPU run
# (KUNLUN_TEST_PLATFORMS=cuda) compiles as the benchmarks do: no CPU flags.
if os.environ["JAX_PLATFORMS"] == "cpu":
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + " --xla_backend_optimization_level=0 --xla_force_host_platform_device_count=8"
    ).strip()
# Made by the first process (with xdist, the controller: its workers inherit the variables),
# which removes it at the end (pytest_unconfigure).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="kunlun-jax-cache-")
    os.environ["KUNLUN_TEST_CACHE_OWNER"] = str(os.getpid())
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import numpy as np
import pytest

from kunlun_jax.data.spec import FeatureSpec, StreamSpec

REPO = Path(__file__).resolve().parents[1]

# `tiny` shrunk for training tests (one CompSkip pair, short histories, one device): tests that
# train use these overrides so that the compile cache shares their programs.
FAST_TINY = [
    "data.num_train=2048",
    "data.num_eval=512",
    "data.synthetic.max_history=8",
    "data.synthetic.mean_history=4",
    "model.d_model=16",
    "model.num_layers=2",
    "model.n_seed=4",
    "model.head_hidden=[16]",
    "model.streams.impression.max_len=4",
    "train.batch_size=64",
    "train.steps=6",
    "mesh.data=1",
]


@pytest.fixture
def tiny_spec() -> FeatureSpec:
    """Three sparse features, two dense, two streams (one sharing the item/category tables)."""
    return FeatureSpec(
        sparse_names=("user", "item", "category"),
        sparse_vocab_sizes=(50, 100, 10),
        num_dense=2,
        streams=(
            StreamSpec("click", 100, 10, 12, item_feature="item", side_feature="category"),
            StreamSpec("view", 60, 5, 20),
        ),
    )


def random_batch(spec: FeatureSpec, batch: int, seed: int = 0, lengths=None) -> dict:
    """A valid random batch for `spec`; lengths: {stream: int [B]} to fix history lengths."""
    rng = np.random.default_rng(seed)

    def stream(s: StreamSpec) -> dict:
        n = (lengths or {}).get(s.name)
        n = rng.integers(0, s.max_len + 1, batch) if n is None else np.asarray(n)
        real = np.arange(s.max_len)[None] < n[:, None]
        dt = np.sort(rng.exponential(3e4, (batch, s.max_len)), axis=1)
        return {
            "item": np.where(real, rng.integers(1, s.item_vocab_size, real.shape), 0).astype(
                np.int32
            ),
            "side": np.where(real, rng.integers(1, s.side_vocab_size, real.shape), 0).astype(
                np.int32
            ),
            "dt": np.where(real, dt, 0.0).astype(np.float32),
            "length": n.astype(np.int32),
        }

    return {
        "sparse": np.stack([rng.integers(0, v, batch) for v in spec.sparse_vocab_sizes], 1).astype(
            np.int32
        ),
        "dense": rng.normal(size=(batch, spec.num_dense)).astype(np.float32),
        "label": rng.integers(0, 2, batch).astype(np.float32),
        "seqs": {s.name: stream(s) for s in spec.streams},
    }


def run_python(*argv: str, env: Mapping[str, str], timeout: float = 900) -> str:
    """stdout of `python *argv` run from the repo root with environment `env`; fails the test
    with the end of its stderr unless it exits 0."""
    proc = subprocess.run(
        [sys.executable, *argv],
        cwd=REPO,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `slow` (a minute or more on CI's 2 cores) run first, so that under
    `pytest -n 2` no worker is left with one of them at the end while the other idles."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_unconfigure(config: pytest.Config) -> None:
    """The compile cache this session created (some 100 MB) is not left in the temp dir."""
    if os.environ.get("KUNLUN_TEST_CACHE_OWNER") == str(os.getpid()):
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
