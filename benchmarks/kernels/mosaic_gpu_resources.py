"""Static GPU resources of the Mosaic GPU GDPA kernels (Hopper wgmma, Blackwell tcgen05), on CPU.

    make gpu-aot   # once: jax's CUDA plugin (compile-only here) into .gpu-aot/, no GPU needed
    python -m benchmarks.kernels.mosaic_gpu_resources \
        --out benchmarks/results/mosaic_gpu_resources.json

With jax's CUDA plugin importable and JAX_PLATFORMS=cpu, `topologies.get_topology_desc(platform=
"cuda", target_config=...)` gives a compile-only H100 or B200 (XLA's GPU target specs, trimmed
copies in `gpu_specs/`). Compiling forward + backward for it runs Mosaic GPU's whole pipeline
at XLA compile time (its passes, LLVM to PTX, ptxas to cubin) without a driver, and
MOSAIC_GPU_DUMP_TO writes each kernel's PTX (`<kernel name>_<n>.ptx`). Each compile runs in
its own process: Mosaic GPU caches kernels by module, and dumps only the first compile.
XLA assembles it with the first ptxas on PATH: the one Triton bundles for the generation
(CUDA 13.4 for sm_90 and sm_100, as a GPU machine's jax[cuda13] would), put first; the PTX
is assembled again with it (`ptxas -v`: registers, spills) and disassembled (`common/sass.py`).
Per kernel (fwd, dq, dkdv), architecture and query block of Hopper's dK/dV kernel
(`--hopper-dkdv-block-q 32 64`; Blackwell's is 128) the record gives registers, spill bytes,
shared memory (Mosaic's scratch), and the SASS instruction mix: all instructions, MMA (HGMMA /
tcgen05 UTC*MMA), MUFU, TMA (UTMA*) instructions. Shapes:
B=4, H=8, Tq=4096, D=128, bf16; Tkv=4096 causal ("long") and Tkv=64 ("short").
Not timings: a spill or a shared-memory overflow here is one on the GPU too.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.kernels.triton_cuda_resources import compiler_versions
from pallas_kernels.common.cuda_limits import sm_occupancy
from pallas_kernels.common.gpu_lowering import B200, H100
from pallas_kernels.gdpa import mosaic_gpu_hopper

REPO = Path(__file__).resolve().parents[2]
PLUGIN_DIR = REPO / ".gpu-aot"  # `make gpu-aot`: jax-cuda13-plugin + jax-cuda13-pjrt
SPECS = Path(__file__).with_name("gpu_specs")
# arch -> (XLA target spec, the GPU it describes)
ARCH_SPECS = {"hopper": ("h100_sxm.txtpb", H100), "blackwell": ("b200.txtpb", B200)}
BATCH, HEADS, TQ, HEAD_DIM = 4, 8, 4096, 128
TKV = {"short": 64, "long": 4096}
KERNELS = ("fwd", "dq", "dkdv")
_SMEM = re.compile(r"smem_scratch_bytes=(\d+)")
_TMEM = re.compile(r"tmem_scratch_cols=(\d+)")
_THREADS = re.compile(r"\.maxntid (\d+)")


def plugin_available() -> bool:
    """Whether `make gpu-aot` has put jax's CUDA plugin in PLUGIN_DIR."""
    return (PLUGIN_DIR / "jax_plugins" / "xla_cuda13").is_dir()


def compile_and_dump(arch: str, regime: str, activation: str, dkdv_block_q: int) -> None:
    """(In a child process, `_child_env`.) Compile value_and_grad of the Mosaic GPU GDPA for
    `arch`'s compile-only device; Mosaic GPU dumps each kernel into MOSAIC_GPU_DUMP_TO."""
    import jax
    import jax.experimental.mosaic.gpu.core  # sets MOSAIC_GPU_CUDA_ROOT on import
    import jax.numpy as jnp
    from jax.experimental import topologies
    from jax.sharding import SingleDeviceSharding

    from pallas_kernels.common.gpu_lowering import lowering_for
    from pallas_kernels.gdpa.mosaic_gpu import gdpa_mosaic_gpu

    os.environ["MOSAIC_GPU_CUDA_ROOT"] = os.environ["KUNLUN_CUDA_ROOT"]  # Triton's nvdisasm
    spec_file, target = ARCH_SPECS[arch]
    device = topologies.get_topology_desc(
        platform="cuda", target_config=(SPECS / spec_file).read_text(), topology="1x1x1"
    ).devices[0]
    tkv = TKV[regime]

    def loss(q, k, v, lengths):
        o = gdpa_mosaic_gpu(
            q,
            k,
            v,
            activation=activation,
            qk_scale=HEAD_DIM**-0.5,
            out_scale=1 / tkv,
            q_lengths=lengths,
            kv_lengths=lengths,
            causal=regime == "long",
            arch=arch,
            dkdv_block_q=dkdv_block_q,
        )
        return o.astype(jnp.float32).sum()

    sharding = SingleDeviceSharding(device)
    q = jax.ShapeDtypeStruct((BATCH, TQ, HEADS, HEAD_DIM), jnp.bfloat16, sharding=sharding)
    kv = jax.ShapeDtypeStruct((BATCH, tkv, HEADS, HEAD_DIM), jnp.bfloat16, sharding=sharding)
    lens = jax.ShapeDtypeStruct((BATCH,), jnp.int32, sharding=sharding)
    # Mosaic GPU's Python passes read the arch from the abstract mesh's device.
    with lowering_for(target):
        grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
        lowered = grad.trace(q, kv, kv, lens).lower(lowering_platforms=("cuda",))
    lowered.compile()


def _child_env(dump: Path, cuda_root: Path) -> dict:
    """The compiling child's environment: the plugin on the path, Triton's ptxas first on
    PATH, no persistent compilation cache (a cached program would skip Mosaic's compile and
    its dumps) and no Triton interpreter."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(
        JAX_ENABLE_COMPILATION_CACHE="false",
        JAX_PLATFORMS="cpu",
        MOSAIC_GPU_DUMP_TO=str(dump),
        KUNLUN_CUDA_ROOT=str(cuda_root),
        PYTHONPATH=os.pathsep.join(
            filter(None, [str(PLUGIN_DIR), str(REPO), env.get("PYTHONPATH")])
        ),
        # XLA runs the first ptxas on PATH: Triton's bundled one (no CUDA toolkit needed).
        PATH=os.pathsep.join([str(cuda_root / "bin"), env.get("PATH", "")]),
    )
    return env


def _cuda_root(tmp: Path, capability: int) -> Path:
    """A CUDA-root-shaped folder (bin/) of the ptxas Triton bundles for `capability` (the one
    `ptxas -v` and the SASS below use too) and Triton's nvdisasm."""
    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = Path(get_ptxas(capability).path)
    root = tmp / "cuda"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "ptxas").symlink_to(ptxas)
    (root / "bin" / "nvdisasm").symlink_to(ptxas.with_name("nvdisasm"))
    return root


def kernel_records(
    arch: str, regime: str, activation: str, dkdv_block_q: int | None = None
) -> list[dict]:
    """One record per Mosaic GPU kernel of a GDPA forward + backward (see the docstring), with
    the dK/dV kernel's query block `dkdv_block_q` (None: the untuned one)."""
    from pallas_kernels.common.sass import disassemble, is_mma, opcodes
    from pallas_kernels.common.triton_compile import ptxas_resources
    from pallas_kernels.gdpa.mosaic_gpu import untuned_block_sizes

    if dkdv_block_q is None:
        dkdv_block_q = untuned_block_sizes(arch).block_q_bwd
    capability = ARCH_SPECS[arch][1].capability
    with tempfile.TemporaryDirectory() as tmp:
        dump, cuda_root = Path(tmp) / "dump", _cuda_root(Path(tmp), capability)
        dump.mkdir()
        proc = subprocess.run(
            [
                *(sys.executable, "-m", __spec__.name, "--child"),
                *(arch, regime, activation, str(dkdv_block_q)),
            ],
            env=_child_env(dump, cuda_root),
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode:
            raise RuntimeError(f"{arch} {regime} compile failed:\n{proc.stderr[-3000:]}")
        records = []
        for kernel in KERNELS:
            (ptx,) = dump.glob(f"gdpa_{kernel}_{arch}*.ptx")
            cubin = ptx.with_suffix(".cubin")
            ptx_text = ptx.read_text()
            registers, spills = ptxas_resources(ptx_text, capability, cubin)
            ops = opcodes(disassemble(cubin.read_bytes(), str(cuda_root / "bin/nvdisasm")))
            resources = ptx.with_suffix(".resources.txt").read_text()
            shared = int(_SMEM.search(resources)[1])
            tmem = int(_TMEM.search(resources)[1])
            threads = int(_THREADS.search(ptx_text)[1])
            records.append(
                dict(
                    arch=arch,
                    capability=capability,
                    regime=regime,
                    activation=activation,
                    dkdv_block_q=dkdv_block_q,
                    kernel=kernel,
                    registers=registers,
                    spill_bytes=spills,
                    shared_bytes=shared,
                    tensor_memory_columns=tmem,
                    threads=threads,
                    programs_per_sm=sm_occupancy(capability, threads, registers, shared, tmem),
                    instructions=len(ops),
                    mma=sum(map(is_mma, ops)),
                    mufu=sum(op.startswith("MUFU.") for op in ops),
                    tma=sum(op.startswith("UTMA") for op in ops),
                )
            )
    return records


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="JSON output path")
    parser.add_argument("--archs", nargs="+", default=list(ARCH_SPECS), choices=list(ARCH_SPECS))
    parser.add_argument("--activations", nargs="+", default=["silu"])
    parser.add_argument("--regimes", nargs="+", default=list(TKV), choices=list(TKV))
    parser.add_argument(
        "--hopper-dkdv-block-q",
        nargs="+",
        type=int,
        choices=mosaic_gpu_hopper.DKDV_Q_BLOCKS,
        default=[mosaic_gpu_hopper.DKDV_Q_BLOCK],
        help="query blocks of Hopper's dK/dV kernel (Blackwell's is 128)",
    )
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)  # arch regime act block
    args = parser.parse_args(argv)
    if args.child:
        arch, regime, activation, block = args.child
        compile_and_dump(arch, regime, activation, int(block))
        return None
    if not plugin_available():
        parser.error(f"jax's CUDA plugin is not in {PLUGIN_DIR}: run `make gpu-aot` first")
    if not args.out:
        parser.error("--out is required")
    from kunlun_jax.provenance import environment

    records = []
    for arch in args.archs:
        dkdv_blocks = args.hopper_dkdv_block_q if arch == "hopper" else [None]
        for regime, activation, block in itertools.product(
            args.regimes, args.activations, dkdv_blocks
        ):
            for r in kernel_records(arch, regime, activation, block):
                records.append(r)
                print(
                    f"{arch:9s} {regime:5s} {activation:5s} {r['kernel']:4s} "
                    f"dK/dV q block {r['dkdv_block_q']:3d} regs "
                    f"{r['registers']:3d} spills {r['spill_bytes']:4d} shared "
                    f"{r['shared_bytes'] // 1024:3d} KiB instructions {r['instructions']:5d} "
                    f"mma {r['mma']:3d} mufu {r['mufu']:3d} tma {r['tma']:2d} "
                    f"programs/SM {r['programs_per_sm']}"
                )
    report = dict(
        environment=environment(),
        compiler=compiler_versions(),
        kind="compiled_static",
        shapes=dict(batch=BATCH, heads=HEADS, tq=TQ, tkv=TKV, head_dim=HEAD_DIM, dtype="bfloat16"),
        results=records,
    )
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
