"""Helpers shared by the kernel tests: random inputs, one-jit value-and-VJP, normalized errors,
running a kernel benchmark's CPU smoke mode, and lowering for a GPU that is not attached.

Errors are normalized per output: max|got - want| / max(max|want|, ERROR_SCALE_FLOOR); the
floor keeps outputs that cancel to ~0 from turning rounding into large relative errors.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from unittest import mock

import jax
import jax.extend.backend
import jax.numpy as jnp
import numpy as np
import tokamax.config

from benchmarks import gpu_session
from pallas_kernels.common.gpu_lowering import (  # noqa: F401 (re-exported to the tests)
    B200,
    H100,
    TRITON_CALL,
    GpuTarget,
    lowering_for,
)
from tests.conftest import REPO, run_python  # noqa: F401 (REPO re-exported to the tests)

ERROR_SCALE_FLOOR = 1e-2
POISON = np.array([np.nan, np.inf, -np.inf], np.float32)  # what `poison_padding` writes


def normal_inputs(seed: int, shapes: Sequence[tuple[int, ...]], dtype: str) -> tuple:
    """Standard-normal arrays of `shapes` in `dtype` (numpy RNG: no per-shape XLA compiles)."""
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.standard_normal(s, np.float32)).astype(dtype) for s in shapes)


def value_and_grads(fn: Callable, x: jax.Array, y: jax.Array, z: jax.Array, do: jax.Array):
    """(O, (dX, dY, dZ)) of fn(x, y, z) for cotangent do, in one jit."""

    def run(x, y, z, do):
        o, vjp = jax.vjp(fn, x, y, z)
        return o, vjp(do.astype(o.dtype))

    return jax.jit(run)(x, y, z, do)


def as_f32(*xs: jax.Array) -> tuple[jax.Array, ...]:
    return tuple(x.astype(jnp.float32) for x in xs)


def assert_close(
    got: jax.Array, want: jax.Array, dtype: str, what: str, *, tolerance: Mapping[str, float]
) -> None:
    """Finite `got` within tolerance[dtype] of `want` in normalized max error."""
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert np.isfinite(got).all(), f"{what}: non-finite values"
    scale = max(float(np.abs(want).max()), ERROR_SCALE_FLOOR)
    err = float(np.abs(got - want).max()) / scale
    assert err <= tolerance[dtype], f"{what}: normalized error {err:.2e} > {tolerance[dtype]}"


def assert_outputs_close(
    got: tuple, want: tuple, dtype: str, *, tolerance: Mapping[str, float]
) -> None:
    """`assert_close` on O, dQ, dK, dV of two `value_and_grads` results."""
    outputs = zip(("O", "dQ", "dK", "dV"), (got[0], *got[1]), (want[0], *want[1]), strict=True)
    for name, g, w in outputs:
        assert_close(g, w, dtype, name, tolerance=tolerance)


def assert_padding_exactly_zero(got, q_lengths, kv_lengths) -> None:
    """Padded query rows of O and dQ and padded key rows of dK and dV of a `value_and_grads`
    result of attention are exactly 0 (lengths None: nothing padded)."""
    o, dq, dk, dv = (np.asarray(x, np.float32) for x in (got[0], *got[1]))
    for row in range(o.shape[0]):
        if q_lengths is not None:
            assert not o[row, q_lengths[row] :].any()
            assert not dq[row, q_lengths[row] :].any()
        if kv_lengths is not None:
            assert not dk[row, kv_lengths[row] :].any()
            assert not dv[row, kv_lengths[row] :].any()


def poison_padding(x: jax.Array, lengths: Sequence[int]) -> jax.Array:
    """x [B, T, ...] with NaN, +inf and -inf (in turn, along the flattened row) everywhere past
    row b's length lengths[b]: in the padded part of a partially visited tile too, where a
    kernel multiplies masked positions (0·NaN and 0·inf are NaN) unless it zeroes them."""
    x = np.array(x)
    for row, n in enumerate(lengths):
        x[row, n:] = np.resize(POISON, x[row, n:].shape)
    return jnp.asarray(x)


def fp16_overflow_case(seed: int, shape: tuple[int, int, int, int]) -> tuple[tuple, dict]:
    """((q, k, v, dO) fp16 of `shape` [B, T, H, D], GDPA keyword arguments) whose unscaled
    tiles overflow fp16 (max 65504) where the scaled ones do not: q, k ≈ 30 give scores
    S ≈ 900·D; relu2's Act(S) = S² ≈ 1e9 and its dP ⊙ Act'(S) = 2S·dP ≈ 1e5, while out_scale
    β = 2⁻²³ brings β·S² to ~100 and αβ·2S·dP to ~0.05 (the reference's fp32 products)."""
    rng = np.random.default_rng(seed)
    q, k = (jnp.asarray(30 + 0.5 * rng.standard_normal(shape), jnp.float16) for _ in range(2))
    v, do = (jnp.asarray(rng.standard_normal(shape), jnp.float16) for _ in range(2))
    return (q, k, v, do), dict(activation="relu2", out_scale=2.0**-23)


def assert_trees_equal(got, want) -> None:
    """Every leaf of `got` bitwise equal to the matching leaf of `want`."""
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def run_benchmark_smoke(stage: str, out: Path, *, timeout: int) -> dict:
    """Run the GPU session's `stage` (gdpa, swa, hsp) at CPU size, by the very command line
    that `benchmarks.gpu_session --smoke` runs (`--smoke --out OUT/<stage>.json`), on CPU
    from the repo root; assert it exits 0 and its report names the environment and positive
    matmul and copy baselines; return the report."""
    command = gpu_session.STAGES[stage].command(out, smoke=True)
    assert command[0] == sys.executable, command
    assert "--smoke" in command, command
    run_python(*command[1:], env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=timeout)
    report = json.loads((out / f"{stage}.json").read_text())
    env_info = report["environment"]
    for key in ("device_kind", "platform", "jax", "jaxlib", "tokamax", "date", "command"):
        assert env_info[key], key
    assert "--smoke" in env_info["command"]
    assert report["baselines"]["matmul_tflops"] > 0
    assert report["baselines"]["copy_gbps"] > 0
    return report


@contextlib.contextmanager
def lowering_for_gpu(device: GpuTarget, mesh: jax.sharding.Mesh | None = None) -> Iterator[None]:
    """Code traced inside lowers (`.lower(lowering_platforms=("cuda",))`) as for `device`
    (`gpu_lowering.lowering_for`), tokamax included: its default device is patched for the
    duration, and its cross-compile mode lets it past the attached-hardware checks."""
    with (
        lowering_for(device, mesh),
        tokamax.config.cross_compile(True),
        mock.patch.object(jax.extend.backend, "get_default_device", return_value=device),
    ):
        yield


# Custom call targets of a Mosaic GPU and a Triton kernel in a program lowered for CUDA. In a
# forward + backward, our GDPA runs three kernels (forward, dQ, dK/dV), tokamax's Mosaic GPU
# attention three (forward and two backward), its Triton attention and our seed pooling two.
MOSAIC_GPU_CALL = "mosaic_gpu_v2"


def gpu_kernel_calls(fn: Callable, *args: jax.ShapeDtypeStruct, device: GpuTarget = H100):
    """{custom call target: count} of value_and_grad(sum(fn)) w.r.t. the first three args,
    lowered for CUDA as for `device` (`lowering_for_gpu`)."""

    def loss(*a):
        return fn(*a).astype(jnp.float32).sum()

    with lowering_for_gpu(device):
        lowered = (
            jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
            .trace(*args)
            .lower(lowering_platforms=("cuda",))
        )
    return custom_calls(lowered.as_text())


def custom_calls(stablehlo_text: str) -> collections.Counter:
    """{custom call target: count} in lowered StableHLO text."""
    return collections.Counter(re.findall(r"custom_call @([\w$.]+)", stablehlo_text))
