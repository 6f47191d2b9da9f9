"""ROTE: rotary encoding driven by event time instead of position."""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

Gap = Literal["request", "previous"]


def event_gaps(dt: jax.Array, lengths: jax.Array) -> jax.Array:
    """Seconds from each event to the one before it [B, T] (histories are newest-first: event
    i's predecessor is i + 1); 0 for the oldest event of a row and for padding.

    dt: float [B, T], seconds between the event and the request; lengths: int [B].
    """
    dt = dt.astype(jnp.float32)
    has_previous = jnp.arange(dt.shape[1] - 1)[None, :] + 1 < lengths[:, None]
    gaps = jnp.where(has_previous, dt[:, 1:] - dt[:, :-1], 0.0)
    return jnp.pad(jnp.maximum(gaps, 0.0), ((0, 0), (0, 1)))


def rote_angles(
    dt: jax.Array,
    head_dim: int,
    *,
    t_scale: float,
    lengths: jax.Array | None = None,
    gap: Gap = "request",
    position: bool = False,
    base: float = 10_000.0,
) -> jax.Array:
    """Angles [B, T, D/2]: (φ(Δt) [+ p]) · base^(-2i/D), with φ(Δt) = log(1 + Δt / t_scale).

    dt: float [B, T], seconds between the event and the request (>= 0).
    gap: Δt = dt ("request") or the gap to the previous event ("previous", `event_gaps`;
    needs lengths [B]). position: add the event's index p (0 = newest), as RoPE does.
    """
    if gap == "previous":
        if lengths is None:
            raise ValueError("rote_angles(gap='previous') needs the rows' lengths")
        dt = event_gaps(dt, lengths)
    elif gap != "request":
        raise ValueError(f"ROTE gap must be 'request' or 'previous', got {gap!r}")
    inv_freq = base ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    phi = jnp.log1p(jnp.maximum(dt.astype(jnp.float32), 0.0) / t_scale)
    if position:
        phi = phi + jnp.arange(dt.shape[1], dtype=jnp.float32)
    return phi[..., None] * inv_freq


def apply_rote(x: jax.Array, angles: jax.Array) -> jax.Array:
    """Rotates feature pairs (x[2i], x[2i+1]) of x [B, T, H, D] by angles [B, T, D/2]."""
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    xf = x.astype(jnp.float32)
    x1, x2 = xf[..., 0::2], xf[..., 1::2]
    rotated = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return rotated.reshape(x.shape).astype(x.dtype)
