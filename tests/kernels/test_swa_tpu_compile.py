"""Ahead-of-time compile of the pallas_tpu SWA kernels for TPUs that are not attached.

Interpret mode cannot check what Mosaic checks (tile shapes against the (8, 128) layout, the
logsumexp row/column relayouts, VMEM budget, scalar-prefetch lowering); compiling for a
deviceless TPU topology can. Needs libtpu (`pip install libtpu==0.0.48.1`, the version
`jax[tpu]==0.11.2` pins); skipped without it. Compiles forward + backward (value_and_grad)
through the public `swa_attention(backend="pallas")` at production-ish shapes: B=2, bf16,
T=1024 with windows 128 (H=8: the v5e / v6e rows' 8 heads a step in their raised scoped-VMEM
limit) and 16 (causal, H=4), D=128 (lane-dense layout) and D=64 (head-major layout), and a
short T=80 sequence (one tile that covers Tq), on v5e and v6e.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import topologies
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pallas_kernels.common.target import compile_target
from pallas_kernels.swa import swa_attention

pytest.importorskip(
    "libtpu", reason="libtpu not installed (pip install libtpu==0.0.48.1, as jax[tpu]==0.11.2)"
)
pytestmark = pytest.mark.tpu
# Parallel test workers each load libtpu; without this the second one fails on libtpu's
# multi-process lockfile. Only deviceless topologies are used, so sharing is safe.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

B = 2
CASES = {
    "w128_d128": dict(t=1024, d=128, window=128, causal=False, heads=8),
    "w16_causal_d64": dict(t=1024, d=64, window=16, causal=True, heads=4),
    "short_w8_d64": dict(t=80, d=64, window=8, causal=False, heads=4),
    "w128_d256": dict(t=1024, d=256, window=128, causal=False, heads=4),
}


@pytest.fixture(scope="module", params=["v5e:2x2", "v6e:2x2"])
def tpu(request):
    """One chip of a deviceless TPU topology."""
    return topologies.get_topology_desc(topology_name=request.param, platform="tpu").devices[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_fwd_and_bwd_compile_for_tpu(tpu, case):
    t, d, window, causal, heads = (CASES[case][n] for n in ("t", "d", "window", "causal", "heads"))
    replicated = NamedSharding(Mesh(np.array([tpu]), ("x",)), PartitionSpec())

    def arg(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=replicated)

    def loss(q, k, v, lengths):
        o = swa_attention(
            q,
            k,
            v,
            q_lengths=lengths,
            kv_lengths=lengths,
            window=window,
            causal=causal,
            backend="pallas",
        )
        return o.astype(jnp.float32).sum()

    qkv = arg((B, t, heads, d), jnp.bfloat16)
    with compile_target(tpu):
        lowered = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(
            qkv, qkv, qkv, arg((B,), jnp.int32)
        )
    compiled = lowered.compile()
    hlo = compiled.as_text()
    for kernel in ("swa_fwd_tpu", "swa_dkdv_tpu", "swa_dq_tpu"):
        assert kernel in hlo, f"{kernel} missing from the compiled TPU program"
    assert compiled.memory_analysis() is not None


def test_compiled_tiles_must_fit_the_lane_dim(tpu):
    """A query tile that is neither a multiple of 128 nor the whole sequence is refused with a
    message naming the argument (Mosaic would reject the logsumexp block)."""
    x = jnp.zeros((1, 256, 1, 128), jnp.bfloat16)
    with compile_target(tpu), pytest.raises(ValueError, match="block_q=64 must be a multiple"):
        jax.eval_shape(lambda x: swa_attention(x, x, x, window=8, backend="pallas", block_q=64), x)
