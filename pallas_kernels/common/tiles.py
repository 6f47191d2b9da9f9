"""Tile sizes of a blocked attention kernel and fitting them to a backend and a shape."""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from pallas_kernels.common.blocks import round_up

TRITON_MIN_BLOCK = 16  # tl.dot needs M, N, K >= 16


# TPU device kinds with 128 MiB of VMEM a core (jax's tpu_info: v5e, v6e), whose tile rows may
# raise the scoped-VMEM limit (`BlockSizes.vmem_limit_mib`) well past its default.
TPU_128_MIB_VMEM = ("TPU v5 lite", "TPU v6 lite")


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes for one kernel call. Warps and stages are used by Triton only; the backward
    kernels take num_warps_bwd / num_stages_bwd where set, else the forward's."""

    block_q: int  # forward: query rows per tile
    block_kv: int  # forward: key rows per tile
    block_q_bwd: int  # backward (dK/dV and dQ kernels): query rows per tile
    block_kv_bwd: int  # backward: key rows per tile
    num_warps: int = 4
    num_stages: int = 2
    num_warps_bwd: int | None = None
    num_stages_bwd: int | None = None
    # Triton: loop over the wholly visible blocks apart, without building the mask (a second
    # loop body, so more registers: off where the static check finds it spills).
    unmasked_loop: bool = True
    # Mosaic TPU kernels: at most this many heads per grid step (`common.tpu.heads_per_step`),
    # so one step's bookkeeping serves them all.
    heads: int = 1
    # Mosaic TPU kernels: the scoped-VMEM limit they compile with, in MiB (None: the compiler's
    # default, 16 MiB on v5e); rows for chips with more VMEM raise it for larger steps.
    vmem_limit_mib: int | None = None

    def tiles(self, backward: bool) -> tuple[int, int]:
        """(block_q, block_kv) of the forward kernel or of a backward one."""
        if backward:
            return self.block_q_bwd, self.block_kv_bwd
        return self.block_q, self.block_kv

    def triton_options(self, backward: bool) -> tuple[int, int]:
        """(num_warps, num_stages) of the forward kernel or of a backward one."""
        if not backward:
            return self.num_warps, self.num_stages
        warps, stages = self.num_warps_bwd, self.num_stages_bwd
        return warps or self.num_warps, stages or self.num_stages

    def with_overrides(self, block_q: int | None, block_kv: int | None) -> BlockSizes:
        """Explicit sizes replace both the forward and the backward tile."""
        bq = self.block_q if block_q is None else block_q
        bkv = self.block_kv if block_kv is None else block_kv
        return dataclasses.replace(
            self,
            block_q=bq,
            block_kv=bkv,
            block_q_bwd=self.block_q_bwd if block_q is None else bq,
            block_kv_bwd=self.block_kv_bwd if block_kv is None else bkv,
        )

    def with_heads(self, heads_per_step: int | None) -> BlockSizes:
        """An explicit heads-per-step (None: keep the table's)."""
        if heads_per_step is None:
            return self
        return dataclasses.replace(self, heads=heads_per_step)

    def padded_q(self, tq: int) -> int:
        """Tq rounded up to a multiple of both query tiles (forward and backward)."""
        return round_up(tq, math.lcm(self.block_q, self.block_q_bwd))

    def padded_kv(self, tkv: int) -> int:
        """Tkv rounded up to a multiple of both key tiles (forward and backward)."""
        return round_up(tkv, math.lcm(self.block_kv, self.block_kv_bwd))


def on_128_mib_vmem(sizes: BlockSizes, heads: int = 8) -> BlockSizes:
    """A TPU row as the TPU_128_MIB_VMEM chips take it: up to `heads` heads a grid step in a
    64 MiB scoped-VMEM limit. D <= 128: 8, the densest at H = 8
    (benchmarks/results/tpu_bundles_h8.json; 8 heads of a 512 x 512 dK/dV step need 19 MiB);
    D = 256: 4 (benchmarks/results/tpu_bundles_d256.json; v5e's 16 MiB default holds 2)."""
    return dataclasses.replace(sizes, heads=heads, vmem_limit_mib=64)


def check_heads_per_step(heads_per_step: int | None) -> None:
    """ValueError unless heads_per_step is None or a positive int."""
    if heads_per_step is not None and (
        isinstance(heads_per_step, bool)
        or not isinstance(heads_per_step, int)
        or heads_per_step < 1
    ):
        raise ValueError(f"heads_per_step must be a positive int or None, got {heads_per_step!r}")


def triton_sizes(
    block_q: int,
    block_kv: int,
    block_q_bwd: int,
    block_kv_bwd: int,
    *,
    warps: tuple[int, int],
    stages: tuple[int, int],
) -> BlockSizes:
    """BlockSizes with (forward, backward) Triton warps and pipeline stages."""
    return BlockSizes(
        block_q,
        block_kv,
        block_q_bwd,
        block_kv_bwd,
        num_warps=warps[0],
        num_stages=stages[0],
        num_warps_bwd=warps[1],
        num_stages_bwd=stages[1],
    )


def pow2_at_least(n: int) -> int:
    """Smallest power of two >= n."""
    return 1 << max(n - 1, 0).bit_length()


def fit_block_sizes(
    sizes: BlockSizes,
    impl: str,
    dtype: jnp.dtype,
    tq: int,
    tkv: int,
    block_q: int | None,
    block_kv: int | None,
) -> BlockSizes:
    """Check explicit tiles (`block_q`, `block_kv`) for the backend and shrink all tiles to the
    sequence lengths. impl: "pallas_triton" (powers of two >= 16) or a Mosaic-TPU backend
    (multiples of the dtype's sublane tile: 16 for 2-byte dtypes, else 8)."""
    if impl == "pallas_triton":
        align = TRITON_MIN_BLOCK

        def fit(block: int, length: int) -> int:
            return min(block, max(TRITON_MIN_BLOCK, pow2_at_least(length)))
    else:
        align = 16 if jnp.dtype(dtype).itemsize == 2 else 8  # sublane tile of the dtype

        def fit(block: int, length: int) -> int:
            return min(block, round_up(length, align))

    for name, value in (("block_q", block_q), ("block_kv", block_kv)):
        if value is None:
            continue
        if impl == "pallas_triton" and (value < align or value != pow2_at_least(value)):
            raise ValueError(f"{name}={value} must be a power of two >= {align} for {impl}")
        if impl != "pallas_triton" and (value <= 0 or value % align):
            raise ValueError(f"{name}={value} must be a positive multiple of {align} for {impl}")
    return dataclasses.replace(
        sizes,
        block_q=fit(sizes.block_q, tq),
        block_kv=fit(sizes.block_kv, tkv),
        block_q_bwd=fit(sizes.block_q_bwd, tq),
        block_kv_bwd=fit(sizes.block_kv_bwd, tkv),
    )
