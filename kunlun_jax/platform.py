"""Platform selection done before jax initializes its backends."""

from __future__ import annotations

import glob
import os


def prefer_present_accelerators() -> None:
    """Keeps libtpu from probing for a TPU on machines that have none.

    libtpu is installed for deviceless TPU compiles; on a machine without TPU device nodes it
    would print an initialization error trace before falling back. With JAX_PLATFORMS unset and
    no TPU present, ask for "cuda,cpu": a GPU is used when there is one, else the CPU, silently.
    An explicit JAX_PLATFORMS always wins.
    """
    if "JAX_PLATFORMS" in os.environ:
        return
    if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
        return
    os.environ["JAX_PLATFORMS"] = "cuda,cpu"
