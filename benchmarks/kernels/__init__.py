"""Kernel benchmarks and compile reports, run as modules: `python -m benchmarks.kernels.<op>`.

Importing the package chooses the platforms before jax starts a backend, as the CLI does: with
libtpu installed (for deviceless TPU compiles) and no TPU attached, jax would otherwise print
libtpu's initialization error trace. An explicit JAX_PLATFORMS wins.
"""

from kunlun_jax.platform import prefer_present_accelerators

prefer_present_accelerators()
