"""Which device the kernels are built for: the attached one, or an ahead-of-time target.

Backend choice ("auto", "pallas") and interpret mode follow the target's platform. An AOT
compile for hardware that is not attached (e.g. a TPU topology from
`jax.experimental.topologies` on a CPU machine) sets the target with `compile_target`.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import jax

_TARGET: contextvars.ContextVar[Any] = contextvars.ContextVar("kernel_target", default=None)


@contextlib.contextmanager
def compile_target(device: Any) -> Iterator[None]:
    """Kernels traced inside target `device` (anything with .platform and .device_kind)."""
    token = _TARGET.set(device)
    try:
        yield
    finally:
        _TARGET.reset(token)


def target_device() -> Any:
    """The compile target set by `compile_target`, else the first attached device."""
    return _TARGET.get() or jax.devices()[0]


def target_platform() -> str:
    """ "tpu" | "gpu" | "cpu" of the target device (CUDA and ROCm devices report "gpu")."""
    platform = target_device().platform
    return "gpu" if platform in ("cuda", "rocm") else platform


def target_capability() -> int:
    """The target GPU's compute capability as Triton numbers it (`capability_number`)."""
    return capability_number(str(target_device().compute_capability))


def capability_number(compute_capability: str) -> int:
    """A CUDA compute capability as Triton's targets name it: "9.0" -> 90, "10.0" -> 100."""
    major, minor = compute_capability.split(".")
    return 10 * int(major) + int(minor)
