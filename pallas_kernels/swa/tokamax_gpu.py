"""SWA through `tokamax.dot_product_attention` with a named implementation (the GPU backend).

Window mapping (checked against tokamax 0.0.17's `api.py` / `base.CausalMask`):
`local_window_size=(pre, post)` lets query i see keys j with i - pre <= j <= i + post, so our
|i - j| <= w is (w, w) and the causal variant j in [i - w, i] is (w, 0) with is_causal=True.
KV lengths map to `key_value_seq_lengths` (the Mosaic GPU kernel turns them into per-row key
ranges and skips the blocks past them). Query lengths are not passed: tokamax 0.0.17's Mosaic
GPU forward kernel fails to lower a `query_seq_lengths` mask under jax 0.11.2 (an
AssertionError in Pallas' Mosaic GPU lowering, found by lowering for an H100 on CPU,
`tests/kernels/test_swa_tokamax_lowering.py`), and it would only have become a dense mask.

tokamax leaves a query row that sees no key (padded rows, empty histories, rows whose window
lies past kv_len) with a uniform average of masked values, not zero, so the output is masked
with `common.masks.rows_with_keys` (O(B·Tq)), which also zeroes the rows past q_len; those
rows then get zero gradient and, their dO being 0, add nothing to dK or dV.

Implementations: "mosaic" (Mosaic GPU, sm90 / sm100; folds window and lengths into per-row
key ranges and skips out-of-window blocks), "triton" (any CUDA GPU; tokamax 0.0.17 turns a
windowed mask into a dense [Tq, Tkv] boolean mask and visits every kv block, so it is O(T²)),
"xla" (plain XLA, O(T²) memory; also runs on CPU, where the test suite checks the mapping).
None is chosen silently: the caller names one, and an unsupported case raises
NotImplementedError. The Pallas ones were not run here (no GPU attached): untested.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import tokamax

from pallas_kernels.common.masks import rows_with_keys

IMPLEMENTATIONS = ("mosaic", "triton", "xla", "xla_chunked", "cudnn")
MOSAIC_MIN_CAPABILITY = 9.0  # tokamax's Mosaic GPU attention: Hopper (sm90) and Blackwell


def gpu_implementation(device) -> str:
    """The tokamax implementation for a GPU device: "mosaic" on sm90+, else "triton"."""
    capability = float(getattr(device, "compute_capability", "0") or 0)
    return "mosaic" if capability >= MOSAIC_MIN_CAPABILITY else "triton"


def local_window(window: int | None, causal: bool) -> tuple[int, int] | None:
    """tokamax `local_window_size` for our window (see the module docstring)."""
    if window is None:
        return None
    return (window, 0 if causal else window)


def swa_tokamax(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    q_lengths: jax.Array | None,
    kv_lengths: jax.Array | None,
    window: int | None,
    causal: bool,
    scale: float,
    implementation: str,
) -> jax.Array:
    """Softmax attention q [B, Tq, H, D], k/v [B, Tkv, H, D] -> [B, Tq, H, D] with one tokamax
    implementation (one of IMPLEMENTATIONS); rows that see no key are exactly 0."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"unknown tokamax implementation {implementation!r}; choose one of {IMPLEMENTATIONS}"
        )
    o = tokamax.dot_product_attention(
        q,
        k,
        v,
        scale=scale,
        is_causal=causal,
        key_value_seq_lengths=kv_lengths,
        local_window_size=local_window(window, causal),
        implementation=implementation,
    )
    batch, tq = q.shape[:2]
    keep = rows_with_keys(
        batch, tq, k.shape[1], q_lengths=q_lengths, kv_lengths=kv_lengths, window=window
    )
    return jnp.where(keep[:, :, None, None], o, 0).astype(q.dtype)
