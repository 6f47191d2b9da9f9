"""Compiled-estimate records from a deviceless TPU compile (needs libtpu; nothing runs)."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from kunlun_jax.bench.compare import markdown_report
from kunlun_jax.bench.estimate import estimate_record
from kunlun_jax.bench.schema import bench_document
from kunlun_jax.config import load_config
from kunlun_jax.data.synthetic import feature_spec

pytest.importorskip(
    "libtpu", reason="libtpu not installed (pip install libtpu==0.0.48.1, as jax[tpu]==0.11.2)"
)
pytestmark = pytest.mark.tpu
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # see tests/kernels/test_gdpa_tpu_compile


def _compiled_for_v5e():
    """A data-parallel matmul + loss gradient compiled for 4 v5e chips."""
    from jax.experimental import topologies

    devices = topologies.get_topology_desc(topology_name="v5e:2x2", platform="tpu").devices
    mesh = Mesh(np.array(devices), ("data",))
    x = jax.ShapeDtypeStruct(
        (256, 512), jnp.bfloat16, sharding=NamedSharding(mesh, PartitionSpec("data"))
    )
    w = jax.ShapeDtypeStruct(
        (512, 512), jnp.bfloat16, sharding=NamedSharding(mesh, PartitionSpec())
    )

    def loss(w, x):
        return jnp.mean(jnp.tanh(x @ w).astype(jnp.float32) ** 2)

    return jax.jit(jax.grad(loss)).lower(w, x).compile()


def test_estimate_record_is_a_roofline_bound_rendered_apart():
    config = load_config("tiny", ["train.batch_size=256"])
    record = estimate_record(
        _compiled_for_v5e(),
        config,
        feature_spec(config.data.synthetic),
        config_name="tiny",
        topology="v5e:2x2",
    )
    bench_document([record])  # validates: a compiled_estimate with no measured fields
    e = record["estimate"]
    assert record["num_devices"] == 4
    assert e["device_kind"] == "TPU v5 lite"
    # Forward 2·64·512·512 per device plus a backward of the same size: XLA counts >= 2 matmuls.
    assert e["xla_flops_per_device"] >= 2 * (2 * 64 * 512 * 512)
    compute, memory = e["xla_flops_per_device"] / 197e12, e["xla_bytes_per_device"] / 819e9
    assert e["roofline_step_s"] == pytest.approx(max(compute, memory))
    assert e["limiter"] == ("compute" if compute >= memory else "memory")
    assert e["roofline_examples_per_sec"] == pytest.approx(256 / e["roofline_step_s"])
    assert e["memory_per_device_bytes"] > 0
    assert "not run" in record["notes"][0]
    text = markdown_report([(record, "aot.json")])
    assert "### Measured" not in text
    assert "| tiny baseline | v5e:2x2 (TPU v5 lite) | 4 | 256 |" in text
