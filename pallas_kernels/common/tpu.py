"""Mosaic-TPU machinery shared by the blocked attention kernels (GDPA, SWA, HSP).

- `TpuLayout`: how [B, T, H, D] arrays reach a kernel as [block_t, D] tiles of one or more
  heads (`heads_per_step`: one grid step's bookkeeping then serves several heads).
- `TileGrid`: the (B, head blocks, outer blocks, inner steps) grid of a masked attention
  kernel, with the two lengths vectors int32 [B] (q_lens, kv_lens) scalar-prefetched. The
  inner steps of outer block o walk the tight range [lo_o, hi_o) of blocks the mask lets it
  see (`blocks.kv_block_range` / `blocks.q_block_range`); the static step extent is the bound
  `blocks.max_kv_blocks` / `max_q_blocks`, so a sliding window shrinks the grid itself. Steps
  past hi_o do no compute and repeat the last block index (no DMA); wholly visible tiles skip
  the mask arithmetic, masked tiles inside both lengths skip the length tests (`Tile`).
  Banded (`TileGrid.of(band=True)`, where `can_band`): one inner step per outer block over
  the band of rows its window reaches, element-indexed (`TpuLayout.spec(..., rows=True)`),
  instead of several block steps; its kernels keep no running state in VMEM scratch
  (`visit_band`).
- `TileMask`: a visited tile's mask, and the zeroing of inner operand rows past their length.
- `sigmoid_via_tanh`: which TPUs evaluate σ through tanh.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.common import blocks
from pallas_kernels.common.tile_ops import tile_positions, zero_past
from pallas_kernels.common.tiles import BlockSizes

TPU_LANES = 128
# Grid semantics of every blocked TPU kernel: (B, H, outer blocks) parallel, steps sequential.
DIMENSION_SEMANTICS = ("parallel", "parallel", "parallel", "arbitrary")
IndexFn = Callable[..., tuple[jax.Array, jax.Array, jax.Array]]

# Device kinds of the TPU generations before v6: "TPU v4", "TPU v5 lite" (v5e), "TPU v5" (v5p).
_BEFORE_V6 = re.compile(r"TPU v[2-5](?!\d)")


def sigmoid_via_tanh(device_kind: str) -> bool:
    """Whether Mosaic-TPU kernels should evaluate σ as ½ + ½·tanh(x/2) on this TPU.

    Before v6 (v4, v5e, v5p) Mosaic lowers σ = 1 / (1 + e^-x) to two EUP pushes (exp2,
    reciprocal) plus a Newton step and special-case selects: silu costs 16 VALU operations
    per [8, 128] vector, against one EUP push (vtanh) and 4 VALU operations in the tanh form.
    v6e has a one-push sigmoid (vsigshft; silu 2 VALU operations). Counted in the compiled
    schedules (`common/llo.py`).
    """
    return bool(_BEFORE_V6.match(device_kind))


@dataclasses.dataclass(frozen=True)
class TileMask:
    """The mask of one visited tile (first query first_q, first key first_kv; [q, kv] tiles
    when q_outer, else [kv, q]). `mask(shape)`: bool tile, True where visible.
    `zero_past_length(x, axis)`: an inner operand with its positions along `axis` (its rows,
    or the lanes of an lse / δ row) past the inner length zeroed. Kernels zero their inner
    operands so: a band reaches past the lengths, and masked scores do not stop a NaN there
    (0 · NaN is NaN in the matmuls). inside_lengths: the tile lies wholly inside both lengths
    (only the window / causal mask cuts it), so neither tests them."""

    first_q: blocks.Int
    first_kv: blocks.Int
    q_len: blocks.Int
    kv_len: blocks.Int
    window: int | None
    causal: bool
    q_outer: bool
    inside_lengths: bool = False

    def __call__(self, shape: tuple[int, int]) -> jax.Array:
        tile_first = (
            (self.first_q, self.first_kv) if self.q_outer else (self.first_kv, self.first_q)
        )
        q_idx, kv_idx = tile_positions(*tile_first, shape, rows_are_q=self.q_outer)
        return blocks.visible(
            q_idx,
            kv_idx,
            q_len=None if self.inside_lengths else self.q_len,
            kv_len=None if self.inside_lengths else self.kv_len,
            window=self.window,
            causal=self.causal,
        )

    def zero_past_length(self, x: jax.Array, axis: int = 0) -> jax.Array:
        if self.inside_lengths:
            return x
        first, length = (self.first_kv, self.kv_len) if self.q_outer else (self.first_q, self.q_len)
        return zero_past(x, first, length, axis)


class Tile(NamedTuple):
    """One grid step's tile: active (the mask lets any of it through), unmasked (all of it),
    inside_lengths (it lies wholly inside both lengths), its first query and first key."""

    active: jax.Array
    unmasked: jax.Array
    inside_lengths: jax.Array
    first_q: blocks.Int
    first_kv: blocks.Int


@dataclasses.dataclass(frozen=True)
class TpuLayout:
    """How [B, T, H, D] arrays reach the kernels, each tile [block_t, D] slabs of
    heads_per_block consecutive heads (`head(ref, j)` is head j's).

    D % 128 == 0 (or H == 1): a free reshape to [B, T, H·D], tile (None, block_t, n·D) at lane
    block h. Otherwise [B, H, T, D] (a transpose) so the tile's last dim equals the array's,
    as Mosaic requires for lane dims that are not multiples of 128: tile (None, n, block_t, D).
    """

    num_heads: int
    head_dim: int
    heads_per_block: int = 1  # n: heads of one tile, a divisor of num_heads

    @property
    def head_major(self) -> bool:
        return self.head_dim % TPU_LANES != 0 and self.num_heads > 1

    def to_kernel(self, x: jax.Array) -> jax.Array:
        """[B, T, H, D] -> kernel layout."""
        b, t, h, d = x.shape
        return x.transpose(0, 2, 1, 3) if self.head_major else x.reshape(b, t, h * d)

    def from_kernel(self, x: jax.Array) -> jax.Array:
        """Kernel layout -> [B, T, H, D]."""
        if self.head_major:
            return x.transpose(0, 2, 1, 3)
        b, t, _ = x.shape
        return x.reshape(b, t, self.num_heads, self.head_dim)

    def spec(self, block_t: int, index: IndexFn, *, rows: bool = False) -> pl.BlockSpec:
        """BlockSpec of [block_t, D] tiles of heads_per_block heads (`head` picks one);
        `index(*grid_ids, *prefetch_refs) -> (b, head block, t)` with t a block index, or
        with rows=True the tile's first row (element indexing: a sliding-window band that
        starts anywhere on the 8-row tiling)."""
        head_major, dim, heads = self.head_major, self.head_dim, self.heads_per_block

        def index_map(*args):
            b, h, t = index(*args)
            if head_major:
                return b, head_block_index(h, heads, rows), t, 0
            return (b, t, h * heads * dim) if rows else (b, t, h)

        lanes = dim if head_major else heads * dim
        if rows:
            t_dim, d_dim = pl.Element(block_t), pl.Element(lanes)
        else:
            t_dim, d_dim = block_t, lanes
        head_dim = head_block_dim(heads, rows)
        block = (None, head_dim, t_dim, d_dim) if head_major else (None, t_dim, d_dim)
        return pl.BlockSpec(block, index_map)

    def head(self, ref: Any, j: int) -> Any:
        """Head j's [block_t, D] view of a tile ref of this layout's spec."""
        if self.heads_per_block == 1:
            return ref
        if self.head_major:
            return ref.at[j]
        return ref.at[:, pl.ds(j * self.head_dim, self.head_dim)]


def head_block_dim(heads: int, rows: bool) -> int | pl.Element | None:
    """The block dim of `heads` heads: squeezed for one; element-indexed beside element-indexed
    rows (Mosaic takes all of a block's dims as elements, or none)."""
    if heads == 1:
        return None
    return pl.Element(heads) if rows else heads


def head_block_index(h: jax.Array, heads: int, rows: bool) -> jax.Array:
    """Index of head block h along a `head_block_dim(heads, rows)` dim."""
    return h * heads if rows and heads > 1 else h


def heads_per_step(num_heads: int, most: int) -> int:
    """The largest divisor of num_heads that is at most `most` (>= 1)."""
    return max(d for d in range(1, min(num_heads, max(most, 1)) + 1) if num_heads % d == 0)


class MaskSpec(Protocol):
    """The mask kind of a kernel spec (GdpaSpec, SwaSpec)."""

    window: int | None
    causal: bool


def grid_and_layout(
    q: jax.Array,
    k: jax.Array,
    spec: MaskSpec,
    sizes: BlockSizes,
    *,
    backward: bool,
    band: bool = False,
) -> tuple[TileGrid, TpuLayout]:
    """The `TileGrid` of a masked attention call on q [B, Tq, H, D], k [B, Tkv, H, D] with the
    forward's or the backward's tiles of `sizes` (up to `sizes.heads` heads a step, banded
    where it can be if `band`, its kernels compiled with `sizes.vmem_limit_mib`) and the
    `TpuLayout` of its tiles."""
    block_q, block_kv = sizes.tiles(backward)
    tiles = TileGrid.of(
        q,
        k,
        block_q=block_q,
        block_kv=block_kv,
        window=spec.window,
        causal=spec.causal,
        band=band,
        heads=sizes.heads,
        vmem_limit_mib=sizes.vmem_limit_mib,
    )
    return tiles, TpuLayout(q.shape[2], q.shape[3], tiles.heads_per_block)


def real_block(step: jax.Array, length: jax.Array, block: int, num_blocks: int) -> jax.Array:
    """Clamp an outer-grid block index to the last block holding real rows (avoids the DMA of
    fully padded blocks, whose outputs are zero anyway)."""
    return blocks.block_index(0, step, jax.lax.div(length + block - 1, block), num_blocks)


def run_tile(active: jax.Array, unmasked: jax.Array, accumulate: Callable[[bool], None]) -> None:
    """Run `accumulate(masked)` for an active tile, with the mask only where it is needed."""
    unmasked = jnp.asarray(unmasked)
    pl.when(active & unmasked)(lambda: accumulate(False))
    pl.when(active & ~unmasked)(lambda: accumulate(True))


@dataclasses.dataclass(frozen=True)
class TileGrid:
    """Static tiling of one masked attention call on the grid (B, head blocks, outer blocks,
    steps); `heads` is the grid's head-block extent.

    q_outer=True: outer query blocks, inner kv steps (forward, dQ; tiles [q, kv]).
    q_outer=False: outer kv blocks, inner query steps (dK/dV; tiles [kv, q]).
    Sequence lengths are multiples of the blocks (the caller pads).
    """

    batch: int
    heads: int
    block_q: int
    block_kv: int
    num_q_blocks: int
    num_kv_blocks: int
    window: int | None
    causal: bool
    banded: bool = False
    heads_per_block: int = 1  # heads of one grid step: `heads` = num_heads / heads_per_block
    vmem_limit_mib: int | None = None  # its kernels' scoped-VMEM limit (None: the default)

    @classmethod
    def of(
        cls,
        q: jax.Array,
        k: jax.Array,
        *,
        block_q: int,
        block_kv: int,
        window: int | None,
        causal: bool,
        band: bool = False,
        heads: int = 1,
        vmem_limit_mib: int | None = None,
    ) -> TileGrid:
        """Grid for q [B, Tq, H, D] and k [B, Tkv, H, D], up to `heads` heads per step
        (`heads_per_step`). band=True: one band step per outer block where that visits no
        more rows than the block steps (`can_band`)."""
        batch, tq, num_heads, _ = q.shape
        per_step = heads_per_step(num_heads, heads)
        grid = cls(
            batch,
            num_heads // per_step,
            block_q,
            block_kv,
            tq // block_q,
            k.shape[1] // block_kv,
            window,
            causal,
            heads_per_block=per_step,
            vmem_limit_mib=vmem_limit_mib,
        )
        return dataclasses.replace(grid, banded=True) if band and grid.can_band() else grid

    def can_band(self) -> bool:
        """Whether both orientations can visit their window as one band (windowed, 128-row
        blocks), each band no longer than the rows the blocked steps visit and than the inner
        axis: one step in place of several, no more rows."""
        if self.window is None or self.block_q % TPU_LANES or self.block_kv % TPU_LANES:
            return False
        blocked = dataclasses.replace(self, banded=False)
        return all(
            self.band_rows(q_outer)
            <= min(blocked.steps(q_outer), self._num_inner(q_outer)) * self._inner_block(q_outer)
            for q_outer in (True, False)
        )

    def _band_reach(self, q_outer: bool) -> tuple[int, int]:
        """(rows before, rows after) an outer block that its window reaches on the inner axis:
        kv from i - w to i + w (causal: i), queries from j - w (causal: j) to j + w."""
        w = self.window or 0
        before = w if q_outer or not self.causal else 0
        after = 0 if q_outer and self.causal else w
        return before, after

    def band_rows(self, q_outer: bool) -> int:
        """Rows of the band an outer block sees: the window before and after it, rounded so the
        band's first row can be a multiple of 128 (its lane dim in the lse / δ rows)."""
        before, after = self._band_reach(q_outer)
        block_outer = self.block_q if q_outer else self.block_kv
        return blocks.round_up(blocks.round_up(before, TPU_LANES) + block_outer + after, TPU_LANES)

    def band_start(self, outer: blocks.Int, q_len: blocks.Int, kv_len: blocks.Int, q_outer: bool):
        """First row of outer block `outer`'s band: its first row less the window, rounded down
        to a multiple of 128 and clamped into the inner axis (the band covers every visible
        position; fully padded outer blocks repeat the last real block's band: no DMA)."""
        block_outer = self.block_q if q_outer else self.block_kv
        num_outer = self.num_q_blocks if q_outer else self.num_kv_blocks
        length = q_len if q_outer else kv_len
        first = real_block(outer, length, block_outer, num_outer) * block_outer
        before, _ = self._band_reach(q_outer)
        start = jax.lax.div(jnp.maximum(first - before, 0), TPU_LANES) * TPU_LANES
        inner_rows = self._num_inner(q_outer) * self._inner_block(q_outer)
        return pl.multiple_of(jnp.minimum(start, inner_rows - self.band_rows(q_outer)), TPU_LANES)

    def inner_rows(self, q_outer: bool) -> int:
        """Rows of one inner tile: the band, or a block."""
        return self.band_rows(q_outer) if self.banded else self._inner_block(q_outer)

    def _inner_block(self, q_outer: bool) -> int:
        return self.block_kv if q_outer else self.block_q

    def _num_inner(self, q_outer: bool) -> int:
        return self.num_kv_blocks if q_outer else self.num_q_blocks

    def steps(self, q_outer: bool) -> int:
        """Static extent of the inner (sequential) grid axis."""
        if self.banded:
            return 1
        kw = dict(window=self.window, causal=self.causal)
        if q_outer:
            return blocks.max_kv_blocks(self.block_q, self.block_kv, self.num_kv_blocks, **kw)
        return blocks.max_q_blocks(self.block_q, self.block_kv, self.num_q_blocks, **kw)

    def grid(self, q_outer: bool) -> tuple[int, int, int, int]:
        """(B, H, outer blocks, inner steps)."""
        outer = self.num_q_blocks if q_outer else self.num_kv_blocks
        return self.batch, self.heads, outer, self.steps(q_outer)

    def inner_range(
        self, outer: blocks.Int, q_len: blocks.Int, kv_len: blocks.Int, q_outer: bool
    ) -> tuple[blocks.Int, blocks.Int]:
        """Inner blocks [lo, hi) that outer block `outer` visits (hi == lo: none)."""
        fn = blocks.kv_block_range if q_outer else blocks.q_block_range
        return fn(outer, **self._mask_kw(q_len, kv_len))

    def _mask_kw(self, q_len: blocks.Int, kv_len: blocks.Int) -> dict[str, Any]:
        """Keyword arguments of the `blocks` range and tile predicates for these lengths."""
        return dict(
            block_q=self.block_q,
            block_kv=self.block_kv,
            q_len=q_len,
            kv_len=kv_len,
            window=self.window,
            causal=self.causal,
        )

    def index_maps(self, q_outer: bool) -> tuple[IndexFn, IndexFn, IndexFn]:
        """(q, kv, out) index functions `(b, h, outer, step, q_lens_ref, kv_lens_ref) ->
        (b, h, block)` for `TpuLayout.spec`; out tiles follow the outer block."""
        block_outer, num_outer = (
            (self.block_q, self.num_q_blocks) if q_outer else (self.block_kv, self.num_kv_blocks)
        )
        num_inner = self.num_kv_blocks if q_outer else self.num_q_blocks

        def outer_index(b, h, o, t, q_lens_ref, kv_lens_ref):
            length = q_lens_ref[b] if q_outer else kv_lens_ref[b]
            return b, h, real_block(o, length, block_outer, num_outer)

        def inner_index(b, h, o, t, q_lens_ref, kv_lens_ref):
            if self.banded:
                return b, h, self.band_start(o, q_lens_ref[b], kv_lens_ref[b], q_outer)
            lo, hi = self.inner_range(o, q_lens_ref[b], kv_lens_ref[b], q_outer)
            return b, h, blocks.block_index(lo, t, hi, num_inner)

        def out_index(b, h, o, t, q_lens_ref, kv_lens_ref):
            return b, h, o

        if q_outer:
            return outer_index, inner_index, out_index
        return inner_index, outer_index, out_index

    def tile_at(
        self, outer: blocks.Int, t: blocks.Int, q_len: blocks.Int, kv_len: blocks.Int, q_outer: bool
    ) -> Tile:
        """The tile at grid step (outer, t). Broadcasts over array arguments."""
        lo, hi = self.inner_range(outer, q_len, kv_len, q_outer)
        if self.banded:
            first_inner = self.band_start(outer, q_len, kv_len, q_outer)
        else:
            first_inner = (lo + t) * self._inner_block(q_outer)
        if q_outer:
            first_q, first_kv = outer * self.block_q, first_inner
        else:
            first_q, first_kv = first_inner, outer * self.block_kv
        tile = dict(block_q=self.block_q, block_kv=self.block_kv)
        tile["block_kv" if q_outer else "block_q"] = self.inner_rows(q_outer)
        mask_kw = dict(self._mask_kw(q_len, kv_len), **tile)
        last_q, last_kv = first_q + tile["block_q"], first_kv + tile["block_kv"]
        return Tile(
            active=lo + t < hi,
            unmasked=blocks.block_unmasked(first_q, first_kv, **mask_kw),
            inside_lengths=(last_q <= q_len) & (last_kv <= kv_len),
            first_q=first_q,
            first_kv=first_kv,
        )

    def _run_tile(
        self, tile: Tile, q_len: jax.Array, kv_len: jax.Array, q_outer: bool, fn: Callable
    ) -> None:
        """Run `fn(mask)` on an active tile in one of its variants: wholly visible (mask
        None), cut by the window / causal mask alone (no length tests: with either, the
        common masked tile), or masked in full (at the lengths)."""
        mask = TileMask(
            tile.first_q, tile.first_kv, q_len, kv_len, self.window, self.causal, q_outer
        )
        active, masked = tile.active, tile.active & ~tile.unmasked
        pl.when(active & tile.unmasked)(lambda: fn(None))
        if self.window is None and not self.causal:  # a tile inside the lengths is visible
            pl.when(masked)(lambda: fn(mask))
            return
        inside = dataclasses.replace(mask, inside_lengths=True)
        pl.when(masked & tile.inside_lengths)(lambda: fn(inside))
        pl.when(masked & ~tile.inside_lengths)(lambda: fn(mask))

    def visit(
        self,
        q_lens_ref: Any,
        kv_lens_ref: Any,
        *,
        q_outer: bool,
        init: Callable[[], None],
        accumulate: Callable[[TileMask | None], None],
        finish: Callable[[], None],
    ) -> None:
        """Kernel-body scaffold: `init()` at the first inner step, `accumulate(mask)` on each
        tile the mask lets through (mask None when the whole tile is visible), `finish()` at
        the last inner step. Tiles are [q, kv] when q_outer, else [kv, q]."""
        b, outer, t = pl.program_id(0), pl.program_id(2), pl.program_id(3)
        q_len, kv_len = q_lens_ref[b], kv_lens_ref[b]
        pl.when(t == 0)(init)
        tile = self.tile_at(outer, t, q_len, kv_len, q_outer)
        self._run_tile(tile, q_len, kv_len, q_outer, accumulate)
        pl.when(t == pl.num_programs(3) - 1)(finish)

    def visit_band(
        self,
        q_lens_ref: Any,
        kv_lens_ref: Any,
        *,
        q_outer: bool,
        compute: Callable[[TileMask | None], None],
        empty: Callable[[], None],
    ) -> None:
        """Kernel-body scaffold of a banded grid (one inner step: the band holds every row
        the outer block sees, so no running state): `compute(mask)` writes the outputs from
        the band's tile (mask None when wholly visible), `empty()` writes those of an outer
        block that sees nothing."""
        if not self.banded:
            raise ValueError("visit_band needs a banded grid (TileGrid.of(band=True))")
        b, outer = pl.program_id(0), pl.program_id(2)
        q_len, kv_len = q_lens_ref[b], kv_lens_ref[b]
        tile = self.tile_at(outer, 0, q_len, kv_len, q_outer)
        self._run_tile(tile, q_len, kv_len, q_outer, compute)
        pl.when(~tile.active)(empty)

    def pallas_call(
        self,
        kernel: Callable[..., None],
        *,
        q_outer: bool,
        in_specs: Sequence[pl.BlockSpec],
        out_specs: Sequence[pl.BlockSpec],
        out_shape: Sequence[jax.ShapeDtypeStruct],
        scratch_shapes: Sequence[Any],
        cost_estimate: pl.CostEstimate,
        name: str,
        interpret: bool,
    ) -> Callable[..., Any]:
        """The kernel's pallas_call on this grid; call it with (q_lens, kv_lens, *inputs)."""
        return pl.pallas_call(
            kernel,
            out_shape=list(out_shape),
            grid_spec=pltpu.PrefetchScalarGridSpec(
                num_scalar_prefetch=2,
                grid=self.grid(q_outer),
                in_specs=list(in_specs),
                out_specs=list(out_specs),
                scratch_shapes=list(scratch_shapes),
            ),
            compiler_params=pltpu.CompilerParams(
                dimension_semantics=DIMENSION_SEMANTICS,
                vmem_limit_bytes=None if self.vmem_limit_mib is None else self.vmem_limit_mib << 20,
            ),
            interpret=interpret,
            cost_estimate=cost_estimate,
            name=name,
        )
