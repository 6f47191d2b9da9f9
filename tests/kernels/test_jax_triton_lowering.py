"""Our Triton-language GDPA and SWA kernels through jax-triton, lowered for an H100 and a B200
that are not attached.

jax-triton's lowering runs Triton's compiler (TTIR to PTX) and packs the kernel into the custom
call, so this checks the `jax_triton` backend's whole path short of the driver: our launch
arguments against jax-triton's `triton_call`, and the PTX built for the target's compute
capability (jax-triton's default would read GPU 0's, which an AOT target does not have). It
needs jax-triton (the `test` extra) and jax's CUDA plugin (`make gpu-aot`), and runs in a child
process: the suite's conftest sets TRITON_INTERPRET=1, under which `@triton.jit` defines
interpreter functions, which cannot be compiled. The GPU image's pairing, triton 3.6.0 with
jax-triton 0.3.1 (`benchmarks/gpu_session.sh` picks it), gave the same PTX targets when this
module was run as `python -m tests.kernels.test_jax_triton_lowering` with those two first on
PYTHONPATH (2026-12-07).
"""

from __future__ import annotations

import json
import os
import sys

import pytest

pytest.importorskip("jax_triton", reason="jax-triton not installed (the `test` extra)")

TARGETS = {"h100": "sm_90a", "b200": "sm_100a"}  # PTX targets: architecture-specific features
OPS = ("gdpa", "swa")
KERNELS_PER_VJP = 3  # forward, dQ, dK/dV


def _kernel_ptx_targets() -> dict:
    """(In the child.) {target: {op: [each jax-triton kernel's PTX `.target`]}} of the forward
    and VJP of `op` with lengths, lowered for the target."""
    import jax
    import jax.numpy as jnp

    from pallas_kernels.common.gpu_lowering import B200, H100, jax_triton_ptx_targets, lowering_for
    from pallas_kernels.gdpa.api import gdpa
    from pallas_kernels.swa.api import swa_attention

    x = jax.ShapeDtypeStruct((2, 300, 4, 128), jnp.bfloat16)  # T not a block multiple
    lengths = jax.ShapeDtypeStruct((2,), jnp.int32)
    ops = {
        "gdpa": lambda q, k, v, n: gdpa(
            q, k, v, activation="silu", q_lengths=n, kv_lengths=n, backend="jax_triton"
        ),
        "swa": lambda q, k, v, n: swa_attention(
            q, k, v, window=128, q_lengths=n, kv_lengths=n, backend="jax_triton"
        ),
    }
    found: dict = {}
    for name, target in (("h100", H100), ("b200", B200)):
        for op_name, op in ops.items():

            def fwd_and_vjp(q, k, v, n, op=op):
                out, vjp = jax.vjp(lambda q, k, v: op(q, k, v, n), q, k, v)
                return out, vjp(out)

            with lowering_for(target):
                traced = jax.jit(fwd_and_vjp).trace(x, x, x, lengths)
                lowered = traced.lower(lowering_platforms=("cuda",))
            found.setdefault(name, {})[op_name] = jax_triton_ptx_targets(lowered)
    return found


@pytest.mark.timeout(600)
def test_gdpa_and_swa_lower_through_jax_triton_for_each_targets_capability():
    from benchmarks.kernels.mosaic_gpu_resources import PLUGIN_DIR, plugin_available
    from tests.conftest import REPO, run_python

    if not plugin_available():
        pytest.skip(f"jax's CUDA plugin not in {PLUGIN_DIR} (run `make gpu-aot`)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env |= {"JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join([str(PLUGIN_DIR), str(REPO)])}
    found = json.loads(run_python("-m", "tests.kernels.test_jax_triton_lowering", env=env))
    for name, ptx_target in TARGETS.items():
        for op in OPS:
            assert found[name][op] == [ptx_target] * KERNELS_PER_VJP, (name, op)


if __name__ == "__main__":
    json.dump(_kernel_ptx_targets(), sys.stdout)
