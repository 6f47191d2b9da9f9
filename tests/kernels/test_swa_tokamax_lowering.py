"""SWA through tokamax's GPU kernels, lowered for an H100 that is not attached.

tokamax's Pallas attention kernels refuse to run without a GPU, but in its cross-compile mode
(`lowering_for_gpu`) they lower on CPU: the Mosaic GPU kernel through Mosaic GPU's Python
passes (layouts, SMEM, wgmma / TMA), the Triton one to Triton IR. This is how the mapping of our
window, causality and lengths onto tokamax reaches its real GPU kernels in CI, and it found
that tokamax 0.0.17's Mosaic GPU kernel cannot lower query lengths under jax 0.11.2 (so
`swa_tokamax` does not pass them; see `pallas_kernels/swa/tokamax_gpu.py`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
import tokamax

from pallas_kernels.swa.api import swa_attention
from tests.kernels.helpers import (
    H100,
    MOSAIC_GPU_CALL,
    TRITON_CALL,
    gpu_kernel_calls,
    lowering_for_gpu,
)

# jax 0.11 deprecates the Pallas Triton backend (tokamax's Triton kernels use it); it lowers.
pytestmark = pytest.mark.filterwarnings(
    "ignore:The Pallas Triton backend is deprecated:DeprecationWarning"
)
B, T, H, D = 2, 4096, 4, 128
# Kernels in the lowered forward + backward: (custom call target, count).
KERNELS = {"tokamax": (MOSAIC_GPU_CALL, 3), "tokamax_triton": (TRITON_CALL, 2)}


@pytest.mark.parametrize(("window", "causal"), [(128, False), (128, True), (None, True)])
@pytest.mark.parametrize("backend", sorted(KERNELS))
def test_forward_and_backward_lower_to_the_named_kernel(backend, window, causal):
    def attend(q, k, v, lengths):
        return swa_attention(
            q, k, v, q_lengths=lengths, kv_lengths=lengths, window=window, causal=causal,
            backend=backend,
        )  # fmt: skip

    x = jax.ShapeDtypeStruct((B, T, H, D), jnp.bfloat16)
    calls = gpu_kernel_calls(attend, x, x, x, jax.ShapeDtypeStruct((B,), jnp.int32))
    target, count = KERNELS[backend]
    assert calls == {target: count}, (backend, calls)


def test_tokamax_mosaic_gpu_still_cannot_lower_query_lengths():
    """Why `swa_tokamax` leaves query lengths out. When this fails, tokamax lowers them: they
    could be passed again (the output mask keeps the semantics either way)."""

    def attend(q, k, v, lengths):
        return tokamax.dot_product_attention(
            q, k, v, query_seq_lengths=lengths, implementation="mosaic_gpu"
        )

    x = jax.ShapeDtypeStruct((B, 256, H, D), jnp.bfloat16)
    lengths = jax.ShapeDtypeStruct((B,), jnp.int32)
    with lowering_for_gpu(H100):
        traced = jax.jit(attend).trace(x, x, x, lengths)  # tokamax checks the device here
        with pytest.raises(AssertionError, match=r"ir\.Values"):
            traced.lower(lowering_platforms=("cuda",))
