"""Ahead-of-time compile of the pallas_tpu GDPA kernels for TPUs that are not attached.

Interpret mode cannot check what Mosaic checks (tile shapes against the (8, 128) layout, VMEM
budget, supported ops, scalar-prefetch lowering); compiling for a deviceless TPU topology can.
Needs libtpu (`pip install libtpu==0.0.48.1`, the version `jax[tpu]==0.11.2` pins); skipped
without it. Compiles forward + backward (value_and_grad) at production shapes: D=128, bf16;
self-attention B=8, T=4096, H=8 (the v5e / v6e rows' 8 heads a step: with operands this
large, in HBM, their dK/dV step needs 19 MiB, more than v5e's 16 MiB default scoped VMEM,
so the rows' raised limit must reach Mosaic), with a causal window B=2, T=1024, H=4, and
cross-attention B=2, Tq=1024 / Tkv=64, H=4, on v5e and v6e; and D=256 self-attention B=2,
T=1024, H=4 (the D=256 rows' tiles and heads a step, in the default limit). Every activation's
kernels are compiled too (one program, cross-attention).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import topologies
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pallas_kernels.common.activations import ACTIVATIONS
from pallas_kernels.gdpa.api import gdpa_pallas

pytest.importorskip(
    "libtpu", reason="libtpu not installed (pip install libtpu==0.0.48.1, as jax[tpu]==0.11.2)"
)
pytestmark = pytest.mark.tpu
# Parallel test workers each load libtpu; without this the second one fails on libtpu's
# multi-process lockfile. Only deviceless topologies are used, so sharing is safe.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

CASES = {
    "self": dict(batch=8, tq=4096, tkv=4096, window=None, causal=False, heads=8, d=128),
    "self_causal_window": dict(batch=2, tq=1024, tkv=1024, window=100, causal=True, heads=4, d=128),
    "cross": dict(batch=2, tq=1024, tkv=64, window=None, causal=False, heads=4, d=128),
    # The D = 256 rows' 512 x 512 tiles (several heads a step) within the default VMEM limit.
    "self_d256": dict(batch=2, tq=1024, tkv=1024, window=None, causal=False, heads=4, d=256),
}


@pytest.fixture(scope="module", params=["v5e:2x2", "v6e:2x2"])
def tpu(request):
    """One chip of a deviceless TPU topology."""
    return topologies.get_topology_desc(topology_name=request.param, platform="tpu").devices[0]


def _compile(tpu, b, tq, tkv, window, causal, heads, d, activations):
    """value_and_grad of the summed GDPA outputs of every activation, compiled for `tpu`."""
    replicated = NamedSharding(Mesh(np.array([tpu]), ("x",)), PartitionSpec())

    def arg(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=replicated)

    def loss(q, k, v, q_lengths, kv_lengths):
        total = jnp.float32(0.0)
        for activation in activations:
            o = gdpa_pallas(
                q,
                k,
                v,
                impl="pallas_tpu",
                platform="tpu",
                device_kind=tpu.device_kind,
                interpret=False,
                activation=activation,
                qk_scale=d**-0.5,
                out_scale=1.0 / tkv,
                q_lengths=q_lengths,
                kv_lengths=kv_lengths,
                window=window,
                causal=causal,
                block_q=None,
                block_kv=None,
            )
            total += o.astype(jnp.float32).sum()
        return total

    return (
        jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
        .lower(
            arg((b, tq, heads, d), jnp.bfloat16),
            arg((b, tkv, heads, d), jnp.bfloat16),
            arg((b, tkv, heads, d), jnp.bfloat16),
            arg((b,), jnp.int32),
            arg((b,), jnp.int32),
        )
        .compile()
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_fwd_and_bwd_compile_for_tpu(tpu, case):
    shape = (CASES[case][n] for n in ("batch", "tq", "tkv", "window", "causal", "heads", "d"))
    compiled = _compile(tpu, *shape, activations=["silu"])
    hlo = compiled.as_text()
    for kernel in ("gdpa_fwd_tpu", "gdpa_dkdv_tpu", "gdpa_dq_tpu"):
        assert kernel in hlo, f"{kernel} missing from the compiled TPU program"
    assert compiled.memory_analysis() is not None


def test_every_activation_compiles_for_tpu(tpu):
    """Each activation's forward, dK/dV and dQ kernels through Mosaic (erf, the EUP's tanh
    before v6, v6e's sigmoid, the piecewise ones), cross-attention B=2, Tq=512, Tkv=64."""
    compiled = _compile(tpu, 2, 512, 64, None, False, 4, 128, activations=sorted(ACTIVATIONS))
    assert compiled.as_text().count('custom_call_target="tpu_custom_call"') == 3 * len(ACTIVATIONS)
