"""Wall-clock timing and the hardware ceilings measured in the same run as a benchmark.

A benchmark's MFU is reported against two peaks: the published one (`roofline.table_peak`)
and a large matmul timed here, in the same process, seconds apart (the practical peak of this
very device, clocks, power cap and background load included). The copy ceiling (elementwise
`x + 1`, one read and one write) is the practical memory bandwidth the same way.

Timing always ends with `jax.block_until_ready`: dispatch is asynchronous, so a clock read
after a call without it measures only the launch.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def median_of_means(
    fn: Callable[..., Any],
    args: Sequence[Any],
    *,
    iters: int,
    repeats: int = 3,
    warmup: int = 1,
    warmup_s: float = 0.0,
) -> float:
    """Median over `repeats` of the mean wall time (s) of `iters` back-to-back calls of
    fn(*args). The first call (compilation) and `warmup` more are not timed, nor are further
    calls until `warmup_s` seconds have passed since the first one returned (clocks of an idle
    GPU ramp up under load)."""
    jax.block_until_ready(fn(*args))
    start, calls = time.perf_counter(), 0
    while calls < warmup or time.perf_counter() - start < warmup_s:
        jax.block_until_ready(fn(*args))
        calls += 1
    means = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            out = fn(*args)
        jax.block_until_ready(out)
        means.append((time.perf_counter() - start) / iters)
    return float(np.median(means))


@dataclasses.dataclass(frozen=True)
class StepTimes:
    """Per-step wall times (s) of the timed steps, after warmup.

    median / p10 / p90: percentiles of `seconds`.
    """

    seconds: tuple[float, ...]

    @property
    def median(self) -> float:
        return float(np.median(self.seconds))

    @property
    def p10(self) -> float:
        return float(np.percentile(self.seconds, 10))

    @property
    def p90(self) -> float:
        return float(np.percentile(self.seconds, 90))


@dataclasses.dataclass(frozen=True)
class Ceilings:
    """Ceilings measured on the default device.

    matmul_dtype: bfloat16 on GPU/TPU, float32 on CPU; matmul_n: the n of the n×n×n matmul;
    matmul_tflops: 2·n³ / median time; copy_bytes: bytes read + written by one copy;
    copy_gbps: copy_bytes / median time (1e9 bytes/s).
    """

    matmul_dtype: str
    matmul_n: int
    matmul_tflops: float
    copy_bytes: int
    copy_gbps: float


def matmul_dtype(platform: str) -> jnp.dtype:
    """bf16 where tensor cores / MXUs run it natively, f32 on CPU (where bf16 is emulated)."""
    return jnp.dtype(jnp.float32 if platform == "cpu" else jnp.bfloat16)


def default_sizes(platform: str) -> tuple[int, int]:
    """(matmul n, copy elements): large enough to reach the ceiling, small enough for a CPU."""
    if platform == "cpu":
        return 1024, 1 << 24
    return 8192, 1 << 28


WARMUP_S = 0.25  # of untimed calls before each ceiling: the first measurement of a run


def measure_ceilings(
    *, matmul_n: int | None = None, copy_elements: int | None = None, iters: int = 5
) -> Ceilings:
    """Times an n×n×n matmul and an elementwise copy on the default device (see module doc)."""
    platform = jax.devices()[0].platform
    n_default, elems_default = default_sizes(platform)
    n, elems = matmul_n or n_default, copy_elements or elems_default
    dtype = matmul_dtype(platform)
    a_key, x_key = jax.random.split(jax.random.key(0))
    a = jax.random.normal(a_key, (n, n), dtype)  # random: zeros draw less power on a GPU
    mm_s = median_of_means(jax.jit(jnp.matmul), (a, a), iters=iters, warmup_s=WARMUP_S)
    x = jax.random.normal(x_key, (elems,), dtype)
    copy_s = median_of_means(jax.jit(lambda x: x + 1), (x,), iters=iters, warmup_s=WARMUP_S)
    copy_bytes = 2 * x.nbytes
    return Ceilings(
        matmul_dtype=dtype.name,
        matmul_n=n,
        matmul_tflops=2.0 * n**3 / mm_s / 1e12,
        copy_bytes=copy_bytes,
        copy_gbps=copy_bytes / copy_s / 1e9,
    )
