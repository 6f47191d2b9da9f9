"""Ahead-of-time compile of the pallas_tpu GDPA kernels for TPUs that are not attached.

Interpret mode cannot check what Mosaic checks (tile shapes against the (8, 128) layout, VMEM
budget, supported ops, scalar-prefetch lowering); compiling for a deviceless TPU topology can.
Needs libtpu (`pip install libtpu==0.0.48.1`, the version `jax[tpu]==0.11.2` pins); skipped
without it. Compiles forward + backward (value_and_grad) at production shapes: B=2, H=4,
D=128, bf16; self-attention T=1024 and cross-attention Tq=1024 / Tkv=64, on v5e and v6e.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import topologies
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pallas_kernels.gdpa.api import gdpa_pallas

pytest.importorskip(
    "libtpu", reason="libtpu not installed (pip install libtpu==0.0.48.1, as jax[tpu]==0.11.2)"
)
pytestmark = pytest.mark.tpu
# Parallel test workers each load libtpu; without this the second one fails on libtpu's
# multi-process lockfile. Only deviceless topologies are used, so sharing is safe.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

B, H, D = 2, 4, 128
CASES = {
    "self": dict(tq=1024, tkv=1024, window=None, causal=False),
    "self_causal_window": dict(tq=1024, tkv=1024, window=100, causal=True),
    "cross": dict(tq=1024, tkv=64, window=None, causal=False),
}


@pytest.fixture(scope="module", params=["v5e:2x2", "v6e:2x2"])
def tpu(request):
    """One chip of a deviceless TPU topology."""
    return topologies.get_topology_desc(topology_name=request.param, platform="tpu").devices[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_fwd_and_bwd_compile_for_tpu(tpu, case):
    tq, tkv, window, causal = (CASES[case][n] for n in ("tq", "tkv", "window", "causal"))
    replicated = NamedSharding(Mesh(np.array([tpu]), ("x",)), PartitionSpec())

    def arg(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=replicated)

    def loss(q, k, v, q_lengths, kv_lengths):
        o = gdpa_pallas(
            q,
            k,
            v,
            impl="pallas_tpu",
            platform="tpu",
            device_kind=tpu.device_kind,
            interpret=False,
            activation="silu",
            qk_scale=D**-0.5,
            out_scale=1.0 / tkv,
            q_lengths=q_lengths,
            kv_lengths=kv_lengths,
            window=window,
            causal=causal,
            block_q=None,
            block_kv=None,
        )
        return o.astype(jnp.float32).sum()

    compiled = (
        jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
        .lower(
            arg((B, tq, H, D), jnp.bfloat16),
            arg((B, tkv, H, D), jnp.bfloat16),
            arg((B, tkv, H, D), jnp.bfloat16),
            arg((B,), jnp.int32),
            arg((B,), jnp.int32),
        )
        .compile()
    )
    hlo = compiled.as_text()
    for kernel in ("gdpa_fwd_tpu", "gdpa_dkdv_tpu", "gdpa_dq_tpu"):
        assert kernel in hlo, f"{kernel} missing from the compiled TPU program"
    assert compiled.memory_analysis() is not None
