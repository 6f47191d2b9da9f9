"""Elementwise activations used in place of softmax by GDPA, each with its derivative.

`ACTIVATIONS[name] = (f, df)`: `f(x)` and `df(x) = f'(x)`, both elementwise on fp32 arrays.
The backward kernels use `df` directly, so adding an activation is one entry here.

GPU kernels may evaluate the sigmoid inside silu and sigmoid through one hardware tanh
(`get_activation(name, tanh=...)`, σ(x) = ½ + ½·tanh(x/2)): PTX `tanh.approx.f32` is one
special-function (MUFU) instruction where 1 / (1 + e^-x) takes two (ex2 and rcp), and the
MUFU units, 16 results per clock per SM on H100 against 4096 bf16 tensor-core FLOPs, bound an
attention kernel's elementwise phase. Its max relative error 2^-10.987 (PTX ISA) bounds the
absolute error of σ by 2.5e-4, so kernels use it for 16-bit inputs only (`kernel_tanh`),
whose P / dS tiles are rounded to 16 bits before their MMAs anyway. gelu_tanh keeps the exact
tanh: its derivative's 1 - tanh² cancels, so a tanh off by 2^-11 could be off by ~100% there.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

Fn = Callable[[jax.Array], jax.Array]

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
LEAKY_SLOPE = 0.01
HARDSWISH_KNEE = 3.0  # hardswish(x) = x·clip(x + 3, 0, 6) / 6: 0 below -3, x above 3


def _silu(x, sigmoid: Fn = jax.nn.sigmoid):
    return x * sigmoid(x)


def _dsilu(x, sigmoid: Fn = jax.nn.sigmoid):
    s = sigmoid(x)
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


def _sigmoid(x, sigmoid: Fn = jax.nn.sigmoid):
    return sigmoid(x)


def _dsigmoid(x, sigmoid: Fn = jax.nn.sigmoid):
    s = sigmoid(x)
    return s * (1.0 - s)


def _identity(x):
    return x


def _didentity(x):
    return jnp.ones_like(x)


def _leaky_relu(x):
    return jnp.where(x > 0, x, LEAKY_SLOPE * x)


def _dleaky_relu(x):
    return jnp.where(x > 0, 1.0, LEAKY_SLOPE).astype(x.dtype)


def _hardswish(x):
    return x * jnp.clip(x + HARDSWISH_KNEE, 0.0, 2.0 * HARDSWISH_KNEE) / (2.0 * HARDSWISH_KNEE)


def _dhardswish(x):
    ramp = (2.0 * x + HARDSWISH_KNEE) / (2.0 * HARDSWISH_KNEE)
    return jnp.where(x < -HARDSWISH_KNEE, 0.0, jnp.where(x > HARDSWISH_KNEE, 1.0, ramp)).astype(
        x.dtype
    )


ACTIVATIONS: dict[str, tuple[Fn, Fn]] = {
    "silu": (_silu, _dsilu),
    "gelu": (_gelu, _dgelu),
    "gelu_tanh": (_gelu_tanh, _dgelu_tanh),
    "relu": (_relu, _drelu),
    "relu2": (_relu2, _drelu2),
    "sigmoid": (_sigmoid, _dsigmoid),
    "identity": (_identity, _didentity),
    "leaky_relu": (_leaky_relu, _dleaky_relu),
    "hardswish": (_hardswish, _dhardswish),
}


# The activations whose f and df take the sigmoid they use as a keyword.
SIGMOID_FAMILY = ("silu", "sigmoid")
# PTX ISA: maximum relative error of tanh.approx.f32.
TANH_APPROX_MAX_REL_ERROR = 2**-10.987


def get_activation(name: str, tanh: Fn | None = None) -> tuple[Fn, Fn]:
    """`(f, df)` for an activation name; raises ValueError listing the valid names.

    tanh: for the SIGMOID_FAMILY, evaluate σ with this tanh (σ(x) = ½ + ½·tanh(x/2)), e.g. a
    GPU's one-instruction approximation; None (and every other activation): exact formulas.
    """
    try:
        f, df = ACTIVATIONS[name]
    except (KeyError, TypeError):  # TypeError: an unhashable name, e.g. a list
        raise ValueError(
            f"unknown GDPA activation {name!r}; choose one of {sorted(ACTIVATIONS)}"
        ) from None
    if tanh is None or name not in SIGMOID_FAMILY:
        return f, df
    sigmoid = functools.partial(_sigmoid_via_tanh, tanh=tanh)
    return functools.partial(f, sigmoid=sigmoid), functools.partial(df, sigmoid=sigmoid)


def _sigmoid_via_tanh(x, tanh: Fn):
    return 0.5 * tanh(0.5 * x) + 0.5


def approximates_tanh(dtype) -> bool:
    """Whether GPU kernels evaluate the activations of `dtype` inputs through a hardware tanh:
    16-bit inputs yes, fp32 no (the exact formulas)."""
    return jnp.dtype(dtype).itemsize == 2


def kernel_tanh(activation: str, dtype, tanh: Fn) -> Fn | None:
    """The tanh a GPU kernel evaluates `activation` with (`get_activation`): `tanh` for the
    SIGMOID_FAMILY where `approximates_tanh(dtype)`, else None (the exact formulas)."""
    return tanh if activation in SIGMOID_FAMILY and approximates_tanh(dtype) else None
