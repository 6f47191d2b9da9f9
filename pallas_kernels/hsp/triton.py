"""Seed pooling forward and backward as Pallas Triton (GPU) kernels (run on CPU in interpret mode).

Grid (1, B·H): one program per (batch row, head) holds that head's seeds [S, D] in registers for
its whole life and runs a fori_loop over exactly the kv blocks that hold real keys,
[0, ceil(kv_len / block_kv)): a short jagged row costs its real length, fully padded blocks are
never read, and values (and keys in the backward) past kv_len read as 0 (`load_tile`), so
whatever padding holds (NaN, inf) contributes exactly zero. Seeds are shared across the batch
through L2 (every program of head h reads the same [S, D] tile). Math: `blockwise.py`.

- Forward: online softmax in registers; writes O [B, S, H, D] and lse [B, H, S, 1] (fp32).
- Backward: the same loop writes each dK / dV tile once, zero-fills the padded blocks, and
  emits this program's dSeeds partial [B, S, H, D] (fp32); the caller sums it over B (XLA). An
  in-kernel batch reduction would serialize programs on atomics; the partial is S/T of the
  K/V traffic (S = 64, T = 1024: 6%).
Inputs are padded by the caller: T to a block multiple, S and D to powers of two >= 16.
Untested on hardware: checked in interpret mode and by lowering to Triton IR for an H100.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.common.softmax import MASK_VALUE, online_softmax_step, row_delta, softmax_finish
from pallas_kernels.common.tiles import BlockSizes
from pallas_kernels.gdpa.triton import LENGTHS_SPEC, head_spec, load_tile, tile_rows
from pallas_kernels.hsp import blockwise


def _seeds_spec(seeds_pad: int, dim: int, num_heads: int) -> pl.BlockSpec:
    """Head h's [S, D] tile of the [1, S, H, D] seeds for grid (0, b·H + h)."""
    return pl.BlockSpec(
        (None, seeds_pad, None, dim), lambda i, bh: (0, 0, jax.lax.rem(bh, num_heads), 0)
    )


def _lse_spec(seeds_pad: int, num_heads: int) -> pl.BlockSpec:
    """Row (b, h)'s [S, 1] block of the [B, H, S, 1] log-sum-exp."""

    def index_map(i, bh):
        return jax.lax.div(bh, num_heads), jax.lax.rem(bh, num_heads), 0, 0

    return pl.BlockSpec((None, None, seeds_pad, 1), index_map)


def _kv_len_and_blocks(lens_ref, num_heads: int, block_kv: int) -> tuple[jax.Array, jax.Array]:
    """(kv_len, number of kv blocks holding real keys) of this program's batch row."""
    kv_len = lens_ref[jax.lax.div(pl.program_id(1), num_heads)]
    return kv_len, jax.lax.div(kv_len + block_kv - 1, block_kv)


def _fwd_kernel(lens_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, *, scale, block_kv, num_heads):
    kv_len, hi = _kv_len_and_blocks(lens_ref, num_heads, block_kv)
    q = q_ref[...]

    def body(j, carry):
        s = blockwise.scores(
            q,
            k_ref[tile_rows(j, block_kv), :],
            scale=scale,
            first_col=j * block_kv,
            kv_len=kv_len,
            masked=True,
        )
        v = load_tile(v_ref, j, block_kv, kv_len, masked=True)  # 0 past kv_len
        return online_softmax_step(s, v, *carry)

    s_pad, dim = q.shape
    init = (
        jnp.full((s_pad, 1), MASK_VALUE, jnp.float32),
        jnp.zeros((s_pad, 1), jnp.float32),
        jnp.zeros((s_pad, dim), jnp.float32),
    )
    o, lse = softmax_finish(*jax.lax.fori_loop(0, hi, body, init), empty_lse=0.0)
    o_ref[...] = o.astype(o_ref.dtype)
    lse_ref[...] = lse


def _bwd_kernel(
    lens_ref,
    q_ref,
    k_ref,
    v_ref,
    o_ref,
    do_ref,
    lse_ref,
    dq_ref,
    dk_ref,
    dv_ref,
    *,
    scale,
    block_kv,
    num_heads,
):
    kv_len, hi = _kv_len_and_blocks(lens_ref, num_heads, block_kv)
    q, do, lse = q_ref[...], do_ref[...], lse_ref[...]
    delta = row_delta(do, o_ref[...], keepdims=True)

    def body(j, dq):
        rows = tile_rows(j, block_kv)
        k, v = (load_tile(ref, j, block_kv, kv_len, masked=True) for ref in (k_ref, v_ref))
        s = blockwise.scores(q, k, scale=scale, first_col=j * block_kv, kv_len=kv_len, masked=True)
        dk, dv, dq_j = blockwise.backward_step(s, q, k, v, do, lse, delta, scale=scale)
        dk_ref[rows, :] = dk.astype(dk_ref.dtype)
        dv_ref[rows, :] = dv.astype(dv_ref.dtype)
        return dq + dq_j

    dq_ref[...] = jax.lax.fori_loop(0, hi, body, jnp.zeros(dq_ref.shape, jnp.float32))

    def zero_fill(j, carry):
        rows = tile_rows(j, block_kv)
        dk_ref[rows, :] = jnp.zeros((block_kv, dk_ref.shape[1]), dk_ref.dtype)
        dv_ref[rows, :] = jnp.zeros((block_kv, dv_ref.shape[1]), dv_ref.dtype)
        return carry

    jax.lax.fori_loop(hi, dk_ref.shape[0] // block_kv, zero_fill, 0)


def _call(kernel, *, grid, in_specs, out_specs, out_shape, sizes, interpret, cost, name):
    return pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=grid,
        in_specs=[LENGTHS_SPEC, *in_specs],
        out_specs=out_specs,
        compiler_params=pltriton.CompilerParams(
            num_warps=sizes.num_warps, num_stages=sizes.num_stages
        ),
        interpret=interpret,
        cost_estimate=cost,
        name=name,
    )


def seed_pooling_fwd_triton(
    seeds: jax.Array,
    k: jax.Array,
    v: jax.Array,
    kv_lens: jax.Array,
    *,
    scale: float,
    sizes: BlockSizes,
    interpret: bool,
) -> tuple[jax.Array, jax.Array]:
    """(O [B, S, H, D], lse fp32 [B, H, S, 1]) from seeds [S, H, D], k/v [B, T, H, D] (T a
    multiple of sizes.block_kv; S, D powers of two) and int32 kv_lens [B] clipped to [0, T]."""
    s_pad, heads, dim = seeds.shape
    batch, t = k.shape[:2]
    kv_whole = head_spec(t, dim, heads, tiled=False)
    return _call(
        functools.partial(_fwd_kernel, scale=scale, block_kv=sizes.block_kv, num_heads=heads),
        grid=(1, batch * heads),
        in_specs=[_seeds_spec(s_pad, dim, heads), kv_whole, kv_whole],
        out_specs=[head_spec(s_pad, dim, heads, tiled=True), _lse_spec(s_pad, heads)],
        out_shape=[
            jax.ShapeDtypeStruct((batch, s_pad, heads, dim), k.dtype),
            jax.ShapeDtypeStruct((batch, heads, s_pad, 1), jnp.float32),
        ],
        sizes=sizes,
        interpret=interpret,
        cost=blockwise.cost_estimate(seeds, k, "fwd"),
        name="seed_pooling_fwd_triton",
    )(kv_lens, seeds[None], k, v)


def seed_pooling_bwd_triton(
    seeds: jax.Array,
    k: jax.Array,
    v: jax.Array,
    o: jax.Array,
    lse: jax.Array,
    do: jax.Array,
    kv_lens: jax.Array,
    *,
    scale: float,
    sizes: BlockSizes,
    interpret: bool,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(dSeeds fp32 [S, H, D] summed over the batch, dK, dV like k); see the forward."""
    s_pad, heads, dim = seeds.shape
    batch, t = k.shape[:2]
    kv_whole = head_spec(t, dim, heads, tiled=False)
    rows = head_spec(s_pad, dim, heads, tiled=True)
    dq, dk, dv = _call(
        functools.partial(_bwd_kernel, scale=scale, block_kv=sizes.block_kv_bwd, num_heads=heads),
        grid=(1, batch * heads),
        in_specs=[
            _seeds_spec(s_pad, dim, heads),
            kv_whole,
            kv_whole,
            rows,
            rows,
            _lse_spec(s_pad, heads),
        ],
        out_specs=[rows, kv_whole, kv_whole],
        out_shape=[
            jax.ShapeDtypeStruct((batch, s_pad, heads, dim), jnp.float32),
            jax.ShapeDtypeStruct(k.shape, k.dtype),
            jax.ShapeDtypeStruct(v.shape, v.dtype),
        ],
        sizes=sizes,
        interpret=interpret,
        cost=blockwise.cost_estimate(seeds, k, "bwd"),
        name="seed_pooling_bwd_triton",
    )(kv_lens, seeds[None], k, v, o, do, lse)
    return jnp.sum(dq, axis=0), dk, dv
