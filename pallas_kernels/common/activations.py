"""Elementwise activations used in place of softmax by GDPA, each with its derivative.

`ACTIVATIONS[name] = (f, df)`: `f(x)` and `df(x) = f'(x)`, both elementwise on fp32 arrays.
The backward kernels use `df` directly, so adding an activation is one entry here.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

Fn = Callable[[jax.Array], jax.Array]

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
LEAKY_SLOPE = 0.01


def _silu(x):
    return x * jax.nn.sigmoid(x)


def _dsilu(x):
    s = jax.nn.sigmoid(x)
    return s * (1.0 + x * (1.0 - s))


def _gelu(x):
    return 0.5 * x * (1.0 + jax.lax.erf(x * _INV_SQRT_2))


def _dgelu(x):
    return 0.5 * (1.0 + jax.lax.erf(x * _INV_SQRT_2)) + x * _INV_SQRT_2PI * jnp.exp(-0.5 * x * x)


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + jnp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3)))


def _dgelu_tanh(x):
    u = _SQRT_2_OVER_PI * (x + 0.044715 * x**3)
    t = jnp.tanh(u)
    du = _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x * x)
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du


def _relu(x):
    return jnp.maximum(x, 0.0)


def _drelu(x):
    return (x > 0).astype(x.dtype)


def _relu2(x):
    r = jnp.maximum(x, 0.0)
    return r * r


def _drelu2(x):
    return 2.0 * jnp.maximum(x, 0.0)


def _sigmoid(x):
    return jax.nn.sigmoid(x)


def _dsigmoid(x):
    s = jax.nn.sigmoid(x)
    return s * (1.0 - s)


def _identity(x):
    return x


def _didentity(x):
    return jnp.ones_like(x)


def _leaky_relu(x):
    return jnp.where(x > 0, x, LEAKY_SLOPE * x)


def _dleaky_relu(x):
    return jnp.where(x > 0, 1.0, LEAKY_SLOPE).astype(x.dtype)


ACTIVATIONS: dict[str, tuple[Fn, Fn]] = {
    "silu": (_silu, _dsilu),
    "gelu": (_gelu, _dgelu),
    "gelu_tanh": (_gelu_tanh, _dgelu_tanh),
    "relu": (_relu, _drelu),
    "relu2": (_relu2, _drelu2),
    "sigmoid": (_sigmoid, _dsigmoid),
    "identity": (_identity, _didentity),
    "leaky_relu": (_leaky_relu, _dleaky_relu),
}


def get_activation(name: str) -> tuple[Fn, Fn]:
    """`(f, df)` for an activation name; raises ValueError listing the valid names."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown GDPA activation {name!r}; choose one of {sorted(ACTIVATIONS)}"
        ) from None
