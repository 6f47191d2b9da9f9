"""Platform selection done before jax initializes its backends."""

from __future__ import annotations

import glob
import math
import os

import jax

NO_TPU_PLATFORMS = "cuda,cpu"
# Cloud TPU accelerator-type prefix and TensorCores counted per chip, by topology chip name.
_ACCELERATOR_TYPES = {
    "v4": ("v4", 2),
    "v5e": ("v5litepod", 1),
    "v5p": ("v5p", 2),
    "v6e": ("v6e", 1),
}


def tpu_present() -> bool:
    """Whether this machine has TPU device nodes."""
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def set_platforms_unless_given(platforms: str) -> None:
    """Sets JAX_PLATFORMS to `platforms` unless the user set it. jax read the variable when it
    was imported, so its config is updated too (the environment is for child processes). Call
    it before anything initializes a backend."""
    if "JAX_PLATFORMS" in os.environ:
        return
    os.environ["JAX_PLATFORMS"] = platforms
    jax.config.update("jax_platforms", platforms)


def prefer_present_accelerators() -> None:
    """Keeps libtpu from probing for a TPU on machines that have none.

    libtpu is installed for deviceless TPU compiles; on a machine without TPU device nodes it
    would print an initialization error trace before falling back. With JAX_PLATFORMS unset and
    no TPU present, ask for "cuda,cpu": a GPU is used when there is one, else the CPU, silently.
    An explicit JAX_PLATFORMS always wins.
    """
    if not tpu_present():
        set_platforms_unless_given(NO_TPU_PLATFORMS)


def describe_absent_tpu(topology: str) -> None:
    """Tells libtpu, before it loads for a deviceless compile of `topology` (e.g. "v5p:4x4x4")
    on a machine with no TPU, the slice it would run on, so it does not print an initialization
    error trace about the missing TPU metadata. Values the user set are kept; nothing is set
    where a TPU is present. The compiled program is the same either way."""
    if tpu_present():
        return
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    chip, _, shape = topology.partition(":")
    if chip in _ACCELERATOR_TYPES and shape.replace("x", "").isdigit():
        prefix, cores_per_chip = _ACCELERATOR_TYPES[chip]
        chips = math.prod(int(n) for n in shape.split("x"))
        os.environ.setdefault("TPU_ACCELERATOR_TYPE", f"{prefix}-{chips * cores_per_chip}")
