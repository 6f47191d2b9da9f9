"""GDPA forward as a Pallas Mosaic-TPU kernel (runs on CPU with interpret mode).

Grid (B, H, q-blocks, kv-steps), kv innermost and "arbitrary": step t of q block i visits kv
block lo_i + t, where [lo_i, hi_i) is the tight range of kv blocks the mask lets query block i
see (`common.blocks.kv_block_range`, from the scalar-prefetched lengths). The kv-step extent is
the static bound `max_kv_blocks`, so a sliding window shrinks the grid itself; steps past
hi_i (padding, causal) do no compute, and their index maps repeat the last block, so the
pipeline issues no DMA for them. Interior tiles skip the mask arithmetic entirely.

Inputs are padded by the caller to block multiples; lengths int32 [B] mark the real rows.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.common import blocks
from pallas_kernels.gdpa.blockwise import GdpaSpec, cost_estimate, mm, mm_nt, tile_positions

TPU_LANES = 128
# Grid semantics for every GDPA TPU kernel: (B, H, outer blocks) parallel, inner steps sequential.
COMPILER_PARAMS = pltpu.CompilerParams(
    dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")
)
IndexFn = Callable[..., tuple[jax.Array, jax.Array, jax.Array]]


@dataclasses.dataclass(frozen=True)
class TpuLayout:
    """How [B, T, H, D] arrays reach the kernels, each tile a [block_t, D] slab of one head.

    D % 128 == 0 (or H == 1): a free reshape to [B, T, H·D], tile (None, block_t, D) at lane
    block h. Otherwise [B, H, T, D] (a transpose) so the tile's last dim equals the array's,
    as Mosaic requires for lane dims that are not multiples of 128.
    """

    num_heads: int
    head_dim: int

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

    def spec(self, block_t: int, index: IndexFn) -> pl.BlockSpec:
        """BlockSpec of [block_t, D] tiles; `index(*grid_ids, *prefetch_refs) -> (b, h, t)`."""
        head_major = self.head_major

        def index_map(*args):
            b, h, t = index(*args)
            return (b, h, t, 0) if head_major else (b, t, h)

        block = (
            (None, None, block_t, self.head_dim) if head_major else (None, block_t, self.head_dim)
        )
        return pl.BlockSpec(block, index_map)


def real_block(step: jax.Array, length: jax.Array, block: int, num_blocks: int) -> jax.Array:
    """Clamp an outer-grid block index to the last block holding real rows (avoids the DMA of
    fully padded blocks, whose outputs are zero anyway)."""
    return blocks.block_index(0, step, jax.lax.div(length + block - 1, block), num_blocks)


def run_tile(active: jax.Array, unmasked: jax.Array, accumulate: Callable[[bool], None]) -> None:
    """Run `accumulate(masked)` for an active tile, with the mask only where it is needed."""
    unmasked = jnp.asarray(unmasked)
    pl.when(active & unmasked)(lambda: accumulate(False))
    pl.when(active & ~unmasked)(lambda: accumulate(True))


def _fwd_kernel(
    q_lens_ref,
    kv_lens_ref,
    q_ref,
    k_ref,
    v_ref,
    o_ref,
    acc_ref,
    *,
    spec: GdpaSpec,
    block_q: int,
    block_kv: int,
) -> None:
    b, qi, t = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    q_len, kv_len = q_lens_ref[b], kv_lens_ref[b]
    mask_kw = dict(q_len=q_len, kv_len=kv_len, window=spec.window, causal=spec.causal)
    lo, hi = blocks.kv_block_range(qi, block_q=block_q, block_kv=block_kv, **mask_kw)
    first_row, first_col = qi * block_q, (lo + t) * block_kv

    @pl.when(t == 0)
    def _init():
        acc_ref[...] = jnp.zeros_like(acc_ref)

    def accumulate(masked: bool) -> None:
        s = mm_nt(q_ref[...], k_ref[...])
        p = spec.probs(s)
        if masked:
            q_idx, kv_idx = tile_positions(first_row, first_col, s.shape, rows_are_q=True)
            p = jnp.where(spec.visible(q_idx, kv_idx, q_len, kv_len), p, 0.0)
        acc_ref[...] += mm(p.astype(v_ref.dtype), v_ref[...])

    unmasked = blocks.block_unmasked(
        first_row, first_col, block_q=block_q, block_kv=block_kv, **mask_kw
    )
    run_tile(lo + t < hi, unmasked, accumulate)

    @pl.when(t == pl.num_programs(3) - 1)
    def _store():
        o_ref[...] = (acc_ref[...] * spec.out_scale).astype(o_ref.dtype)


def gdpa_fwd_tpu(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_lens: jax.Array,
    kv_lens: jax.Array,
    *,
    spec: GdpaSpec,
    block_q: int,
    block_kv: int,
    interpret: bool,
) -> jax.Array:
    """O [B, Tq, H, D] from q [B, Tq, H, D], k/v [B, Tkv, H, D] (T multiples of the blocks)
    and int32 lengths [B] (already clipped to [0, T])."""
    batch, tq, heads, dim = q.shape
    tkv = k.shape[1]
    nq, nkv = tq // block_q, tkv // block_kv
    steps = blocks.max_kv_blocks(block_q, block_kv, nkv, window=spec.window, causal=spec.causal)
    layout = TpuLayout(heads, dim)

    def q_index(b, h, qi, t, q_lens_ref, kv_lens_ref):
        return b, h, real_block(qi, q_lens_ref[b], block_q, nq)

    def kv_index(b, h, qi, t, q_lens_ref, kv_lens_ref):
        lo, hi = blocks.kv_block_range(
            qi,
            block_q=block_q,
            block_kv=block_kv,
            q_len=q_lens_ref[b],
            kv_len=kv_lens_ref[b],
            window=spec.window,
            causal=spec.causal,
        )
        return b, h, blocks.block_index(lo, t, hi, nkv)

    def o_index(b, h, qi, t, q_lens_ref, kv_lens_ref):
        return b, h, qi

    kernel = functools.partial(_fwd_kernel, spec=spec, block_q=block_q, block_kv=block_kv)
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct(layout.to_kernel(q).shape, q.dtype),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2,
            grid=(batch, heads, nq, steps),
            in_specs=[
                layout.spec(block_q, q_index),
                layout.spec(block_kv, kv_index),
                layout.spec(block_kv, kv_index),
            ],
            out_specs=layout.spec(block_q, o_index),
            scratch_shapes=[pltpu.VMEM((block_q, dim), jnp.float32)],
        ),
        compiler_params=COMPILER_PARAMS,
        interpret=interpret,
        cost_estimate=cost_estimate(q, k, "fwd"),
        name="gdpa_fwd_tpu",
    )(q_lens, kv_lens, layout.to_kernel(q), layout.to_kernel(k), layout.to_kernel(v))
    return layout.from_kernel(out)
