"""Static TPU schedules of our Pallas Mosaic-TPU kernels (GDPA, SWA, HSP) at production shapes.

    python -m benchmarks.kernels.tpu_bundles --out benchmarks/results/tpu_bundles.json

No TPU needed: libtpu compiles forward + backward for deviceless v5e and v6e chips and dumps
each kernel's VLIW schedule (`common/llo.py`). Per MXU block (the tile computation of a grid
step: one per variant, wholly visible or masked) the record gives its bundles, the cycles its
MXU pushes keep the busiest MXU busy, their ratio (the fraction of the MXU peak the tile could
reach: an upper bound, since DMA waits and the grid step's bookkeeping come on top), the
busiest other unit and the vector spills. A plain bf16 matmul kernel compiled in the same run
is the ceiling: it measures the FLOPs per MXU push, hence the cycles a push takes
(FLOPs / (2 · MXU width²), MXU_WIDTH), and how close a straight matmul's schedule comes to
MXU-bound. The shapes: B=4, H=4, D=128, bf16, silu, T=4096 (large enough that the operands
live in HBM, as in training); GDPA self-attention and cross-attention with Tkv=64, SWA at
w=128, HSP with 64 seeds. Must run in a fresh process: LIBTPU_INIT_ARGS is read when libtpu
first loads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

DEFAULT_TOPOLOGIES = ("v5e:2x2", "v6e:2x2")
B, H, D, T = 4, 4, 128, 4096
SWA_WINDOW = 128
CEILING_SHAPE = (2048, 2048, 2048)  # the ceiling matmul's M, N, K
CEILING_BLOCKS = ((512, 512, 512), (1024, 1024, 512), (1024, 512, 1024), (512, 512, 2048))


@dataclasses.dataclass(frozen=True)
class Case:
    """One compiled program: its kernels and the useful FLOPs of each one's tile."""

    name: str
    kernels: tuple[str, ...]
    build: Callable  # (device) -> compiled program
    tile_flops: Callable  # (kernel, device kind) -> FLOPs of one tile, None if not counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--topologies", nargs="+", default=list(DEFAULT_TOPOLOGIES))
    args = parser.parse_args()
    dump = Path(tempfile.mkdtemp(prefix="llo_dump_"))
    if "jax" in os.sys.modules and os.environ.get("LIBTPU_INIT_ARGS"):
        raise SystemExit("run tpu_bundles in a fresh process (LIBTPU_INIT_ARGS is read once)")
    os.environ["LIBTPU_INIT_ARGS"] = f"--xla_jf_dump_to={dump} --xla_jf_dump_llo_text=true"
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        report = bundle_report(args.topologies, dump)
    finally:
        shutil.rmtree(dump, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    for rec in report["kernels"]:
        for blk in rec["mxu_blocks"]:
            print(
                f"{rec['chip']:8s} {rec['case']:10s} {rec['kernel']:22s} "
                f"bundles={blk['bundles']:5d} ceiling={blk['ceiling_fraction']:.2f} "
                f"useful={blk['useful_fraction']} busiest={blk['busiest_unit']}"
                f"({blk['unit_bundles'][blk['busiest_unit']]}) spills={blk['spills']}"
            )


def bundle_report(topologies: list[str], dump: Path) -> dict:
    """Every kernel's MXU blocks on every chip (see the module docstring)."""
    from jax.experimental import topologies as topo

    from kunlun_jax.provenance import environment

    records, ceilings = [], {}
    for name in topologies:
        device = topo.get_topology_desc(topology_name=name, platform="tpu").devices[0]
        ceiling = _ceiling(device, dump)
        ceilings[name] = ceiling
        for case in _cases():
            for kernel, blocks in _compiled_blocks(case, device, dump).items():
                tile_flops = case.tile_flops(kernel, device.device_kind)
                records.append(
                    dict(
                        chip=name,
                        device_kind=device.device_kind,
                        case=case.name,
                        kernel=kernel,
                        tile_flops=tile_flops,
                        mxu_blocks=[_block_record(b, ceiling, tile_flops) for b in blocks],
                    )
                )
    env = environment()
    env["device_kind"] = "CPU (deviceless TPU compile: " + ", ".join(topologies) + ")"
    env["libtpu"] = metadata.version("libtpu")
    return dict(
        environment=env, shapes=dict(B=B, H=H, D=D, T=T), ceilings=ceilings, kernels=records
    )


def _ceiling(device, dump: Path) -> dict:
    """The densest schedule of a plain bf16 Pallas matmul over CEILING_BLOCKS: FLOPs per MXU
    push (known FLOPs / pushes) and FLOPs per bundle."""
    best = None
    for bm, bn, bk in CEILING_BLOCKS:
        (block,) = _compiled_blocks(_ceiling_case(bm, bn, bk), device, dump)["mxu_ceiling_matmul"]
        flops = 2 * bm * bn * bk
        rec = dict(
            block=(bm, bn, bk),
            bundles=block.bundles,
            mxus=len(block.pushes),
            flops_per_push=flops / sum(block.pushes.values()),
            flops_per_bundle=round(flops / block.bundles),
            busiest_unit=block.busiest_unit(),
        )
        if best is None or rec["flops_per_bundle"] > best["flops_per_bundle"]:
            best = rec
    return best


def _block_record(block, ceiling: dict, tile_flops: int | None) -> dict:
    executed = sum(block.pushes.values()) * ceiling["flops_per_push"]
    busiest = block.busiest_unit()
    return dict(
        bundles=block.bundles,
        pushes=block.pushes,
        executed_flops_per_bundle=round(executed / block.bundles),
        ceiling_fraction=round(executed / block.bundles / ceiling["flops_per_bundle"], 3),
        useful_fraction=None if tile_flops is None else round(tile_flops / executed, 3),
        unit_bundles={u: block.unit_bundles(u) for u in block.load},
        busiest_unit=busiest,
        spills=block.load.get("VSTORE:SPILL", 0),
        fills=block.load.get("VLOAD:FILL", 0),
    )


def _compiled_blocks(case: Case, device, dump: Path) -> dict:
    """Compile `case` for `device`, read each kernel's MXU blocks from the dumps, clear them."""
    from pallas_kernels.common import llo

    for stale in dump.iterdir():
        stale.unlink()
    case.build(device)
    found = {}
    for kernel in case.kernels:
        dumps = llo.kernel_dumps(dump, kernel)
        if not dumps:
            names = sorted({p.name.split("-")[1] for p in dump.iterdir()})
            raise RuntimeError(f"no schedule dumped for {kernel} in case {case.name}: {names}")
        found[kernel] = llo.mxu_blocks(*dumps[-1])
    return found


def _args(device):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    replicated = NamedSharding(Mesh(np.array([device]), ("x",)), PartitionSpec())

    def arg(shape, dtype=jnp.bfloat16):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=replicated)

    return arg


def _grad_compile(device, loss, *shapes):
    import jax
    import jax.numpy as jnp

    from pallas_kernels.common.target import compile_target

    arg = _args(device)
    specs = [arg(*s) if isinstance(s[-1], type) else arg(s) for s in shapes]
    argnums = tuple(i for i, s in enumerate(specs) if s.dtype != jnp.int32)
    with compile_target(device):
        return jax.jit(jax.value_and_grad(loss, argnums=argnums)).lower(*specs).compile()


def _cases() -> list[Case]:
    import jax.numpy as jnp

    from pallas_kernels.gdpa.api import gdpa
    from pallas_kernels.hsp.api import seed_pooling
    from pallas_kernels.swa.api import swa_attention

    gdpa_kernels = ("gdpa_fwd_tpu", "gdpa_dkdv_tpu", "gdpa_dq_tpu")
    lens = ((B,), jnp.int32)

    def gdpa_case(tkv: int):
        def loss(q, k, v, q_lens, kv_lens):
            o = gdpa(
                q,
                k,
                v,
                activation="silu",
                qk_scale=D**-0.5,
                out_scale=1 / tkv,
                q_lengths=q_lens,
                kv_lengths=kv_lens,
                backend="pallas",
            )
            return o.astype(jnp.float32).sum()

        return lambda dev: _grad_compile(
            dev, loss, (B, T, H, D), (B, tkv, H, D), (B, tkv, H, D), lens, lens
        )

    def swa(dev):
        def loss(q, k, v, lengths):
            o = swa_attention(
                q, k, v, q_lengths=lengths, kv_lengths=lengths, window=SWA_WINDOW, backend="pallas"
            )
            return o.astype(jnp.float32).sum()

        return _grad_compile(dev, loss, (B, T, H, D), (B, T, H, D), (B, T, H, D), lens)

    def hsp(dev):
        def loss(seeds, k, v, kv_lengths):
            o = seed_pooling(
                seeds,
                k,
                v,
                kv_lengths=kv_lengths,
                backend="tpu",
                interpret=False,
                device_kind=dev.device_kind,
            )
            return o.astype(jnp.float32).sum()

        return _grad_compile(dev, loss, (64, H, D), (B, T, H, D), (B, T, H, D), lens)

    return [
        Case("gdpa_self", gdpa_kernels, gdpa_case(T), _attention_tile_flops("gdpa", T)),
        Case("gdpa_cross", gdpa_kernels, gdpa_case(64), _attention_tile_flops("gdpa", 64)),
        Case(
            "swa_w128",
            ("swa_fwd_tpu", "swa_dkdv_tpu", "swa_dq_tpu"),
            swa,
            _attention_tile_flops("swa", T),
        ),
        Case(
            "hsp_s64",
            ("seed_pooling_fwd_tpu", "seed_pooling_bwd_tpu"),
            hsp,
            lambda kernel, kind: None,
        ),
    ]


def _attention_tile_flops(op: str, tkv: int) -> Callable:
    """(kernel, device kind) -> 2·D FLOPs per score per matmul of one [block_q, block_kv] tile
    of the GDPA / SWA kernels, with the tiles `gdpa` / `swa_attention` pick for this shape."""
    import jax.numpy as jnp

    from pallas_kernels.common.tiles import fit_block_sizes
    from pallas_kernels.gdpa import tuning as gdpa_tuning
    from pallas_kernels.gdpa.blockwise import KERNEL_TRAFFIC
    from pallas_kernels.swa import tuning as swa_tuning

    def flops(kernel: str, device_kind: str) -> int:
        if op == "gdpa":
            sizes = gdpa_tuning.default_block_sizes("tpu", device_kind, D, tkv, "pallas_tpu")
        else:
            sizes = swa_tuning.default_block_sizes("tpu", device_kind, D, SWA_WINDOW)
        sizes = fit_block_sizes(sizes, "pallas_tpu", jnp.bfloat16, T, tkv, None, None)
        kind = kernel.split("_")[1]  # fwd | dkdv | dq
        bq, bkv = (
            (sizes.block_q, sizes.block_kv)
            if kind == "fwd"
            else (sizes.block_q_bwd, sizes.block_kv_bwd)
        )
        return KERNEL_TRAFFIC[kind][0] * 2 * bq * bkv * D

    return flops


def _ceiling_case(bm: int, bn: int, bk: int) -> Case:
    """A bf16 [M, K] @ [K, N] Pallas matmul, fp32 accumulation, square blocks: the ceiling."""
    import jax
    import jax.numpy as jnp
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import tpu as pltpu

    m, n, k = CEILING_SHAPE

    def kernel(x_ref, y_ref, o_ref, acc_ref):
        @pl.when(pl.program_id(2) == 0)
        def _():
            acc_ref[...] = jnp.zeros_like(acc_ref)

        acc_ref[...] += jnp.dot(x_ref[...], y_ref[...], preferred_element_type=jnp.float32)

        @pl.when(pl.program_id(2) == pl.num_programs(2) - 1)
        def _():
            o_ref[...] = acc_ref[...].astype(o_ref.dtype)

    def matmul(x, y):
        return pl.pallas_call(
            kernel,
            out_shape=jax.ShapeDtypeStruct((m, n), x.dtype),
            grid=(m // bm, n // bn, k // bk),
            in_specs=[
                pl.BlockSpec((bm, bk), lambda i, j, s: (i, s)),
                pl.BlockSpec((bk, bn), lambda i, j, s: (s, j)),
            ],
            out_specs=pl.BlockSpec((bm, bn), lambda i, j, s: (i, j)),
            scratch_shapes=[pltpu.VMEM((bm, bn), jnp.float32)],
            compiler_params=pltpu.CompilerParams(
                dimension_semantics=("parallel", "parallel", "arbitrary")
            ),
            name="mxu_ceiling_matmul",
        )(x, y)

    def build(dev):
        arg = _args(dev)
        return jax.jit(matmul).lower(arg((m, k)), arg((k, n))).compile()

    return Case("ceiling", ("mxu_ceiling_matmul",), build, lambda kernel, kind: None)


if __name__ == "__main__":
    main()
