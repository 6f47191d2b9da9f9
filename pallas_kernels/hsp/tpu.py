"""Seed pooling forward and backward as Pallas Mosaic-TPU kernels (run on CPU in interpret mode).

Grid (H, B, kv-steps), head outermost: the seeds tile [S, D] of head h has the same block index
for all B·nkv consecutive steps, so the pipeline fetches it once per head and every batch row
reuses it from VMEM. Step t of row b visits kv block t while t·block_kv < kv_len[b]; later steps
do no compute and their index maps repeat the last real block, so fully padded blocks cost
neither DMA nor FLOPs. Interior blocks skip the mask arithmetic; the masked last block zeroes the
keys and values past kv_len it multiplies (`blockwise.real_keys`). Math: `blockwise.py`.

- Forward: online softmax over the kv steps into fp32 VMEM (m, l [S, 1], acc [S, D]); writes
  O [B, S, H, D] and the log-sum-exp [B, H, S, 1] (the backward's only extra residual).
- Backward: one kernel, grid (H, B, kv-steps) with B and kv sequential: writes each dK / dV tile
  at its own step (zeros for padded blocks) and accumulates dSeeds over kv tiles *and* batch
  rows in VMEM, so the batch reduction never reaches HBM.
Inputs are padded by the caller: T to a block multiple, S to the dtype's sublane tile.
Layout (`common.tpu.TpuLayout`): D % 128 == 0 is a free reshape; smaller D (the `base` config's
D = 64) transposes K and V to [B, H, T, D] in XLA first, an extra HBM pass over the op's main
input. Untested on hardware: checked in interpret mode and by AOT compiles for v5e / v6e.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.common.softmax import MASK_VALUE, online_softmax_step, row_delta, softmax_finish
from pallas_kernels.common.tpu import TpuLayout, real_block, run_tile
from pallas_kernels.hsp import blockwise


def _lse_spec(seeds_pad: int) -> pl.BlockSpec:
    """[S, 1] block of the [B, H, S, 1] log-sum-exp for grid (h, b, t)."""
    return pl.BlockSpec((None, None, seeds_pad, 1), lambda h, b, t, lens: (b, h, 0, 0))


def _fwd_kernel(
    lens_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, m_sc, l_sc, acc_sc, *, scale, block_kv
) -> None:
    b, t = pl.program_id(1), pl.program_id(2)
    kv_len = lens_ref[b]
    first_col = t * block_kv

    @pl.when(t == 0)
    def _init():
        m_sc[...] = jnp.full_like(m_sc, MASK_VALUE)
        l_sc[...] = jnp.zeros_like(l_sc)
        acc_sc[...] = jnp.zeros_like(acc_sc)

    def accumulate(masked: bool) -> None:
        s = blockwise.scores(
            q_ref[...], k_ref[...], scale=scale, first_col=first_col, kv_len=kv_len, masked=masked
        )
        v = blockwise.real_keys(v_ref[...], first_col, kv_len, masked)
        m_sc[...], l_sc[...], acc_sc[...] = online_softmax_step(
            s, v, m_sc[...], l_sc[...], acc_sc[...]
        )

    run_tile(first_col < kv_len, first_col + block_kv <= kv_len, accumulate)

    @pl.when(t == pl.num_programs(2) - 1)
    def _store():
        o, lse = softmax_finish(m_sc[...], l_sc[...], acc_sc[...], empty_lse=0.0)
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
    dq_sc,
    *,
    scale,
    block_kv,
) -> None:
    b, t = pl.program_id(1), pl.program_id(2)
    kv_len = lens_ref[b]
    first_col = t * block_kv
    active = first_col < kv_len

    @pl.when((b == 0) & (t == 0))
    def _init():
        dq_sc[...] = jnp.zeros_like(dq_sc)

    def accumulate(masked: bool) -> None:
        q, do = q_ref[...], do_ref[...]
        k, v = (blockwise.real_keys(ref[...], first_col, kv_len, masked) for ref in (k_ref, v_ref))
        s = blockwise.scores(q, k, scale=scale, first_col=first_col, kv_len=kv_len, masked=masked)
        delta = row_delta(do, o_ref[...], keepdims=True)
        dk, dv, dq = blockwise.backward_step(s, q, k, v, do, lse_ref[...], delta, scale=scale)
        dk_ref[...] = dk.astype(dk_ref.dtype)
        dv_ref[...] = dv.astype(dv_ref.dtype)
        dq_sc[...] += dq

    run_tile(active, first_col + block_kv <= kv_len, accumulate)

    @pl.when(~active)
    def _padded():
        dk_ref[...] = jnp.zeros_like(dk_ref)
        dv_ref[...] = jnp.zeros_like(dv_ref)

    @pl.when((b == pl.num_programs(1) - 1) & (t == pl.num_programs(2) - 1))
    def _store():
        dq_ref[...] = dq_sc[...]


def _specs(layout: TpuLayout, seeds_pad: int, block_kv: int, num_kv_blocks: int):
    """(seeds, clamped kv, exact kv, per-row seed-shaped) BlockSpecs for grid (h, b, t)."""
    seeds = layout.spec(seeds_pad, lambda h, b, t, lens: (0, h, 0))
    kv_real = layout.spec(
        block_kv, lambda h, b, t, lens: (b, h, real_block(t, lens[b], block_kv, num_kv_blocks))
    )
    kv_exact = layout.spec(block_kv, lambda h, b, t, lens: (b, h, t))
    rows = layout.spec(seeds_pad, lambda h, b, t, lens: (b, h, 0))
    return seeds, kv_real, kv_exact, rows


def _kernel_shape(layout: TpuLayout, shape: tuple[int, ...], dtype) -> jax.ShapeDtypeStruct:
    """Shape of a [B, T, H, D] array of `dtype` in the kernel layout."""
    return jax.eval_shape(layout.to_kernel, jax.ShapeDtypeStruct(shape, dtype))


def seed_pooling_fwd_tpu(
    seeds: jax.Array,
    k: jax.Array,
    v: jax.Array,
    kv_lens: jax.Array,
    *,
    scale: float,
    block_kv: int,
    interpret: bool,
) -> tuple[jax.Array, jax.Array]:
    """(O [B, S, H, D], lse fp32 [B, H, S, 1]) from seeds [S, H, D], k/v [B, T, H, D] (T a
    multiple of block_kv, S of the sublane tile) and int32 kv_lens [B] clipped to [0, T]."""
    s_pad, heads, dim = seeds.shape
    batch, t = k.shape[:2]
    nkv = t // block_kv
    layout = TpuLayout(heads, dim)
    seeds_spec, kv_real, _, rows = _specs(layout, s_pad, block_kv, nkv)
    o, lse = pl.pallas_call(
        functools.partial(_fwd_kernel, scale=scale, block_kv=block_kv),
        out_shape=[
            _kernel_shape(layout, (batch, s_pad, heads, dim), k.dtype),
            jax.ShapeDtypeStruct((batch, heads, s_pad, 1), jnp.float32),
        ],
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1,
            grid=(heads, batch, nkv),
            in_specs=[seeds_spec, kv_real, kv_real],
            out_specs=[rows, _lse_spec(s_pad)],
            scratch_shapes=[
                pltpu.VMEM((s_pad, 1), jnp.float32),
                pltpu.VMEM((s_pad, 1), jnp.float32),
                pltpu.VMEM((s_pad, dim), jnp.float32),
            ],
        ),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")
        ),
        interpret=interpret,
        cost_estimate=blockwise.cost_estimate(seeds, k, "fwd"),
        name="seed_pooling_fwd_tpu",
    )(kv_lens, layout.to_kernel(seeds[None]), layout.to_kernel(k), layout.to_kernel(v))
    return layout.from_kernel(o), lse


def seed_pooling_bwd_tpu(
    seeds: jax.Array,
    k: jax.Array,
    v: jax.Array,
    o: jax.Array,
    lse: jax.Array,
    do: jax.Array,
    kv_lens: jax.Array,
    *,
    scale: float,
    block_kv: int,
    interpret: bool,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(dSeeds fp32 [S, H, D] summed over the batch, dK, dV like k) from the forward's inputs,
    its outputs O, lse and the cotangent dO [B, S, H, D]."""
    s_pad, heads, dim = seeds.shape
    batch, t = k.shape[:2]
    nkv = t // block_kv
    layout = TpuLayout(heads, dim)
    seeds_spec, kv_real, kv_exact, rows = _specs(layout, s_pad, block_kv, nkv)
    dq, dk, dv = pl.pallas_call(
        functools.partial(_bwd_kernel, scale=scale, block_kv=block_kv),
        out_shape=[
            _kernel_shape(layout, (1, s_pad, heads, dim), jnp.float32),
            _kernel_shape(layout, k.shape, k.dtype),
            _kernel_shape(layout, v.shape, v.dtype),
        ],
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1,
            grid=(heads, batch, nkv),
            in_specs=[seeds_spec, kv_real, kv_real, rows, rows, _lse_spec(s_pad)],
            out_specs=[seeds_spec, kv_exact, kv_exact],
            scratch_shapes=[pltpu.VMEM((s_pad, dim), jnp.float32)],
        ),
        # dSeeds accumulates across batch rows: only the head axis may run in parallel.
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "arbitrary", "arbitrary")
        ),
        interpret=interpret,
        cost_estimate=blockwise.cost_estimate(seeds, k, "bwd"),
        name="seed_pooling_bwd_tpu",
    )(
        kv_lens,
        layout.to_kernel(seeds[None]),
        layout.to_kernel(k),
        layout.to_kernel(v),
        layout.to_kernel(o),
        layout.to_kernel(do),
        lse,
    )
    return layout.from_kernel(dq)[0], layout.from_kernel(dk), layout.from_kernel(dv)
