"""ROTE: rotary encoding driven by event time instead of position."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def rote_angles(
    dt: jax.Array, head_dim: int, *, t_scale: float, base: float = 10_000.0
) -> jax.Array:
    """Angles [B, T, D/2]: φ(dt) · base^(-2i/D), with φ(dt) = log(1 + dt / t_scale).

    dt: float [B, T], seconds between the event and the request (>= 0).
    """
    inv_freq = base ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    phi = jnp.log1p(jnp.maximum(dt.astype(jnp.float32), 0.0) / t_scale)
    return phi[..., None] * inv_freq


def apply_rote(x: jax.Array, angles: jax.Array) -> jax.Array:
    """Rotates feature pairs (x[2i], x[2i+1]) of x [B, T, H, D] by angles [B, T, D/2]."""
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    xf = x.astype(jnp.float32)
    x1, x2 = xf[..., 0::2], xf[..., 1::2]
    rotated = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return rotated.reshape(x.shape).astype(x.dtype)
