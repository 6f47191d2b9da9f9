"""One launch of a Triton-language kernel, and the three ways this project runs one.

A `TritonLaunch` names the kernel, its grid, its input arrays (the kernel's leading pointer
parameters, in order), the outputs (the pointers after them) and its constexprs. The same
description is
- called on a CUDA GPU through `jax_triton.triton_call` (`launch(..., mode="jax_triton")`);
- run on the host by Triton's interpreter inside a `jax.pure_callback` (`mode="interpret"`:
  CPU tests; needs TRITON_INTERPRET=1 in the environment before triton is first imported,
  because `@triton.jit` picks the interpreter when the kernel is defined);
- compiled to cubin for a CUDA compute capability without a GPU (`triton_compile.py`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any

import jax
import numpy as np

from pallas_kernels.common.blocks import cdiv
from pallas_kernels.common.target import target_capability, target_device, target_platform
from pallas_kernels.common.tiles import BlockSizes, pow2_at_least

MODES = ("jax_triton", "interpret")


@dataclasses.dataclass(frozen=True)
class TritonLaunch:
    """kernel[grid](*inputs, *outputs, **constexprs) with outputs of `out_types`."""

    kernel: Any  # a triton JITFunction (or, under TRITON_INTERPRET=1, InterpretedFunction)
    grid: tuple[int, ...]
    inputs: tuple[jax.Array, ...]
    out_types: tuple[jax.ShapeDtypeStruct, ...]
    constexprs: dict[str, Any]
    num_warps: int = 4
    num_stages: int = 2
    name: str = ""


def attention_launch(
    kernel,
    op: str,
    kind: str,
    *,
    inputs: tuple,
    outputs_like: tuple,
    sizes: BlockSizes,
    window: int | None,
    causal: bool,
    splits: int = 1,
    **op_constexprs,
) -> TritonLaunch:
    """Launch of blocked attention kernel `kind` of `op` ("gdpa", "swa"): "fwd" and "dq" run
    over (query blocks, B·H) programs, "dkdv" over (key blocks, B·H); "fwd" takes the forward
    tiles of `sizes`, the others the backward ones. inputs start with q [B, Tq, H, D], k
    [B, Tkv, H, D] (jax arrays, or ShapeDtypeStructs for `compile_for_cuda`); one output per
    array of `outputs_like`, with its shape and dtype. Fills the constexprs every attention
    kernel takes (`common/triton_tiles.py`: T_Q, T_KV, H, D, BLOCK_D, BLOCK_Q, BLOCK_KV, WINDOW,
    CAUSAL, PRECISION, UNMASKED_LOOP) and adds `op_constexprs`. The third grid axis has
    `splits` programs (a "dkdv" kernel's query splits, `tuning.dkdv_q_splits`; 1 for every
    other kernel)."""
    q, k = inputs[0], inputs[1]
    batch, tq, heads, dim = q.shape
    fwd = kind == "fwd"
    block_q, block_kv = sizes.tiles(backward=not fwd)
    length, block = (k.shape[1], block_kv) if kind == "dkdv" else (tq, block_q)
    warps, stages = sizes.triton_options(backward=not fwd)
    constexprs = dict(
        T_Q=tq,
        T_KV=k.shape[1],
        H=heads,
        D=dim,
        BLOCK_D=max(16, pow2_at_least(dim)),
        BLOCK_Q=block_q,
        BLOCK_KV=block_kv,
        WINDOW=-1 if window is None else window,
        CAUSAL=causal,
        # fp32 inputs: true fp32 products (Triton would use TF32), as the references compute.
        PRECISION="ieee" if q.dtype.name == "float32" else "tf32",
        UNMASKED_LOOP=sizes.unmasked_loop,
    )
    return TritonLaunch(
        kernel,
        grid=(cdiv(length, block), batch * heads, splits),
        inputs=tuple(inputs),
        out_types=tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in outputs_like),
        constexprs=constexprs | op_constexprs,
        num_warps=warps,
        num_stages=stages,
        name=f"{op}_{kind}_jax_triton",
    )


def triton_target(backend: str) -> tuple[str, str]:
    """(device kind for the tile lookup, launch mode) of the kernel target (`common.target`):
    a GPU's kind and "jax_triton", else "" and "interpret". First an ImportError naming the fix
    when the `triton` package is missing (an optional dependency: the `gpu` extra on GPU
    machines, the `test` extra on CPU)."""
    try:
        import triton  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"backend={backend!r} runs Triton-language kernels and needs the triton package: "
            "pip install 'kunlun-jax[gpu]' on a GPU machine (jax-triton + triton), or "
            "triton==3.9.0 on CPU (Triton's interpreter, TRITON_INTERPRET=1)"
        ) from e
    if target_platform() == "gpu":
        return target_device().device_kind, "jax_triton"
    return "", "interpret"


def launch(spec: TritonLaunch, mode: str) -> tuple[jax.Array, ...]:
    """Run `spec`; mode: "jax_triton" (CUDA GPU) or "interpret" (host, see module docstring)."""
    if mode == "jax_triton":
        return tuple(_call_jax_triton(spec))
    if mode == "interpret":
        return _call_interpreter(spec)
    raise ValueError(f"unknown Triton launch mode {mode!r}; choose one of {MODES}")


def _call_jax_triton(spec: TritonLaunch):
    """`jax_triton.triton_call` of `spec`, compiled for the target GPU's compute capability
    (jax-triton's default reads GPU 0's, which an ahead-of-time target does not have). jax-triton
    0.3 (for triton 3.3-3.6) names the outputs `out_shape`, 0.4 (triton >= 3.7) `out_type`."""
    try:
        import jax_triton  # optional: the `gpu` extra, and the `test` extra for AOT lowerings
    except ImportError as e:
        raise ImportError(
            "the Triton-language kernels run on a GPU through jax-triton "
            "(pip install 'kunlun-jax[gpu]'); on CPU they run in Triton's interpreter "
            f"(TRITON_INTERPRET=1): {e}"
        ) from e
    outputs = (
        "out_type"
        if "out_type" in inspect.signature(jax_triton.triton_call).parameters
        else "out_shape"
    )
    return jax_triton.triton_call(
        *spec.inputs,
        kernel=spec.kernel,
        **{outputs: list(spec.out_types)},
        compute_capability=target_capability(),
        grid=spec.grid,
        name=spec.name,
        num_warps=spec.num_warps,
        num_stages=spec.num_stages,
        **spec.constexprs,
    )


def _call_interpreter(spec: TritonLaunch) -> tuple[jax.Array, ...]:
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(spec.kernel, InterpretedFunction):
        raise RuntimeError(
            f"Triton kernel {spec.name or spec.kernel} was not defined in interpreter mode: set "
            "TRITON_INTERPRET=1 in the environment before triton is first imported"
        )
    _patch_interpreter_bf16_dot()

    def host(*arrays):
        outputs = [np.zeros(t.shape, t.dtype) for t in spec.out_types]
        buffers = [_HostBuffer(np.ascontiguousarray(a)) for a in arrays] + [
            _HostBuffer(o) for o in outputs
        ]
        spec.kernel[spec.grid](*buffers, **spec.constexprs)
        return tuple(outputs)

    return tuple(jax.pure_callback(host, spec.out_types, *spec.inputs))


class _HostBuffer:
    """A numpy array as the torch-like tensor Triton's interpreter reads and writes through
    raw pointers: data_ptr / dtype / storage plumbing, all referring to the array itself."""

    def __init__(self, array: np.ndarray):
        import triton.language as tl

        self.array = array
        self.dtype = getattr(tl, array.dtype.name)  # tl.bfloat16, tl.float32, tl.int32, ...

    def data_ptr(self) -> int:
        return self.array.ctypes.data

    def untyped_storage(self) -> _HostBuffer:
        return self

    def cpu(self) -> _HostBuffer:
        return self

    def new_empty(self, *args, **kwargs) -> _HostBuffer:
        return _HostBuffer(self.array)

    def set_(self, storage: _HostBuffer, *args) -> _HostBuffer:
        self.array = storage.array
        return self

    def storage_offset(self) -> int:
        return 0

    def size(self) -> tuple[int, ...]:
        return self.array.shape

    def stride(self, *args) -> tuple[int, ...]:
        return tuple(s // self.array.itemsize for s in self.array.strides)

    def copy_(self, other: _HostBuffer) -> None:
        if other.array is not self.array:
            np.copyto(self.array, other.array)


@functools.cache
def _patch_interpreter_bf16_dot() -> None:
    """Triton 3.9's interpreter keeps bf16 tiles as their uint16 bits and feeds those to
    np.matmul, so a bf16 `tl.dot` returns garbage there (fp16 / fp32 are right). Widen bf16
    operands to fp32 first: exact, and what the tensor cores do (fp32 accumulation)."""
    import triton.language as tl
    from triton.runtime import interpreter

    builder = interpreter.interpreter_builder
    create_dot = builder.create_dot

    def widen(x):
        if x.dtype.scalar != tl.bfloat16:
            return x
        data = interpreter._convert_float(x.data, tl.bfloat16, tl.float32, None)
        return interpreter.TensorHandle(data.view(np.float32), tl.float32)

    def dot(a, b, d, input_precision, max_num_imprecise_acc):
        return create_dot(widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    builder.create_dot = dot
