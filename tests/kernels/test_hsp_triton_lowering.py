"""Lowering of the Triton seed-pooling kernels to Triton IR for an H100 that is not attached.

Interpret mode runs any jnp; the Pallas → Triton lowering accepts far less (power-of-two tiles,
tl.dot shapes >= 16, supported reductions and transposed dots). Lowering under an abstract H100
runs that translation on CPU (it stops before PTX: compiling needs the CUDA toolchain).
Forward + backward, B=2, H=4, T=1100 (padded to the kv tile): bf16 D=128 S=64 (the tuned
tiles), fp16 D=96 S=20 (D and S padded to powers of two), fp32 D=32 S=16.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from pallas_kernels.hsp.api import seed_pooling
from tests.kernels.helpers import H100, lowering_for_gpu

# jax 0.11 deprecates the Pallas Triton backend (in favour of Mosaic GPU); it still lowers.
pytestmark = pytest.mark.filterwarnings(
    "ignore:The Pallas Triton backend is deprecated:DeprecationWarning"
)
B, H, T = 2, 4, 1100


@pytest.mark.parametrize(
    ("dtype", "head_dim", "num_seeds"),
    [(jnp.bfloat16, 128, 64), (jnp.float16, 96, 20), (jnp.float32, 32, 16)],
)
def test_fwd_and_bwd_lower_to_triton(dtype, head_dim, num_seeds):
    def loss(seeds, k, v, kv_lengths):
        o = seed_pooling(
            seeds,
            k,
            v,
            kv_lengths=kv_lengths,
            backend="triton",
            interpret=False,
            device_kind=H100.device_kind,
        )
        return o.astype(jnp.float32).sum()

    kv = jax.ShapeDtypeStruct((B, T, H, head_dim), dtype)
    args = (
        jax.ShapeDtypeStruct((num_seeds, H, head_dim), dtype),
        kv,
        kv,
        jax.ShapeDtypeStruct((B,), jnp.int32),
    )
    with lowering_for_gpu(H100):
        lowered = (
            jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
            .trace(*args)
            .lower(lowering_platforms=("cuda",))
        )
    hlo = lowered.as_text()
    assert hlo.count("__gpu$xla.gpu.triton") == 2  # forward, backward
    for kernel in ("seed_pooling_fwd_triton", "seed_pooling_bwd_triton"):
        assert kernel in hlo
