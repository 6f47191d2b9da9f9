"""The Triton restatements of the block ranges (`common/triton_tiles.py`) equal `common/blocks.py`.

`test_gdpa_blocks.py` checks the jnp ranges against a brute-force mask with block sizes of 1 to
8 (odd ones included), where an off-by-one shows; the kernels' own tests use power-of-two
blocks, where many off-by-ones are invisible. This runs the Triton helpers in Triton's
interpreter for every block of the same configurations and compares them with the jnp ones.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import triton
import triton.language as tl
from hypothesis import given, settings
from hypothesis import strategies as st

from pallas_kernels.common import blocks, triton_tiles
from pallas_kernels.common.triton_launch import TritonLaunch, launch

_T = 24
RANGES = ("kv_block_range", "q_block_range", "unmasked_kv_block_range", "unmasked_q_block_range")


@triton.jit
def _ranges_kernel(
    LENS,
    OUT,
    BLOCK_Q: tl.constexpr,
    BLOCK_KV: tl.constexpr,
    WINDOW: tl.constexpr,
    CAUSAL: tl.constexpr,
):
    """OUT[i] = (lo, hi) of each range of RANGES for outer block i = program_id(0)."""
    i = tl.program_id(0)
    q_len, kv_len = tl.load(LENS), tl.load(LENS + 1)
    args = (i, q_len, kv_len, BLOCK_Q, BLOCK_KV, WINDOW, CAUSAL)
    lo, hi = triton_tiles.kv_block_range(*args)
    tl.store(OUT + 8 * i, lo)
    tl.store(OUT + 8 * i + 1, hi)
    lo, hi = triton_tiles.q_block_range(*args)
    tl.store(OUT + 8 * i + 2, lo)
    tl.store(OUT + 8 * i + 3, hi)
    lo, hi = triton_tiles.unmasked_kv_block_range(*args)
    tl.store(OUT + 8 * i + 4, lo)
    tl.store(OUT + 8 * i + 5, hi)
    lo, hi = triton_tiles.unmasked_q_block_range(*args)
    tl.store(OUT + 8 * i + 6, lo)
    tl.store(OUT + 8 * i + 7, hi)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    block_q=st.sampled_from((1, 2, 3, 4, 6, 8)),
    block_kv=st.sampled_from((1, 2, 3, 4, 6, 8)),
    q_len=st.integers(0, _T),
    kv_len=st.integers(0, _T),
    window=st.one_of(st.none(), st.integers(0, 12)),
    causal=st.booleans(),
)
def test_triton_ranges_equal_the_jnp_ones(block_q, block_kv, q_len, kv_len, window, causal):
    spec = TritonLaunch(
        _ranges_kernel,
        grid=(_T,),
        inputs=(jnp.array([q_len, kv_len], jnp.int32),),
        out_types=(jax.ShapeDtypeStruct((_T, 8), jnp.int32),),
        constexprs=dict(
            BLOCK_Q=block_q,
            BLOCK_KV=block_kv,
            WINDOW=-1 if window is None else window,
            CAUSAL=causal,
        ),
    )
    (got,) = launch(spec, "interpret")
    kw = dict(
        block_q=block_q, block_kv=block_kv, q_len=q_len, kv_len=kv_len, window=window, causal=causal
    )
    ids = np.arange(_T)
    for k, name in enumerate(RANGES):
        want = np.stack([np.broadcast_to(x, _T) for x in getattr(blocks, name)(ids, **kw)], 1)
        np.testing.assert_array_equal(np.asarray(got)[:, 2 * k : 2 * k + 2], want, err_msg=name)
