"""Static GPU resources of our Triton kernels (GDPA, SWA) for every GPU tile row.

    python -m benchmarks.kernels.triton_cuda_resources \
        --out benchmarks/results/triton_cuda_resources.json

No GPU needed: Triton's compiler and bundled ptxas build each kernel (forward, dK/dV, dQ) to
cubin for the GPU generations a row serves ("NVIDIA H" rows: sm_90; the generic rows: sm_80
and sm_100) at that row's largest head dim, and ptxas reports registers and spills of the cubin
the launch path runs (`triton_compile`). A launch fits when no MMA loop loads or stores local
memory (spill traffic per block; a register spilled once around the loops costs nothing) and
its shared memory is within the generation's per-block limit; a row that does not fit fails
at launch (shared memory) or runs slowly (spills). Each MMA loop of the disassembly
(`common/sass.py`: the loop over wholly visible blocks, the masked one) is measured per score
of its tile: SASS and MUFU instructions a thread issues and the fraction of the executed MMA
work the tile needs (below 1: warpgroups repeat MMAs). The rows are
`gdpa.tuning`'s (GDPA, both Tkv regimes) and `swa.tuning`'s GPU rows (SWA at w = 128, causal).
Two implementations ("impl"): the `jax_triton` Triton-language kernels (GDPA and SWA), and the
Pallas Triton GDPA kernels (`pallas_triton`, the GPU "auto" path), which share the GDPA rows.
Those are lowered for a GPU of the row's generation (`gpu_lowering.lowering_for`) and their
TTIR compiled by this Triton; XLA compiles the same IR with its own Triton build, so their
SASS is this Triton's reading of it. Run with TRITON_INTERPRET unset.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Iterator

import jax
import jax.numpy as jnp

from kunlun_jax.provenance import environment
from pallas_kernels.common.cuda_limits import SHARED_LIMIT_BYTES, sm_occupancy
from pallas_kernels.common.gpu_lowering import (
    A100,
    B200,
    H100,
    GpuTarget,
    TritonCall,
    lowering_for,
    triton_calls,
)
from pallas_kernels.common.tiles import BlockSizes
from pallas_kernels.common.triton_compile import (
    CudaBinary,
    compile_for_cuda,
    compile_ttir_for_cuda,
)
from pallas_kernels.common.triton_launch import TritonLaunch
from pallas_kernels.gdpa import blockwise as gdpa_blockwise
from pallas_kernels.gdpa import jax_triton_op as gdpa_op
from pallas_kernels.gdpa import tuning as gdpa_tuning
from pallas_kernels.gdpa.api import gdpa_pallas
from pallas_kernels.gdpa.blockwise import GdpaSpec
from pallas_kernels.swa import blockwise as swa_blockwise
from pallas_kernels.swa import jax_triton_op as swa_op
from pallas_kernels.swa import tuning as swa_tuning

# Device-kind prefix -> the generations a row serves, as GPUs the Pallas kernels lower for.
ROW_TARGETS: dict[str, tuple[GpuTarget, ...]] = {"NVIDIA H": (H100,), "": (A100, B200)}
ROW_CAPABILITIES = {prefix: tuple(t.capability for t in ts) for prefix, ts in ROW_TARGETS.items()}
IMPLS = ("jax_triton", "pallas_triton")
BATCH, HEADS, TQ, SWA_WINDOW = 4, 8, 4096, 128
TKV = {"short": 64, "long": 4096}


@dataclasses.dataclass(frozen=True)
class Row:
    """One GPU tile row: which op, device-kind prefix, largest head dim, regime, tiles."""

    op: str  # "gdpa" | "swa"
    prefix: str
    head_dim: int
    regime: str  # "short" | "long" (Tkv); SWA rows are "long"
    sizes: BlockSizes


def gpu_rows() -> list[Row]:
    """Every GPU row of the GDPA and SWA tile tables."""
    rows = [Row("gdpa", p, d, reg, s) for p, d, reg, s in gdpa_tuning.GPU_ROWS]
    return rows + [Row("swa", p, d, "long", s) for p, d, s in swa_tuning.GPU_ROWS]


def gdpa_launches(
    spec: GdpaSpec, sizes: BlockSizes, batch: int, heads: int, tq: int, tkv: int, head_dim: int
) -> dict[str, TritonLaunch]:
    """The GDPA forward, dK/dV and dQ launches for bf16 q [B, Tq, H, D], k / v [B, Tkv, H, D]."""
    q = jax.ShapeDtypeStruct((batch, tq, heads, head_dim), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((batch, tkv, heads, head_dim), jnp.bfloat16)
    lens = jax.ShapeDtypeStruct((batch,), jnp.int32)
    cfg = gdpa_op.JaxTritonConfig(spec, sizes, "jax_triton")
    return {
        "fwd": gdpa_op.forward_launch(cfg, q, kv, kv, lens, lens),
        "dkdv": gdpa_op.dkdv_launch(cfg, q, kv, kv, q, lens, lens),
        "dq": gdpa_op.dq_launch(cfg, q, kv, kv, q, lens, lens),
    }


def why_not_fit(binary: CudaBinary) -> str | None:
    """None if a compiled launch fits its generation (no spill traffic inside its MMA loops,
    shared memory within the per-block limit; generations outside SHARED_LIMIT_BYTES are not
    checked for it), else why."""
    if spills := [loop.local_memory for loop in binary.loops if loop.local_memory]:
        return (
            f"{binary.name} spills inside its MMA loops ({spills} local-memory instructions an "
            f"iteration; {binary.spill_bytes} spill bytes in all)"
        )
    limit = SHARED_LIMIT_BYTES.get(binary.capability)
    if limit is not None and binary.shared_bytes > limit:
        return f"{binary.name} needs {binary.shared_bytes} > {limit} bytes of shared memory"
    return None


def row_launches(row: Row, activation: str) -> dict[str, TritonLaunch]:
    """The row's forward, dK/dV and dQ launches at its production shape, bf16."""
    tkv = TKV[row.regime]
    if row.op == "gdpa":
        spec = GdpaSpec(activation, row.head_dim**-0.5, 1 / tkv, None, row.regime == "long")
        return gdpa_launches(spec, row.sizes, BATCH, HEADS, TQ, tkv, row.head_dim)
    q = jax.ShapeDtypeStruct((BATCH, TQ, HEADS, row.head_dim), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((BATCH, tkv, HEADS, row.head_dim), jnp.bfloat16)
    lens = jax.ShapeDtypeStruct((BATCH,), jnp.int32)
    cfg = swa_op.SwaTritonConfig(row.head_dim**-0.5, SWA_WINDOW, True, row.sizes, "jax_triton")
    stats = jax.ShapeDtypeStruct((BATCH, HEADS, TQ), jnp.float32)
    args = (q, kv, kv, q, stats, stats, lens, lens)
    return {
        "fwd": swa_op.forward_launch(cfg, q, kv, kv, lens, lens),
        "dkdv": swa_op.dkdv_launch(cfg, *args),
        "dq": swa_op.dq_launch(cfg, *args),
    }


def pallas_gdpa_calls(row: Row, activation: str, target: GpuTarget) -> list[TritonCall]:
    """The row's Pallas Triton GDPA kernels (forward, dK/dV, dQ) as lowered for `target` at the
    row's production shape, bf16 (`row_launches`' shapes and mask), with the row's tiles."""
    tkv = TKV[row.regime]

    def loss(q, k, v, lengths):
        o = gdpa_pallas(
            q,
            k,
            v,
            impl="pallas_triton",
            platform="gpu",
            device_kind=target.device_kind,
            interpret=False,
            activation=activation,
            qk_scale=row.head_dim**-0.5,
            out_scale=1 / tkv,
            q_lengths=lengths,
            kv_lengths=lengths,
            window=None,
            causal=row.regime == "long",
            block_q=None,
            block_kv=None,
        )
        return o.astype(jnp.float32).sum()

    q = jax.ShapeDtypeStruct((BATCH, TQ, HEADS, row.head_dim), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((BATCH, tkv, HEADS, row.head_dim), jnp.bfloat16)
    lens = jax.ShapeDtypeStruct((BATCH,), jnp.int32)
    with lowering_for(target), gdpa_tuning.override_block_sizes(row.sizes):
        grad = jax.value_and_grad(loss, argnums=(0, 1, 2))
        lowered = jax.jit(grad).trace(q, kv, kv, lens).lower(lowering_platforms=("cuda",))
    return triton_calls(lowered)


def row_binaries(row: Row, activation: str, impl: str) -> Iterator[tuple]:
    """(capability, kernel, tile (rows, cols, D), binary) per generation and kernel of a row."""
    targets = ROW_TARGETS[row.prefix]
    if impl == "jax_triton":
        launches = row_launches(row, activation)
        for target in targets:
            for kernel, launch in launches.items():
                c = launch.constexprs
                tile = (c["BLOCK_Q"], c["BLOCK_KV"], c["BLOCK_D"])
                yield target.capability, kernel, tile, compile_for_cuda(launch, target.capability)
        return
    for target in targets:
        for call in pallas_gdpa_calls(row, activation, target):
            kernel = call.name.split("_")[1]  # gdpa_<kernel>_triton
            tile = (*row.sizes.tiles(backward=kernel != "fwd"), row.head_dim)
            yield target.capability, kernel, tile, compile_ttir_for_cuda(call, target.capability)


def row_resources(row: Row, activation: str, impl: str = "jax_triton") -> list[dict]:
    """One record per (generation, kernel) of a row's `impl` kernels."""
    records = []
    for capability, kernel, tile, binary in row_binaries(row, activation, impl):
        records.append(
            dict(
                impl=impl,
                op=row.op,
                device_prefix=row.prefix,
                regime=row.regime,
                head_dim=row.head_dim,
                sizes=dataclasses.asdict(row.sizes),
                activation=activation if row.op == "gdpa" else None,
                kernel=kernel,
                **dataclasses.asdict(binary),
                loops_per_score=loops_per_score(row.op, kernel, tile, binary),
                programs_per_sm=programs_per_sm(binary),
                shared_limit_bytes=SHARED_LIMIT_BYTES[capability],
                fits=why_not_fit(binary) is None,
            )
        )
    return records


def loops_per_score(op: str, kernel: str, tile: tuple[int, int, int], binary: CudaBinary) -> list:
    """Per MMA loop (`sass.mma_loops`), fewest instructions first (the loop over wholly visible
    blocks, then masked ones), per score of the (rows, cols, D) tile and per thread: SASS
    instructions and MUFU instructions; the tile's own MMA FLOPs over those the loop executes
    (below 1: warpgroups repeat MMAs; None on Blackwell, whose tcgen05 shapes are not in the
    opcodes); and the local-memory (spill) instructions of an iteration."""
    rows, cols, dim = tile
    scores_per_thread = rows * cols / (32 * binary.num_warps)
    traffic = (gdpa_blockwise if op == "gdpa" else swa_blockwise).KERNEL_TRAFFIC
    tile_flops = traffic[kernel][0] * 2 * rows * cols * dim
    loops = [
        dict(
            instructions=round(loop.instructions / scores_per_thread, 2),
            mufu=round(loop.mufu / scores_per_thread, 3),
            mma_useful_fraction=None
            if loop.mma_flops is None
            else round(tile_flops / loop.mma_flops, 3),
            local_memory=loop.local_memory,  # an iteration, not per score
        )
        for loop in binary.loops
    ]
    return sorted(loops, key=lambda loop: loop["instructions"])


def _row_records(row: Row, activation: str, impls: list[str]) -> list[dict]:
    """The records of every implementation in `impls` the row serves (SWA: jax_triton)."""
    served = impls if row.op == "gdpa" else [i for i in impls if i == "jax_triton"]
    return [r for impl in served for r in row_resources(row, activation, impl)]


def programs_per_sm(binary: CudaBinary) -> int:
    """Programs of `binary` one SM holds at once (`sm_occupancy`)."""
    threads = 32 * binary.num_warps
    return sm_occupancy(binary.capability, threads, binary.registers, binary.shared_bytes)


def compiler_versions() -> dict:
    """Triton and the ptxas it bundles (per generation: Blackwell uses its own ptxas)."""
    import triton
    from triton.backends.nvidia.compiler import get_ptxas_version

    ptxas = {f"sm_{c}": get_ptxas_version(c).strip().splitlines()[-1] for c in SHARED_LIMIT_BYTES}
    return dict(triton=triton.__version__, ptxas=ptxas)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON output path")
    parser.add_argument(
        "--activations", nargs="+", default=["silu", "gelu"], help="GDPA activations"
    )
    parser.add_argument(
        "--impls", nargs="+", default=list(IMPLS), choices=IMPLS, help="kernel implementations"
    )
    args = parser.parse_args(argv)
    records = []
    for row in gpu_rows():
        for activation in args.activations if row.op == "gdpa" else args.activations[:1]:
            for r in _row_records(row, activation, args.impls):
                records.append(r)
                print(
                    f"{r['impl']:13s} {r['op']:4s} {row.prefix or 'any GPU':9s} "
                    f"D{row.head_dim:<4d} {row.regime} "
                    f"{r['activation'] or '':5s} sm_{r['capability']} {r['kernel']:4s} shared "
                    f"{r['shared_bytes'] // 1024:4d} KiB regs {r['registers']:3d} spills "
                    f"{r['spill_bytes']:5d} instructions/score "
                    f"{'/'.join(str(loop['instructions']) for loop in r['loops_per_score'])} "
                    f"{'ok' if r['fits'] else 'DOES NOT FIT'}"
                )
    report = dict(
        environment=environment(),
        compiler=compiler_versions(),
        kind="compiled_static",
        shapes=dict(
            batch=BATCH, heads=HEADS, tq=TQ, tkv=TKV, swa_window=SWA_WINDOW, dtype="bfloat16"
        ),
        results=records,
    )
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
