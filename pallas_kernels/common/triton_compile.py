"""Triton kernels compiled to cubin for a CUDA GPU generation on a machine without a GPU.

Triton's own compiler and its bundled ptxas build either a `TritonLaunch` (our Triton-language
kernels, for the launch's constexprs and pointer dtypes, with the 16-byte alignment jax-triton
specializes on) or a Pallas Triton kernel's TTIR (`gpu_lowering.triton_calls`; XLA compiles
that IR with its own Triton build, of another commit, so the cubin is this Triton's, not
necessarily XLA's). The cubin measured is the one each launch path runs: a Triton-language
kernel's is Triton's own (its ptxas flags, e.g. --regAllocOptLevel=2; registers and spills from
the `ptxas -v` log of that very assembly), a Pallas kernel's PTX is assembled with plain
`ptxas -v`, as XLA does. The disassembly gives the MMA loops' instruction mix (`sass.py`).
CI uses it to check that every tile-table row fits the shared memory of the generations it
serves, spills nothing inside its MMA loops and repeats no MMAs
(benchmarks/kernels/triton_cuda_resources.py).
A Triton-language kernel must be a JITFunction: TRITON_INTERPRET unset when triton was imported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pallas_kernels.common.gpu_lowering import TritonCall
from pallas_kernels.common.sass import LoopMix, disassemble, mma_loops
from pallas_kernels.common.triton_launch import TritonLaunch

# jnp dtype name -> Triton pointer element type.
_TRITON_TYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "int32": "i32"}


@dataclasses.dataclass(frozen=True)
class CudaBinary:
    """What Triton's compiler and ptxas produced for one launch: the kernel's resources."""

    name: str
    capability: int
    shared_bytes: int  # shared memory per program
    tensor_memory_columns: int  # Blackwell tensor memory (TMEM) columns; 0 before sm_100
    registers: int  # per thread
    spill_bytes: int  # spill stores + spill loads per thread
    cubin_bytes: int
    num_warps: int
    loops: tuple[LoopMix, ...]  # the MMA loops' instruction mixes (`sass.mma_loops`)


def compile_for_cuda(spec: TritonLaunch, capability: int) -> CudaBinary:
    """Compile `spec`'s kernel to cubin for `capability` (90: Hopper, 100: Blackwell) with
    Triton's compiler and bundled ptxas, no GPU needed, and read the registers and spills
    from `ptxas -v`. The kernel must be a JITFunction (TRITON_INTERPRET unset). Raises
    Triton's compile error (e.g. out of shared memory)."""
    import triton
    from triton.backends.compiler import GPUTarget

    names = spec.kernel.arg_names
    arrays = [*spec.inputs, *spec.out_types]
    pointers = [n for n in names if n not in spec.constexprs]
    if len(pointers) != len(arrays):
        raise ValueError(f"{spec.name}: {len(arrays)} arrays for pointer parameters {pointers}")
    types = {n: "*" + _TRITON_TYPES[a.dtype.name] for n, a in zip(pointers, arrays, strict=True)}
    signature = {n: types.get(n, "constexpr") for n in names}
    # jax-triton passes every buffer 16-byte aligned (XLA allocations): same specialization.
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in pointers}
    source = triton.compiler.ASTSource(spec.kernel, signature, spec.constexprs, attrs)
    with _ptxas_log() as log:
        compiled = triton.compile(
            source,
            target=GPUTarget("cuda", capability, 32),
            options=dict(num_warps=spec.num_warps, num_stages=spec.num_stages),
        )
    resources = _parse_ptxas_log(log.getvalue())
    return _binary(compiled, capability, resources, compiled.asm["cubin"])


def compile_ttir_for_cuda(call: TritonCall, capability: int) -> CudaBinary:
    """Compile a Pallas Triton kernel's TTIR to cubin for `capability` with its warps and
    stages, as `compile_for_cuda` does a launch. Raises Triton's compile error.

    `triton.compile` starts an IR file after its own stage, so the TTIR passes (canonicalize,
    combine: `acc + dot(a, b, 0)` into `dot(a, b, acc)`, CSE, ...) run here first, as they run
    on a kernel's own TTIR (and in XLA's Triton pipeline)."""
    import triton
    from triton._C.libtriton import ir
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend

    target = GPUTarget("cuda", capability, 32)
    backend = make_backend(target)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / f"{call.name}.ttir"  # the suffix tells Triton the IR's stage
        source.write_text(call.ttir)
        context = ir.context()
        ir.load_dialects(context)
        backend.load_dialects(context)
        module = ir.parse_mlir_module(str(source), context)
        module.context = context  # as triton.compile's IRSource sets it
        source.write_text(str(backend.make_ttir(module, {}, None, capability)))
        with _assembled_as_xla_does() as resources:
            compiled = triton.compile(
                str(source),
                target=target,
                options=dict(num_warps=call.num_warps, num_stages=call.num_stages),
            )
        return _binary(compiled, capability, resources[0], compiled.asm["cubin"])


@contextlib.contextmanager
def _assembled_as_xla_does() -> Iterator[list[tuple[int, int]]]:
    """`triton.compile` with its cubin stage replaced by plain `ptxas -v` (XLA assembles a
    Pallas kernel's PTX itself, without Triton's extra ptxas flags): the PTX is assembled once,
    and the (registers, spill bytes) of that cubin are appended to the list yielded."""
    from triton import knobs

    resources: list[tuple[int, int]] = []

    def hook(backend=None, stages=None, options=None, language=None, capability=None):
        if backend is None:  # triton.compile asks for a cache-key suffix first
            return "plain-ptxas", ""

        def assemble(ptx: str, metadata: dict) -> bytes:
            with tempfile.TemporaryDirectory() as tmp:
                cubin = Path(tmp) / "kernel.cubin"
                resources.append(ptxas_resources(ptx, capability, cubin))
                return cubin.read_bytes()

        stages["cubin"] = assemble

    with knobs.runtime.scope(), knobs.compilation.scope():
        knobs.runtime.add_stages_inspection_hook = hook
        knobs.compilation.always_compile = True  # a cache hit would skip the assembly
        yield resources


@contextlib.contextmanager
def _ptxas_log() -> Iterator[io.StringIO]:
    """The `ptxas -v` log of the cubin `triton.compile` builds inside, as Triton prints it
    (TRITON_DUMP_PTXAS_LOG; compiled even where Triton's cache has the kernel, so the log is
    always there): the resources of that very cubin, without assembling it a second time."""
    from triton import knobs

    log = io.StringIO()
    with knobs.nvidia.scope(), knobs.compilation.scope(), contextlib.redirect_stdout(log):
        knobs.nvidia.dump_ptxas_log = True
        knobs.compilation.always_compile = True
        yield log


def _binary(compiled, capability: int, resources: tuple[int, int], cubin: bytes) -> CudaBinary:
    """A `triton.compile` result's metadata with the (registers, spill bytes) and MMA loops of
    `cubin`, the binary its launch path runs (Triton's own, or XLA's assembly of its PTX)."""
    from triton.backends.nvidia.compiler import get_ptxas

    registers, spills = resources
    nvdisasm = str(Path(get_ptxas(capability).path).with_name("nvdisasm"))
    sass = disassemble(cubin, nvdisasm)
    return CudaBinary(
        name=compiled.name,
        capability=capability,
        shared_bytes=compiled.metadata.shared,
        tensor_memory_columns=compiled.metadata.tmem_size or 0,
        registers=registers,
        spill_bytes=spills,
        cubin_bytes=len(cubin),
        num_warps=compiled.metadata.num_warps,
        loops=mma_loops(sass, compiled.metadata.num_warps),
    )


def ptxas_resources(ptx: str, capability: int, cubin: Path | None = None) -> tuple[int, int]:
    """(registers per thread, spill store + load bytes) of PTX assembled by Triton's ptxas for
    `capability` in verbose mode; the cubin is written to `cubin` if given."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        log = subprocess.run(
            [
                get_ptxas(capability).path,
                "-v",
                f"--gpu-name={sm_arch_from_capability(capability)}",
                str(src),
                "-o",
                str(cubin or src.with_suffix(".cubin")),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stderr
    return _parse_ptxas_log(log)


def _parse_ptxas_log(log: str) -> tuple[int, int]:
    """(registers per thread, spill store + load bytes) from a `ptxas -v` log of one kernel."""
    registers = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if registers is None or spills is None:
        raise RuntimeError(f"unexpected ptxas -v output:\n{log}")
    return int(registers[1]), int(spills[1]) + int(spills[2])
