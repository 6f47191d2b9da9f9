"""Lowering Pallas GPU kernels for a CUDA GPU that is not attached, and the Triton IR it holds.

`lowering_for(target)`: code traced inside lowers (`.lower(lowering_platforms=("cuda",))`) as
for `target`. Pallas Triton and Mosaic GPU read the device from the abstract mesh; our backend
choice reads `compile_target`.
`triton_calls(lowered)`: each Pallas Triton kernel of a lowered program as XLA receives it.
That is the Triton IR (TTIR) module with the kernel's warps, stages and grid, which XLA's
Triton turns into PTX. Printed as text, the module is what Triton's own compiler reads
(`triton_compile.compile_ttir_for_cuda`).
`jax_triton_ptx_targets(lowered)`: the PTX target of each Triton-language kernel that
jax-triton compiled while lowering (backend "jax_triton").
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import zlib
from collections.abc import Iterator

import jax
from jax.sharding import AbstractMesh

from pallas_kernels.common.target import capability_number, compile_target

TRITON_CALL = "__gpu$xla.gpu.triton"  # custom call target of a Pallas Triton kernel
# and of a jax-triton kernel: FFI (jax-triton 0.4) or legacy (0.3)
JAX_TRITON_CALLS = ("triton_kernel_call_ffi", "triton_kernel_call")


@dataclasses.dataclass(frozen=True)
class GpuTarget:
    """A CUDA GPU that is not attached, with what the lowerings read of a device (hashable, as
    an AbstractMesh device must be)."""

    device_kind: str
    compute_capability: str
    num_cores: int
    platform: str = "gpu"

    @property
    def core_count(self) -> int:  # tokamax's name for the SM count
        return self.num_cores

    @property
    def capability(self) -> int:
        """The compute capability as Triton's targets name it: "9.0" -> 90."""
        return capability_number(self.compute_capability)

    def _repr(self) -> str:
        return self.device_kind


A100 = GpuTarget("NVIDIA A100-SXM4-80GB", "8.0", 108)
H100 = GpuTarget("NVIDIA H100 80GB HBM3", "9.0", 132)
B200 = GpuTarget("NVIDIA B200", "10.0", 148)


@contextlib.contextmanager
def lowering_for(target: GpuTarget, mesh: jax.sharding.Mesh | None = None) -> Iterator[None]:
    """Trace and lower for `target`: an abstract mesh on its device (matching `mesh`'s axes,
    else one device) and `compile_target(target)`."""
    axes = (mesh.axis_sizes, mesh.axis_names, mesh.axis_types) if mesh else ((1,), ("x",), None)
    abstract = AbstractMesh(axes[0], axes[1], axis_types=axes[2], abstract_device=target)
    with compile_target(target), jax.sharding.use_abstract_mesh(abstract):
        yield


@dataclasses.dataclass(frozen=True)
class TritonCall:
    """One Pallas Triton kernel of a lowered program: its TTIR module as text and launch."""

    name: str
    ttir: str
    num_warps: int
    num_stages: int
    grid: tuple[int, int, int]


def triton_calls(lowered: jax.stages.Lowered) -> list[TritonCall]:
    """The Pallas Triton kernels of `lowered` (a program lowered for CUDA), in program order.

    Pallas stores each kernel's TTIR as MLIR bytecode in the custom call's backend config;
    it is parsed in a context with jaxlib's Triton dialect and printed as text."""
    from jax._src.interpreters import mlir
    from jax._src.lib import triton
    from jax._src.lib.mlir import ir

    context = mlir.make_ir_context()
    triton.dialect.register_dialect(context)
    calls = []
    for op in _custom_calls(lowered.compiler_ir("stablehlo").operation, TRITON_CALL):
        config = ir.DictAttr(op.attributes["mhlo.backend_config"])
        with context:
            ttir = str(ir.Module.parse(ir.StringAttr(config["ir"]).value_bytes))

        def integer(key: str, config=config) -> int:
            return ir.IntegerAttr(config[key]).value

        calls.append(
            TritonCall(
                name=ir.StringAttr(config["name"]).value,
                ttir=ttir,
                num_warps=integer("num_warps"),
                num_stages=integer("num_stages"),
                grid=(integer("grid_x"), integer("grid_y"), integer("grid_z")),
            )
        )
    return calls


def jax_triton_ptx_targets(lowered: jax.stages.Lowered) -> list[str | None]:
    """The PTX `.target` (e.g. "sm_90a") of each jax-triton kernel of `lowered` (a program
    lowered for CUDA), in program order (a program holds calls of one jax-triton version); None
    where the PTX names none. jax-triton compiles
    the kernel at lowering time and stores it, PTX included, zlib-compressed in the custom
    call's backend config: an FFI call's `opaque` (jax-triton 0.4), or the legacy call's
    string (0.3)."""
    from jax._src.lib.mlir import ir

    module, targets = lowered.compiler_ir("stablehlo").operation, []
    for call in JAX_TRITON_CALLS:
        for op in _custom_calls(module, call):
            if call.endswith("_ffi"):
                config = ir.DictAttr(op.attributes["mhlo.backend_config"])["opaque"]
            else:
                config = op.attributes["backend_config"]
            found = re.search(
                rb"\.target (sm_\w+)", zlib.decompress(ir.StringAttr(config).value_bytes)
            )
            targets.append(found.group(1).decode() if found else None)
    return targets


def _custom_calls(op, target: str) -> Iterator:
    """The stablehlo.custom_call ops calling `target` nested anywhere in `op`."""
    from jax._src.lib.mlir import ir

    for region in op.regions:
        for block in region:
            for inner in block:
                is_call = inner.name == "stablehlo.custom_call"
                if is_call and ir.StringAttr(inner.attributes["call_target_name"]).value == target:
                    yield inner
                yield from _custom_calls(inner, target)
