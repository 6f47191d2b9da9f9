"""Input checks and block padding shared by the attention-shaped ops' public APIs.

Layout convention of every op: q [B, Tq, H, D], k / v [B, Tkv, H, D], lengths int [B].
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16), jnp.dtype(jnp.float32))
MAX_WINDOW = 2**31 - 1  # the kernels compute positions ± window in int32


def check_attention_inputs(
    op: str,
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_lengths: jax.Array | None,
    kv_lengths: jax.Array | None,
    window: int | None,
    causal: bool = False,
    *,
    names: tuple[str, str, str] = ("q", "k", "v"),
) -> None:
    """ValueError naming the offending argument for bad shapes, dtypes, lengths, window or
    causal flag.

    op: the op's name for messages ("GDPA", "SWA"). q, k, v must be rank 4, share one dtype of
    `DTYPES`, k and v one shape, and k/v batch, heads and head dim must equal q's. Concrete
    lengths must lie in [0, Tq] / [0, Tkv]; traced ones (under jit) cannot be checked and are
    clipped to it by `clip_lengths`. names: how the messages call q, k, v (seed pooling checks
    k in q's place).
    """
    if not isinstance(causal, bool):
        raise ValueError(
            f"causal must be a Python bool (True or False), got {causal!r} of type "
            f"{type(causal).__module__}.{type(causal).__qualname__}"
        )
    for name, x in zip(names, (q, k, v), strict=True):
        if x.ndim != 4:
            raise ValueError(f"{name} must have rank 4 [B, T, H, D], got shape {x.shape}")
        if jnp.dtype(x.dtype) not in DTYPES:
            supported = [str(d) for d in DTYPES]
            raise ValueError(f"{name} has dtype {x.dtype}; {op} supports {supported}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(
            f"{', '.join(dict.fromkeys(names))} must share one dtype, got "
            f"{q.dtype}, {k.dtype}, {v.dtype}"
        )
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got k {k.shape} and v {v.shape}")
    b, _, h, d = q.shape
    if (k.shape[0], k.shape[2], k.shape[3]) != (b, h, d):
        raise ValueError(
            f"k/v batch, heads and head dim must match q's ({b}, {h}, {d}), got k {k.shape}"
        )
    for name, lengths, t in (
        ("q_lengths", q_lengths, q.shape[1]),
        ("kv_lengths", kv_lengths, k.shape[1]),
    ):
        if lengths is None:
            continue
        if not hasattr(lengths, "dtype"):
            raise ValueError(f"{name} must be an integer array of shape ({b},), got {lengths!r}")
        if lengths.shape != (b,) or not jnp.issubdtype(lengths.dtype, jnp.integer):
            raise ValueError(
                f"{name} must be an integer array of shape ({b},), "
                f"got {lengths.dtype} {lengths.shape}"
            )
        _check_length_range(name, lengths, t)
    if window is not None and (
        isinstance(window, bool) or not isinstance(window, numbers.Integral) or window < 0
    ):
        raise ValueError(f"window must be a non-negative int or None, got {window!r}")
    if window is not None and window > MAX_WINDOW:
        raise ValueError(
            f"window must be at most {MAX_WINDOW} (int32), got {window}; a window as long as "
            "the sequences is the same as none (window=None)"
        )


def _check_length_range(name: str, lengths: jax.Array, t: int) -> None:
    """ValueError listing the values of concrete lengths outside [0, t]. Traced lengths (under
    jit) have no values to check: the kernels and references clip them to [0, t]."""
    if isinstance(lengths, jax.core.Tracer):
        return
    values = np.asarray(lengths)
    bad = values[(values < 0) | (values > t)]
    if bad.size:
        raise ValueError(f"{name} must lie in [0, {t}], got out-of-range values {bad.tolist()}")


def check_scales(**scales: float) -> None:
    """ValueError unless every scale is a finite Python number (the kernels take them as
    compile-time constants, so a traced array cannot be one)."""
    for name, value in scales.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{name} must be a Python number (static), got {type(value).__name__}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")


def nothing_to_attend(q: jax.Array, k: jax.Array) -> bool:
    """Whether q or k is empty (B, T, H or D of 0): the output is zeros, no grid to launch."""
    return q.size == 0 or k.size == 0


def pad_sequence(x: jax.Array, length: int, dim: int) -> jax.Array:
    """Zero-pad [B, T, H, D] to T = length, D = dim (no-op when already there)."""
    _, t, _, d = x.shape
    if (t, d) == (length, dim):
        return x
    return jnp.pad(x, ((0, 0), (0, length - t), (0, 0), (0, dim - d)))


def clip_lengths(lengths: jax.Array | None, batch: int, length: int) -> jax.Array:
    """int32 [B] lengths clipped to [0, length] (the references' semantics; clipped before the
    cast, so that a uint32 above 2³¹ clips to length, not wraps below 0); None = full."""
    if lengths is None:
        return jnp.full((batch,), length, jnp.int32)
    return jnp.clip(lengths, 0, length).astype(jnp.int32)


def pad_attention_inputs(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_lengths: jax.Array | None,
    kv_lengths: jax.Array | None,
    *,
    tq_pad: int,
    tkv_pad: int,
    d_pad: int,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """(q [B, tq_pad, H, d_pad], k / v [B, tkv_pad, H, d_pad], q_lens, kv_lens): inputs
    zero-padded to block multiples, lengths int32 [B] clipped to the unpadded Tq / Tkv."""
    batch, tq = q.shape[:2]
    tkv = k.shape[1]
    return (
        pad_sequence(q, tq_pad, d_pad),
        pad_sequence(k, tkv_pad, d_pad),
        pad_sequence(v, tkv_pad, d_pad),
        clip_lengths(q_lengths, batch, tq),
        clip_lengths(kv_lengths, batch, tkv),
    )
