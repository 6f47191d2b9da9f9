"""The Mosaic GPU GDPA kernels under the Mosaic GPU interpreter's race detector.

Hopper's kernels are warp-specialized (a producer warpgroup refills shared buffers that two
compute warpgroups read), Blackwell's stream from their one warpgroup; either way a missing
barrier wait lets a TMA copy overwrite a buffer an MMA still reads, which the interpreter's
values may or may not show. Its happens-before race detector (`detect_races=True`) sees the
conflicting accesses themselves, and it refuses protocol errors outright (a barrier phase that
a participating warpgroup never waited for). Each kernel runs separately because the detector
keeps the result of the last kernel interpreted only (`gpu_callbacks.get_races()`, private to
jax). Not covered: the interpreter runs wgmma synchronously, so a missing `wgmma_wait` before
a buffer is released cannot show here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from jax import lax
from jax._src.pallas.mosaic_gpu.interpret import gpu_callbacks
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.gdpa.blockwise import GdpaSpec
from pallas_kernels.gdpa.mosaic_gpu import ARCHS
from pallas_kernels.gdpa.mosaic_gpu_common import MosaicConfig
from tests.kernels.helpers import normal_inputs

DETECT = plgpu.InterpretGPUParams(detect_races=True)
# A barrier protocol error (e.g. unbalanced ping-pong meetings) deadlocks the interpreter: fail
# the test, not CI's time limit. Each test takes well under a minute.
pytestmark = pytest.mark.timeout(600, method="thread")
# Two batch rows (one jagged), several blocks per program in every kernel (also per query
# split of Hopper's dK/dV), so each stream refills its buffers; the window and causal mask
# give programs different block ranges.
B, TQ, TKV, H, D, BLOCK_KV = 2, 512, 512, 1, 64, 64
Q_LENS, KV_LENS = (512, 300), (512, 300)
MASKS = {"full": (None, False), "window": (100, True)}


def _kernel_runs(arch: str, spec: GdpaSpec):
    kernels, dtype = ARCHS[arch], jnp.dtype(jnp.bfloat16)
    cfg = MosaicConfig(spec, BLOCK_KV, DETECT, arch, kernels.DKDV_Q_BLOCK)
    q, k, v, do = normal_inputs(0, [(B, TQ, H, D), *[(B, TKV, H, D)] * 2, (B, TQ, H, D)], dtype)
    lens = jnp.asarray(Q_LENS, jnp.int32), jnp.asarray(KV_LENS, jnp.int32)
    runs = {
        "forward": lambda: kernels.forward_kernel(cfg, q.shape, dtype)(q, k, v, *lens),
        "dq": lambda: kernels.dq_kernel(cfg, q.shape, dtype)(q, k, v, do, *lens),
        "dkdv": lambda: kernels.dkdv_kernel(cfg, q.shape, TKV, dtype)(q, k, v, do, *lens),
    }
    if arch == "hopper":  # its dK/dV grid can split the query loop (fp32 partials)
        split = kernels.dkdv_kernel(cfg, q.shape, TKV, dtype, splits=2)
        runs["dkdv_split"] = lambda: split(q, k, v, do, *lens)
    return runs


def _races_found() -> bool:
    return gpu_callbacks.get_races().races_found


KERNELS = [(arch, kernel) for arch in sorted(ARCHS) for kernel in ("forward", "dq", "dkdv")]


@pytest.mark.parametrize("mask", sorted(MASKS))
@pytest.mark.parametrize(("arch", "kernel"), [*KERNELS, ("hopper", "dkdv_split")])
def test_kernels_have_no_data_races(arch, kernel, mask):
    window, causal = MASKS[mask]
    spec = GdpaSpec("silu", 0.5, 0.1, window, causal, erf_free=True)
    out = jax.block_until_ready(_kernel_runs(arch, spec)[kernel]())
    assert not _races_found(), f"{arch} {kernel} ({mask}): the race detector reported a race"
    for o in out if isinstance(out, tuple) else (out,):
        assert jnp.isfinite(o.astype(jnp.float32)).all()


def test_the_detector_reports_two_warpgroups_writing_one_tile():
    """The check above can fail: without a barrier between them, two warpgroups' stores to the
    same SMEM tile are a race."""

    def body(x_gmem, o_gmem, tile_smem, bar):
        wg = lax.axis_index("wg")
        plgpu.copy_gmem_to_smem(x_gmem, tile_smem.at[wg], bar.at[wg])
        plgpu.barrier_wait(bar.at[wg])
        tile_smem[0] = tile_smem[wg] * 2  # warpgroup 1 writes warpgroup 0's tile unsynchronized
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(tile_smem.at[wg], o_gmem.at[wg])
        plgpu.wait_smem_to_gmem(0)

    kernel = plgpu.kernel(
        body,
        out_type=jax.ShapeDtypeStruct((2, 64, 64), jnp.float32),
        scratch_types=[plgpu.SMEM((2, 64, 64), jnp.float32), plgpu.Barrier(num_barriers=2)],
        grid=(1,),
        grid_names=("g",),
        num_threads=2,
        thread_name="wg",
        interpret=DETECT,
    )
    jax.block_until_ready(kernel(jnp.ones((64, 64), jnp.float32)))
    assert _races_found()
