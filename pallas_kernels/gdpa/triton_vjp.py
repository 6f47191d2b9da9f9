"""GDPA backward as two Pallas Triton (GPU) kernels (runs on CPU with interpret mode).

No softmax statistics: S = Q Kᵀ is recomputed per tile, nothing T×T is stored.
- dK/dV kernel, grid (kv-blocks, B·H, query splits): one [block_kv, D] K/V tile per program,
  fori_loop over the tight range of query blocks that see it (`common.blocks.q_block_range`),
  cut to the program's split:
      dV += Pᵀ dO,   dK += dSᵀ Q      (tiles computed transposed, [kv, q]).
  Short-K/V GDPA (the FFN: Tkv = 8–256, one or a few kv blocks) has only B·H·(kv blocks)
  programs, too few to fill a GPU, each streaming all of Q and dO; splitting the query loop
  (`dkdv_q_splits`) gives more programs, whose fp32 partial dK/dV are summed after.
- dQ kernel, grid (q-blocks, B·H), fori_loop over the forward's kv range:  dQ += dS K.
Both accumulate in fp32 registers and never visit padded blocks. Masked tiles set P and dS to
exactly 0 where masked and read the rows past the lengths of the operands they multiply after
the mask as 0 (queries and dO for dK/dV, keys for dQ: `load_tile`), so nothing in padding
reaches a gradient.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels.common import blocks
from pallas_kernels.gdpa.blockwise import GdpaSpec, mm, mm_nt, tile_positions
from pallas_kernels.gdpa.triton import (
    batch_lengths,
    call_triton,
    head_spec,
    load_tile,
    tile_rows,
)
from pallas_kernels.gdpa.tuning import BlockSizes, dkdv_q_splits, sum_query_splits


def _dkdv_kernel(
    q_lens_ref,
    kv_lens_ref,
    q_ref,
    k_ref,
    v_ref,
    do_ref,
    dk_ref,
    dv_ref,
    *,
    spec: GdpaSpec,
    block_q: int,
    block_kv: int,
    num_heads: int,
    unmasked_loop: bool,
    split_blocks: int,
) -> None:
    """One kv tile's dK, dV over query blocks [lo, hi) ∩ split program_id(2)'s
    [s·split_blocks, (s + 1)·split_blocks)."""
    kj, split = pl.program_id(0), pl.program_id(2)
    q_len, kv_len = batch_lengths(q_lens_ref, kv_lens_ref, num_heads)
    lo, hi = blocks.split_range(
        *spec.q_block_range(kj, block_q, block_kv, q_len, kv_len), split, split_blocks
    )
    # With a second loop body exact GELU's dK/dV spills registers (Hopper, D = 128), as the
    # Triton-language kernel's does.
    unmasked = (
        spec.unmasked_q_block_range(kj, block_q, block_kv, q_len, kv_len)
        if unmasked_loop and spec.activation != "gelu"
        else None
    )
    k, v = k_ref[...], v_ref[...]

    def body(qi, carry, masked: bool):
        dk, dv = carry
        q, do = (load_tile(ref, qi, block_q, q_len, masked=masked) for ref in (q_ref, do_ref))
        st = mm_nt(k, q)  # Sᵀ [kv, q]
        pt, dst = spec.probs(st), spec.score_grad(st, mm_nt(v, do))  # dPᵀ = V dOᵀ
        if masked:
            q_idx, kv_idx = tile_positions(kj * block_kv, qi * block_q, st.shape, rows_are_q=False)
            vis = spec.visible(q_idx, kv_idx, q_len, kv_len)
            pt, dst = jnp.where(vis, pt, 0.0), jnp.where(vis, dst, 0.0)
        return dk + mm(dst.astype(q.dtype), q), dv + mm(pt.astype(do.dtype), do)

    zeros = jnp.zeros(dk_ref.shape, jnp.float32)
    dk, dv = blocks.masked_split_loop(lo, hi, unmasked, body, (zeros, zeros))
    dk_ref[...] = (dk * spec.acc_grad_scale).astype(dk_ref.dtype)
    dv_ref[...] = (dv * spec.acc_scale).astype(dv_ref.dtype)


def _dq_kernel(
    q_lens_ref,
    kv_lens_ref,
    q_ref,
    k_ref,
    v_ref,
    do_ref,
    dq_ref,
    *,
    spec: GdpaSpec,
    block_q: int,
    block_kv: int,
    num_heads: int,
    unmasked_loop: bool,
) -> None:
    qi = pl.program_id(0)
    q_len, kv_len = batch_lengths(q_lens_ref, kv_lens_ref, num_heads)
    lo, hi = spec.kv_block_range(qi, block_q, block_kv, q_len, kv_len)
    unmasked = (
        spec.unmasked_kv_block_range(qi, block_q, block_kv, q_len, kv_len)
        if unmasked_loop
        else None
    )
    q, do = q_ref[...], do_ref[...]

    def body(kj, dq, masked: bool):
        k = load_tile(k_ref, kj, block_kv, kv_len, masked=masked)
        s = mm_nt(q, k)
        ds = spec.score_grad(s, mm_nt(do, v_ref[tile_rows(kj, block_kv), :]))  # dP = dO Vᵀ
        if masked:
            q_idx, kv_idx = tile_positions(qi * block_q, kj * block_kv, s.shape, rows_are_q=True)
            ds = jnp.where(spec.visible(q_idx, kv_idx, q_len, kv_len), ds, 0.0)
        return dq + mm(ds.astype(k.dtype), k)

    zeros = jnp.zeros(dq_ref.shape, jnp.float32)
    dq = blocks.masked_split_loop(lo, hi, unmasked, body, zeros)
    dq_ref[...] = (dq * spec.acc_grad_scale).astype(dq_ref.dtype)


def gdpa_bwd_triton(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    do: jax.Array,
    q_lens: jax.Array,
    kv_lens: jax.Array,
    *,
    spec: GdpaSpec,
    sizes: BlockSizes,
    interpret: bool,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(dQ, dK, dV) with the shapes of q, k, v; inputs as for `gdpa_fwd_triton`, do like q."""
    batch, tq, heads, dim = q.shape
    tkv = k.shape[1]
    bq, bkv = sizes.block_q_bwd, sizes.block_kv_bwd
    kernel_kw = dict(
        spec=spec, block_q=bq, block_kv=bkv, num_heads=heads, unmasked_loop=sizes.unmasked_loop
    )
    call_kw = dict(sizes=sizes, interpret=interpret, cost_like=(q, k))
    q_whole = head_spec(tq, dim, heads, tiled=False)
    kv_whole = head_spec(tkv, dim, heads, tiled=False)
    q_tile = head_spec(bq, dim, heads, tiled=True)
    kv_tile = head_spec(bkv, dim, heads, tiled=True)

    kv_blocks, q_blocks = tkv // bkv, tq // bq
    splits = dkdv_q_splits(kv_blocks * batch * heads, q_blocks)
    split_blocks = blocks.cdiv(q_blocks, splits)
    if splits == 1:  # each program writes its tile of dK, dV
        out_specs, out_like = [kv_tile, kv_tile], [k, v]
    else:  # fp32 partials [splits, B, Tkv, H, D], summed below
        out_specs = [_split_spec(bkv, dim, heads)] * 2
        out_like = [jax.ShapeDtypeStruct((splits, *k.shape), jnp.float32)] * 2
    dk, dv = call_triton(
        functools.partial(_dkdv_kernel, **kernel_kw, split_blocks=split_blocks),
        grid=(kv_blocks, batch * heads, splits),
        in_specs=[q_whole, kv_tile, kv_tile, q_whole],
        out_specs=out_specs,
        out_like=out_like,
        kind="dkdv",
        **call_kw,
    )(q_lens, kv_lens, q, k, v, do)
    dk, dv = sum_query_splits(dk, dv, k.dtype)
    (dq,) = call_triton(
        functools.partial(_dq_kernel, **kernel_kw),
        grid=(tq // bq, batch * heads),
        in_specs=[q_tile, kv_whole, kv_whole, q_tile],
        out_specs=[q_tile],
        out_like=[q],
        kind="dq",
        **call_kw,
    )(q_lens, kv_lens, q, k, v, do)
    return dq, dk, dv


def _split_spec(rows: int, dim: int, num_heads: int) -> pl.BlockSpec:
    """BlockSpec over partials [splits, B, T, H, D] for grid (i, b·H + h, split): the [rows, D]
    tile i of head (b, h) in split `split`."""

    def index_map(i, bh, split):
        b, h = jax.lax.div(bh, num_heads), jax.lax.rem(bh, num_heads)
        return split, b, i, h, 0

    return pl.BlockSpec((None, None, rows, None, dim), index_map)
