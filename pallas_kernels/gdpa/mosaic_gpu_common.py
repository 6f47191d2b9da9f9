"""Pieces shared by the Mosaic GPU GDPA kernels of every architecture (Hopper, Blackwell).

The kernels are `plgpu.kernel` programs over a (b, h, row tile) grid: TMA copies of a
program's fixed tiles, a double-buffered stream of the other operand's blocks over exactly the
blocks the mask leaves, and TMA stores of the fp32 results. The stream is either issued by the
computing warpgroup itself (`stream_blocks`) or, warp-specialized, by a producer warpgroup that
refills a buffer once every compute warpgroup has released it (`produce_blocks` /
`consume_blocks`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.gdpa.blockwise import GdpaSpec

SLOTS = 2  # buffers of the streamed operand


@dataclasses.dataclass(frozen=True)
class MosaicConfig:
    """The custom_vjp's non-differentiable configuration. arch: "hopper" | "blackwell"."""

    spec: GdpaSpec
    block_kv: int  # kv rows of the blocks the forward and dQ kernels stream
    interpret: bool | plgpu.InterpretGPUParams  # True: the interpreter's defaults
    arch: str
    dkdv_block_q: int  # query rows of the blocks the dK/dV kernel streams


def mosaic_kernel(
    cfg: MosaicConfig,
    body,
    *,
    kind: str,
    out_type,
    scratch_types,
    grid,
    row_axis: str,
    warpgroups: int = 1,
    extra_axes: tuple[str, ...] = (),
):
    """`plgpu.kernel` named gdpa_<kind>_<arch> ("fwd", "dq", "dkdv": how profiles and Mosaic
    GPU's dumps name it) over grid (b, h, row tiles, *extra) named ("b", "h", row_axis,
    *extra_axes) with `warpgroups` warpgroups per program (index `lax.axis_index("wg")`;
    scratch is shared by all of them), in the Mosaic GPU interpreter when `cfg.interpret` is
    True or its parameters."""
    threads = {} if warpgroups == 1 else dict(num_threads=warpgroups, thread_name="wg")
    interpret = plgpu.InterpretGPUParams() if cfg.interpret is True else cfg.interpret
    return plgpu.kernel(
        body,
        out_type=out_type,
        scratch_types=scratch_types,
        # A spec with a kernel tanh (16-bit silu / sigmoid): tanh and exp as PTX approximations.
        compiler_params=plgpu.CompilerParams(approx_math=cfg.spec.tanh is not None),
        grid=grid,
        grid_names=("b", "h", row_axis, *extra_axes),
        kernel_name=f"gdpa_{kind}_{cfg.arch}",
        interpret=interpret,
        **threads,
    )


def program_tile(ql_gmem, kvl_gmem, row_axis: str, block: int):
    """(b, h, row tile index, q_len, kv_len, rows of the tile) of this program."""
    bi, hi, ri = lax.axis_index("b"), lax.axis_index("h"), lax.axis_index(row_axis)
    return bi, hi, ri, ql_gmem[bi], kvl_gmem[bi], pl.ds(ri * block, block)


def load_tiles(barriers, *copies, group=0) -> None:
    """TMA each (gmem window, smem) pair with its own barrier of `barriers`, then wait all.
    group: which run of len(copies) barriers to use (a warpgroup loading its own tiles)."""
    first = group * len(copies)
    for i, (gmem, smem) in enumerate(copies):
        plgpu.copy_gmem_to_smem(gmem, smem, barriers.at[first + i])
    for i in range(len(copies)):
        plgpu.barrier_wait(barriers.at[first + i])


def fetcher(bi, hi, rows: int, *streams) -> Callable[[jax.Array, jax.Array], None]:
    """fetch(j, slot): TMA block j ([rows, D] of head (bi, hi)) of every (gmem, smem, barrier)
    stream into buffer `slot`; each stream signals its own barrier."""

    def fetch(j, slot):
        block = pl.ds(j * rows, rows)
        for gmem, smem, barrier in streams:
            plgpu.copy_gmem_to_smem(gmem.at[bi, block, hi], smem.at[slot], barrier.at[slot])

    return fetch


def stream_blocks(lo, hi, fetch, step) -> None:
    """step(j, slot) for j in [lo, hi) while block j + 1 is fetched into the other buffer.

    `step` waits for its block's barriers and must finish every MMA that reads buffer `slot`
    before it returns: the next step refills the other buffer, the one after refills this one.
    """

    @pl.when(hi > lo)
    def _():
        fetch(lo, 0)

    @pl.loop(lo, hi)
    def _(j):
        slot = lax.rem(j - lo, SLOTS)

        @pl.when(j + 1 < hi)
        def _():
            fetch(j + 1, 1 - slot)

        step(j, slot)


def produce_blocks(lo, hi, fetch, released) -> None:
    """The producer warpgroup: fetch(j, slot) for j in [lo, hi), SLOTS blocks ahead; a buffer is
    refilled only after `released[slot]` completes (every compute warpgroup arrived on it).
    It then waits for the last releases too, so it has seen every phase of `released` before
    the program ends (the interpreter checks that of every barrier a thread waits on)."""

    @pl.loop(lo, hi)
    def _(j):
        slot = lax.rem(j - lo, SLOTS)

        @pl.when(j - lo >= SLOTS)
        def _():
            plgpu.barrier_wait(released.at[slot])

        fetch(j, slot)

    @pl.loop(jnp.maximum(lo, hi - SLOTS), hi)
    def _(j):
        plgpu.barrier_wait(released.at[lax.rem(j - lo, SLOTS)])


def consume_blocks(lo, hi, released, step) -> None:
    """A compute warpgroup's side of `produce_blocks`: step(j, slot) for j in [lo, hi), then
    arrive on `released[slot]`. `step` waits for its block's barriers and must finish every MMA
    that reads buffer `slot` before it returns."""

    @pl.loop(lo, hi)
    def _(j):
        slot = lax.rem(j - lo, SLOTS)
        step(j, slot)
        plgpu.barrier_arrive(released.at[slot])


def visible_tile(
    spec: GdpaSpec, first_row, first_col, shape, q_len, kv_len, *, rows_are_q: bool, layout
):
    """bool tile of the mask in register `layout` (the MMA results'); rows_are_q: [q, kv]
    tile, else [kv, q]."""
    rows = _positions(first_row, shape, 0, layout)
    cols = _positions(first_col, shape, 1, layout)
    q_idx, kv_idx = (rows, cols) if rows_are_q else (cols, rows)
    return spec.visible(q_idx, kv_idx, q_len, kv_len)


def _positions(first, shape, dimension: int, layout):
    """first + iota along `dimension` of a `shape` tile in register `layout`, broadcast from
    one vector: a thread holds each distinct position once (2 rows and 16 columns of a wgmma
    tile), not once per element."""
    vector = plgpu.broadcasted_iota(
        jnp.int32, (shape[dimension],), 0, layout=layout.reduce(1 - dimension)
    )
    return lax.broadcast_in_dim(first + vector, shape, (dimension,))


def store_scores(
    spec: GdpaSpec, first_row, first_col, q_len, kv_len, *tiles, rows_are_q: bool, layout
) -> None:
    """Each (smem, fp32 score tile in register `layout`) of `tiles` → smem in its dtype, masked
    positions 0. The tiles start at (first_row, first_col): [q, kv] positions, or [kv, q]
    without rows_are_q. A wholly visible tile (`blocks.block_unmasked`) skips building the
    mask (`visible_tile`). The tiles are cast before the branch, so that they cross it in
    16-bit registers, half of fp32's (Hopper's dK/dV at Tkv = 64 spilled 88 bytes a thread
    with the fp32 tiles live across it, none now)."""
    shape = tiles[0][1].shape
    first_q, first_kv = (first_row, first_col) if rows_are_q else (first_col, first_row)
    block_q, block_kv = shape if rows_are_q else shape[::-1]
    whole = spec.tile_unmasked(first_q, first_kv, block_q, block_kv, q_len, kv_len)
    tiles = [(smem, value.astype(smem.dtype)) for smem, value in tiles]

    @pl.when(whole)
    def _():
        for smem, value in tiles:
            smem[...] = value

    @pl.when(jnp.logical_not(whole))
    def _():
        real = visible_tile(
            spec, first_row, first_col, shape, q_len, kv_len, rows_are_q=rows_are_q, layout=layout
        )
        for smem, value in tiles:
            smem[...] = jnp.where(real, value, jnp.zeros((), value.dtype))


def store_tile(staging_smem, value: jax.Array, out_gmem) -> None:
    """value (fp32) → staging SMEM in the output dtype → TMA to out_gmem, waited."""
    staging_smem[...] = value.astype(staging_smem.dtype)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(staging_smem, out_gmem)
    plgpu.wait_smem_to_gmem(0)
