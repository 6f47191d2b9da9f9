"""Ahead-of-time compile of the TPU seed-pooling kernels for TPUs that are not attached.

Interpret mode cannot check what Mosaic checks (tile shapes against the (8, 128) layout, the
[S, 1] softmax statistics, VMEM budget, scalar-prefetch index maps); compiling for a deviceless
TPU topology can. Needs libtpu (`pip install libtpu==0.0.48.1`, the version `jax[tpu]==0.11.2`
pins); skipped without it. Forward + backward (value_and_grad w.r.t. seeds, k, v), bf16, B=2,
H=4, T=1000 (ragged against the 512-row kv tile): the lane-dense layout (D=128, S=64) and the
head-major layout with padded seeds (D=64, S=20).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import topologies
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pallas_kernels.hsp.api import seed_pooling

pytest.importorskip(
    "libtpu", reason="libtpu not installed (pip install libtpu==0.0.48.1, as jax[tpu]==0.11.2)"
)
pytestmark = pytest.mark.tpu
# Parallel test workers each load libtpu; without this the second one fails on libtpu's
# multi-process lockfile. Only deviceless topologies are used, so sharing is safe.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

B, H, T = 2, 4, 1000


@pytest.mark.parametrize(
    ("topology", "head_dim", "num_seeds"),
    [("v5e:2x2", 128, 64), ("v5e:2x2", 64, 20), ("v6e:2x2", 128, 64)],
)
def test_fwd_and_bwd_compile_for_tpu(topology, head_dim, num_seeds):
    tpu = topologies.get_topology_desc(topology_name=topology, platform="tpu").devices[0]
    replicated = NamedSharding(Mesh(np.array([tpu]), ("x",)), PartitionSpec())

    def arg(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=replicated)

    def loss(seeds, k, v, kv_lengths):
        o = seed_pooling(
            seeds,
            k,
            v,
            kv_lengths=kv_lengths,
            backend="tpu",
            interpret=False,
            device_kind=tpu.device_kind,
        )
        return o.astype(jnp.float32).sum()

    kv = arg((B, T, H, head_dim), jnp.bfloat16)
    compiled = (
        jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
        .lower(arg((num_seeds, H, head_dim), jnp.bfloat16), kv, kv, arg((B,), jnp.int32))
        .compile()
    )
    hlo = compiled.as_text()
    for kernel in ("seed_pooling_fwd_tpu", "seed_pooling_bwd_tpu"):
        assert kernel in hlo, f"{kernel} missing from the compiled TPU program"
    assert compiled.memory_analysis() is not None
