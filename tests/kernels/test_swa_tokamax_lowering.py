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
from tests.kernels.helpers import H100, lowering_for_gpu

# jax 0.11 deprecates the Pallas Triton backend (tokamax's Triton kernels use it); it lowers.
pytestmark = pytest.mark.filterwarnings(
    "ignore:The Pallas Triton backend is deprecated:DeprecationWarning"
)
B, T, H, D = 2, 4096, 4, 128
# Kernels in the lowered forward + backward: (custom call target, count).
KERNELS = {"tokamax": ("mosaic_gpu_v2", 3), "tokamax_triton": ("__gpu$xla.gpu.triton", 2)}


def _lowered_text(fn, *args) -> str:
    with lowering_for_gpu(H100):
        return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


@pytest.mark.parametrize(("window", "causal"), [(128, False), (128, True), (None, True)])
@pytest.mark.parametrize("backend", sorted(KERNELS))
def test_forward_and_backward_lower_to_the_named_kernel(backend, window, causal):
    def loss(q, k, v, lengths):
        o = swa_attention(
            q, k, v, q_lengths=lengths, kv_lengths=lengths, window=window, causal=causal,
            backend=backend,
        )  # fmt: skip
        return o.astype(jnp.float32).sum()

    x = jax.ShapeDtypeStruct((B, T, H, D), jnp.bfloat16)
    lengths = jax.ShapeDtypeStruct((B,), jnp.int32)
    hlo = _lowered_text(jax.grad(loss, argnums=(0, 1, 2)), x, x, x, lengths)
    target, count = KERNELS[backend]
    assert hlo.count(target) == count, (backend, hlo.count(target))


def test_tokamax_mosaic_gpu_still_cannot_lower_query_lengths():
    """Why `swa_tokamax` leaves query lengths out. When this fails, tokamax lowers them: they
    could be passed again (the output mask keeps the semantics either way)."""

    def attend(q, k, v, lengths):
        return tokamax.dot_product_attention(
            q, k, v, query_seq_lengths=lengths, implementation="mosaic_gpu"
        )

    x = jax.ShapeDtypeStruct((B, 256, H, D), jnp.bfloat16)
    with pytest.raises(AssertionError, match=r"must be represented by ir\.Values"):
        _lowered_text(attend, x, x, x, jax.ShapeDtypeStruct((B,), jnp.int32))
