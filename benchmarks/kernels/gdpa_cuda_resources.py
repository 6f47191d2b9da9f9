"""Static GPU resources of the Triton-language GDPA kernels for every GPU row of the tile table.

    python -m benchmarks.kernels.gdpa_cuda_resources \
        --out benchmarks/results/gdpa_cuda_resources.json

No GPU needed: Triton's compiler and bundled ptxas build each kernel (forward, dK/dV, dQ) to
cubin for the GPU generations a row serves ("NVIDIA H" rows: sm_90; the generic rows: sm_80
and sm_100) at that row's largest head dim, and ptxas reports registers and spills. A launch
fits when it spills nothing and its shared memory is within the generation's per-block limit;
a row that does not fit fails at launch (shared memory) or runs slowly (spills). These are the
`jax_triton` kernels' numbers; the Pallas Triton kernels share the tiles but are compiled by
jaxlib's own Triton, which needs a GPU. Run with TRITON_INTERPRET unset.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import jax
import jax.numpy as jnp

from kunlun_jax.provenance import environment
from pallas_kernels.common.triton_launch import compile_for_cuda
from pallas_kernels.gdpa.blockwise import GdpaSpec
from pallas_kernels.gdpa.jax_triton_op import (
    JaxTritonConfig,
    dkdv_launch,
    dq_launch,
    forward_launch,
)
from pallas_kernels.gdpa.tuning import GPU_ROWS

# Opt-in shared memory per thread block (CUDA programming guide, compute capabilities table).
SHARED_LIMIT_BYTES = {80: 163 * 1024, 90: 227 * 1024, 100: 227 * 1024}
ROW_CAPABILITIES = {"NVIDIA H": (90,), "": (80, 100)}  # device-kind prefix -> generations
BATCH, HEADS, TQ = 4, 8, 4096
TKV = {"short": 64, "long": 4096}


def row_resources(prefix: str, max_dim: int, regime: str, sizes, activation: str) -> list[dict]:
    """One record per (generation, kernel) of a tile-table row, bf16 inputs."""
    cfg = JaxTritonConfig(
        GdpaSpec(activation, max_dim**-0.5, 1.0 / TKV[regime], None, regime == "long"),
        sizes,
        "jax_triton",
    )
    q = jax.ShapeDtypeStruct((BATCH, TQ, HEADS, max_dim), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((BATCH, TKV[regime], HEADS, max_dim), jnp.bfloat16)
    lens = jax.ShapeDtypeStruct((BATCH,), jnp.int32)
    launches = {
        "fwd": forward_launch(cfg, q, kv, kv, lens, lens),
        "dkdv": dkdv_launch(cfg, q, kv, kv, q, lens, lens),
        "dq": dq_launch(cfg, q, kv, kv, q, lens, lens),
    }
    records = []
    for capability in ROW_CAPABILITIES[prefix]:
        for kernel, launch in launches.items():
            binary = compile_for_cuda(launch, capability)
            limit = SHARED_LIMIT_BYTES[capability]
            records.append(
                dict(
                    device_prefix=prefix,
                    regime=regime,
                    head_dim=max_dim,
                    sizes=dataclasses.asdict(sizes),
                    activation=activation,
                    kernel=kernel,
                    **dataclasses.asdict(binary),
                    shared_limit_bytes=limit,
                    fits=binary.spill_bytes == 0 and binary.shared_bytes <= limit,
                )
            )
    return records


def compiler_versions() -> dict:
    """Triton and the ptxas it bundles (per generation: Blackwell uses its own ptxas)."""
    import triton
    from triton.backends.nvidia.compiler import get_ptxas_version

    ptxas = {f"sm_{c}": get_ptxas_version(c).strip().splitlines()[-1] for c in SHARED_LIMIT_BYTES}
    return dict(triton=triton.__version__, ptxas=ptxas)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON output path")
    parser.add_argument("--activations", nargs="+", default=["silu", "gelu"])
    args = parser.parse_args(argv)
    records = []
    for prefix, max_dim, regime, sizes in GPU_ROWS:
        for activation in args.activations:
            for r in row_resources(prefix, max_dim, regime, sizes, activation):
                records.append(r)
                print(
                    f"{prefix or 'any GPU':9s} D{max_dim:<4d} {regime:5s} {activation:5s} "
                    f"sm_{r['capability']} {r['kernel']:4s} shared {r['shared_bytes'] // 1024:4d} "
                    f"KiB regs {r['registers']:3d} spills {r['spill_bytes']:5d} "
                    f"{'ok' if r['fits'] else 'DOES NOT FIT'}"
                )
    report = dict(
        environment=environment(),
        compiler=compiler_versions(),
        kind="compiled_static",
        shapes=dict(batch=BATCH, heads=HEADS, tq=TQ, tkv=TKV, dtype="bfloat16"),
        results=records,
    )
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
