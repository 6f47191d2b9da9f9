"""Static TPU schedules of our Pallas Mosaic-TPU kernels (GDPA, SWA, HSP) at production shapes.

    python -m benchmarks.kernels.tpu_bundles --out benchmarks/results/tpu_bundles.json [--sweep]
        [--head-dim 64 --batch 64] [--heads 8] [--seq-len 512 --window 100]

No TPU needed: libtpu compiles forward + backward for deviceless v5e and v6e chips and dumps
each kernel's VLIW schedule (`common/llo.py`); a bundle issues per cycle when nothing stalls.
Per kernel and MXU block (a grid step's tile computation, one block per variant: wholly
visible; with a window or causal mask, cut by that mask alone inside the lengths; masked in
full) the record gives:
- `bundles`: the block's own; `step_bundles`: the fewest of a grid step through it (the step's
  bookkeeping included, its conditional first-step init / last-step finish skipped);
- `tile_fraction`: MXU work per bundle of the block over that of the ceiling's block;
- `step_fraction`: useful FLOPs per step bundle over the ceiling's FLOPs per step bundle;
- `useful_fraction`: the tile's FLOPs over the MXU work its pushes execute (below 1 where a
  matmul dimension is narrower than the MXU: D = 128 contractions on v6e's 256-wide MXU);
- per-unit bundles at each unit's capacity, the busiest unit besides the MXU, vector spills.
The GDPA and SWA kernels also get a whole-grid estimate: their grid's steps counted by kind
(by variant, or idle: `TileGrid.tile_at` on the grid the kernels build, SWA's banded)
times the step bundles, against the kernel's useful FLOPs. The ceiling is a plain bf16
Pallas matmul compiled in the same run, its densest steady state over CEILING_BLOCKS; its
known FLOPs give the MXU work of a push. Bundles are a lower bound on cycles: DMA waits and
stalls come on top, and the clock is not modelled.
Shapes: B=32, H=4, D=128 (`--batch`, `--heads`, `--head-dim`), bf16, T=4096 (`--seq-len`);
GDPA silu, self-attention and cross-attention with Tkv=64; SWA at w=128 (`--window`) and the
same kernel without a window (full attention); HSP with 64 seeds.
`--sweep` also compiles GDPA and SWA for every SWEEP_TILES candidate and every SWEEP_HEADS
count of heads per grid step that divides H, and HSP for every HSP_SWEEP_KV tile, and records
the densest forward and backward grids ("sweep_best"); `--sweep heads` only the heads counts,
`--sweep swa` only the windowed SWA call's tiles (and only the SWA kernels are reported). A
candidate Mosaic rejects (its blocks overflow VMEM) is recorded with the compiler's error
instead of bundles.
Every array of the programs stays in HBM, as in a training step: with arrays small enough
(B=4 here) XLA places a kernel's operands in VMEM, its block DMAs become vector copy loops in
conditional regions, and the step path, which skips conditional regions, would leave out
copies that run every step. `_compiled` refuses such a program.
Run it in a fresh process: LIBTPU_INIT_ARGS is read when libtpu first loads.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from pallas_kernels.common import llo

DEFAULT_TOPOLOGIES = ("v5e:2x2", "v6e:2x2")
# B=32: each [B, T, H·D] bf16 operand is 128 MiB, too large for XLA to place in VMEM.
B, H, D, T = 32, 4, 128, 4096
SWA_WINDOW = 128
CROSS_TKV = 64
# Tile candidates (block_q, block_kv), forward and backward alike, per Tkv regime (GDPA, and
# SWA without a window) and for SWA at w = SWA_WINDOW. A jagged sequence wastes about half a
# tile in padding, so tiles stay <= 512 rows for self-attention and query tiles <= 1024 rows
# against short K/V (whose tile is the whole Tkv); SWA's query tiles are multiples of 128
# (its logsumexp's lane dim).
SWEEP_TILES = {
    "long": ((256, 256), (256, 512), (512, 256), (512, 512)),
    "short": ((256, 256), (512, 256), (1024, 256)),
    "swa": ((128, 128), (128, 256), (256, 128), (256, 256), (512, 128), (512, 256)),
}
# Heads per grid step (at the table's tiles; those that divide H).
SWEEP_HEADS = (1, 2, 4, 8)
# HSP kv tiles (forward and backward alike), capped at 1024 rows like GDPA's query tiles.
HSP_SWEEP_KV = (256, 512, 1024)
HSP_SEEDS = 64
CEILING_SHAPE = (2048, 2048, 2048)  # the ceiling matmul's M, N, K (XLA keeps them in HBM)
# Arrays larger than this must stay in HBM (see the module docstring): the kernels' operands
# are >= 64 MiB at the benchmark's shapes. The per-query statistics (lse, δ: [B, H, 1, T]
# fp32, <= 4 MiB) may sit in VMEM: a block of them is one or two vector registers.
HBM_ONLY_BYTES = 4 << 20
CEILING_BLOCKS = ((512, 512, 512), (1024, 1024, 512), (1024, 512, 1024), (512, 512, 2048))


@dataclasses.dataclass(frozen=True)
class Schedule:
    """One compiled kernel: its parsed final bundle listing and its MXU blocks."""

    bundles: list[llo.Bundle]
    blocks: tuple[llo.MxuBlock, ...]

    def step_bundles(self, block: llo.MxuBlock | None) -> int:
        """Fewest bundles of a grid step through `block` and no other MXU block (None: through
        none, a step with no tile to compute)."""
        others = tuple(b.first for b in self.blocks if b is not block)
        via = None if block is None else block.first
        return llo.fewest_step_bundles(self.bundles, self.blocks[0].first, via, others)


@dataclasses.dataclass(frozen=True)
class Attention:
    """A GDPA or SWA call of the benchmark: full lengths, q [B, T, H, D], k / v [B, tkv, H, D]."""

    op: str  # "gdpa" | "swa"
    tkv: int
    window: int | None
    override: tuple[int, int] | None = None  # explicit (block_q, block_kv), else the table's
    heads: int | None = None  # explicit heads per grid step, else the table's

    def sizes(self, device_kind: str):
        """The BlockSizes the op picks on this device (as `gdpa_pallas` / `swa_pallas_tpu`)."""
        import jax.numpy as jnp

        from pallas_kernels.common.tiles import fit_block_sizes
        from pallas_kernels.gdpa import tuning as gdpa_tuning
        from pallas_kernels.swa import tuning as swa_tuning

        if self.op == "gdpa":
            sizes = gdpa_tuning.default_block_sizes("tpu", device_kind, D, self.tkv, "pallas_tpu")
        else:
            sizes = swa_tuning.default_block_sizes("tpu", device_kind, D, self.window)
        explicit = self.override or (None, None)
        sizes = sizes.with_overrides(*explicit).with_heads(self.heads)
        return fit_block_sizes(sizes, "pallas_tpu", jnp.bfloat16, T, self.tkv, *explicit)

    def tiles(self, kind: str, device_kind: str) -> tuple[int, int]:
        """(block_q, block_kv) the op picks for kernel `kind` ("fwd", "dkdv", "dq")."""
        return self.sizes(device_kind).tiles(backward=kind != "fwd")

    def grid(self, kind: str, device_kind: str):
        """The `TileGrid` of kernel `kind`, as the kernels build it."""
        import jax
        import jax.numpy as jnp

        from pallas_kernels.common.tpu import TileGrid

        block_q, block_kv = self.tiles(kind, device_kind)
        q = jax.ShapeDtypeStruct((B, T, H, D), jnp.bfloat16)
        k = jax.ShapeDtypeStruct((B, self.tkv, H, D), jnp.bfloat16)
        return TileGrid.of(
            q,
            k,
            block_q=block_q,
            block_kv=block_kv,
            window=self.window,
            causal=False,
            band=self.op == "swa",
            heads=self.sizes(device_kind).heads,
        )

    def tile_flops(self, kind: str, device_kind: str) -> int:
        """Useful FLOPs of one wholly visible (block_q, block_kv) tile of kernel `kind`, for
        each head of a grid step."""
        block_q, block_kv = self.tiles(kind, device_kind)
        heads = self.grid(kind, device_kind).heads_per_block
        return _matmuls(kind) * 2 * block_q * block_kv * D * heads

    def grid_estimate(self, sched: Schedule, kind: str, device_kind: str) -> dict:
        """Bundles of the whole grid of kernel `kind`: its steps counted by tile variant times
        their step bundles, and useful FLOPs."""
        import numpy as np

        from pallas_kernels.common import blocks

        grid = self.grid(kind, device_kind)
        q_outer = kind != "dkdv"
        outer = np.arange(grid.grid(q_outer)[2])[:, None]
        t = np.arange(grid.steps(q_outer))[None, :]
        tile = grid.tile_at(outer, t, T, self.tkv, q_outer)
        active, unmasked, inside = (np.asarray(x) for x in tile[:3])
        masked = active & ~unmasked
        # MXU blocks in program order, one per tile variant (`TileGrid._run_tile`).
        variants = [("unmasked", active & unmasked)]
        if grid.window is not None or grid.causal:
            variants.append(("inside_lengths", masked & inside))
            masked &= ~inside
        variants.append(("masked", masked))
        if len(sched.blocks) != len(variants):
            raise RuntimeError(f"{len(sched.blocks)} MXU blocks for tile variants {variants}")
        steps = {
            name: (int(where.sum()), sched.step_bundles(block))
            for (name, where), block in zip(variants, sched.blocks, strict=True)
        }
        steps["idle"] = (int((~active).sum()), sched.step_bundles(None))
        bundles = B * grid.heads * sum(n * cost for n, cost in steps.values())
        query, key = np.arange(T)[:, None], np.arange(self.tkv)[None, :]
        mask = dict(q_len=T, kv_len=self.tkv, window=self.window, causal=False)
        visible = int(np.asarray(blocks.visible(query, key, **mask)).sum())
        return dict(
            steps=steps, bundles=bundles, useful_flops=B * H * _matmuls(kind) * 2 * D * visible
        )


@dataclasses.dataclass(frozen=True)
class Case:
    """One compiled program and its kernels' Pallas names (`attention`: None for HSP)."""

    name: str
    kernels: tuple[str, ...]
    build: Callable  # (device) -> compiled program
    attention: Attention | None = None


def _matmuls(kind: str) -> int:
    from pallas_kernels.gdpa.blockwise import KERNEL_TRAFFIC

    return KERNEL_TRAFFIC[kind][0]


def main() -> None:
    global B, H, D, T, SWA_WINDOW  # the shapes every case reads
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--topologies", nargs="+", default=list(DEFAULT_TOPOLOGIES))
    parser.add_argument(
        "--sweep",
        nargs="?",
        const="all",
        choices=("all", "heads", "swa"),
        help="also search the GDPA, SWA and HSP tiles and heads per step (heads: only those; "
        "swa: only the windowed SWA call's tiles)",
    )
    parser.add_argument("--batch", type=int, default=B, help="B (large enough for HBM operands)")
    parser.add_argument("--heads", type=int, default=H, help="H, the model's heads")
    parser.add_argument("--head-dim", type=int, default=D, help="D (the tables' rows by D)")
    parser.add_argument("--seq-len", type=int, default=T, help="T (queries and keys)")
    parser.add_argument("--window", type=int, default=SWA_WINDOW, help="SWA's w")
    args = parser.parse_args()
    B, H, D, T, SWA_WINDOW = args.batch, args.heads, args.head_dim, args.seq_len, args.window
    dump = Path(tempfile.mkdtemp(prefix="llo_dump_"))
    flags = f"--xla_jf_dump_to={dump} --xla_jf_dump_llo_text=true"
    os.environ["LIBTPU_INIT_ARGS"] = f"{os.environ.get('LIBTPU_INIT_ARGS', '')} {flags}".strip()
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        report = bundle_report(args.topologies, dump, args.sweep)
    finally:
        shutil.rmtree(dump, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    for rec in report["kernels"]:
        for blk in rec["mxu_blocks"]:
            print(
                f"{rec['chip']:8s} {rec['case']:10s} {rec['kernel']:22s} "
                f"tile={blk['bundles']:5d} ({blk['tile_fraction']:.2f}) "
                f"step={blk['step_bundles']:5d} ({blk['step_fraction']:.2f}) "
                f"busiest={blk['busiest_unit']}({blk['unit_bundles'][blk['busiest_unit']]}) "
                f"spills={blk['spills']}"
            )
    for summary in report["cases"]:
        print(summary)
    for rec in report.get("sweep_best", []):
        print("best", rec)


def bundle_report(topologies: list[str], dump: Path, sweep: str | None) -> dict:
    """Every kernel's MXU blocks and grid estimate on every chip (see the module docstring)."""
    from kunlun_jax.parallel.aot import tpu_devices
    from kunlun_jax.provenance import environment

    records, ceilings, cases, sweeps = [], {}, [], []
    for name in topologies:
        device = tpu_devices(name)[0]
        kind = device.device_kind
        ceiling = ceilings[name] = _ceiling(device, dump)
        for case in _cases():
            if sweep == "swa" and not case.name.startswith("swa"):
                continue  # an SWA-only report (whose shapes may not suit the other kernels)
            totals = {}
            for kernel, sched in _compiled(case, device, dump).items():
                att, kernel_kind = case.attention, kernel.split("_")[1]
                tile_flops = None if att is None else att.tile_flops(kernel_kind, kind)
                rec = dict(
                    chip=name,
                    device_kind=kind,
                    case=case.name,
                    kernel=kernel,
                    tile_flops=tile_flops,
                    mxu_blocks=[_block_record(sched, b, ceiling, tile_flops) for b in sched.blocks],
                )
                if att is not None:
                    grid = rec["grid"] = att.grid_estimate(sched, kernel_kind, kind)
                    grid["step_fraction"] = round(
                        grid["useful_flops"] / grid["bundles"] / ceiling["flops_per_step_bundle"], 3
                    )
                    totals[kernel_kind] = grid
                records.append(rec)
            if totals:
                cases.append(_case_summary(name, case.name, totals, ceiling))
        if sweep:
            sweeps += _sweep(name, device, dump, ceiling, sweep)
    env = environment()
    env["device_kind"] = "CPU (deviceless TPU compile: " + ", ".join(topologies) + ")"
    env["libtpu"] = metadata.version("libtpu")
    report = dict(
        environment=env,
        shapes=dict(B=B, H=H, D=D, T=T, window=SWA_WINDOW),
        ceilings=ceilings,
        cases=cases + _swa_vs_full(cases),
        kernels=records,
    )
    if sweep:
        report |= dict(sweep=sweeps, sweep_best=_best(sweeps))
    return report


def _case_summary(chip: str, case: str, totals: dict, ceiling: dict) -> dict:
    """Forward and backward (dK/dV + dQ) grid bundles of one case, and their step fraction."""
    peak = ceiling["flops_per_step_bundle"]
    out = dict(chip=chip, case=case)
    for part, kinds in (("fwd", ("fwd",)), ("bwd", ("dkdv", "dq"))):
        bundles = sum(totals[k]["bundles"] for k in kinds)
        flops = sum(totals[k]["useful_flops"] for k in kinds)
        out[part] = dict(bundles=bundles, fraction=round(flops / bundles / peak, 3))
    return out


def _swa_vs_full(cases: list[dict]) -> list[dict]:
    """Full attention's grid bundles over SWA's (w = SWA_WINDOW), per chip: the static form of
    the SWA speed-up at T."""
    out = []
    for swa in (c for c in cases if c["case"] == _swa_case()):
        (full,) = (c for c in cases if c["case"] == "swa_full" and c["chip"] == swa["chip"])
        out.append(
            dict(
                chip=swa["chip"],
                case=f"{_swa_case()}_vs_full",
                fwd_speedup=round(full["fwd"]["bundles"] / swa["fwd"]["bundles"], 2),
                fwd_bwd_speedup=round(
                    (full["fwd"]["bundles"] + full["bwd"]["bundles"])
                    / (swa["fwd"]["bundles"] + swa["bwd"]["bundles"]),
                    2,
                ),
            )
        )
    return out


def _ceiling(device, dump: Path) -> dict:
    """The densest steady state of a plain bf16 Pallas matmul over CEILING_BLOCKS: FLOPs per
    MXU push (known FLOPs / pushes), FLOPs per bundle of its tile block and of a grid step."""
    best = None
    for bm, bn, bk in CEILING_BLOCKS:
        sched = _compiled(_ceiling_case(bm, bn, bk), device, dump)["mxu_ceiling_matmul"]
        (block,) = sched.blocks
        flops = 2 * bm * bn * bk
        rec = dict(
            block=(bm, bn, bk),
            bundles=block.bundles,
            step_bundles=sched.step_bundles(block),
            mxus=len(block.pushes),
            flops_per_push=flops / sum(block.pushes.values()),
            flops_per_bundle=round(flops / block.bundles),
            flops_per_step_bundle=round(flops / sched.step_bundles(block)),
            busiest_unit=block.busiest_unit(),
        )
        if best is None or rec["flops_per_step_bundle"] > best["flops_per_step_bundle"]:
            best = rec
    return best


def _block_record(sched: Schedule, block: llo.MxuBlock, ceiling: dict, tile_flops) -> dict:
    executed = sum(block.pushes.values()) * ceiling["flops_per_push"]
    useful = executed if tile_flops is None else tile_flops
    step = sched.step_bundles(block)
    return dict(
        bundles=block.bundles,
        step_bundles=step,
        pushes=block.pushes,
        tile_fraction=round(executed / block.bundles / ceiling["flops_per_bundle"], 3),
        step_fraction=round(useful / step / ceiling["flops_per_step_bundle"], 3),
        useful_fraction=None if tile_flops is None else round(tile_flops / executed, 3),
        unit_bundles={u: block.unit_bundles(u) for u in block.load},
        busiest_unit=block.busiest_unit(),
        spills=block.load.get("VSTORE:SPILL", 0),
        fills=block.load.get("VLOAD:FILL", 0),
    )


def _sweep(chip: str, device, dump: Path, ceiling: dict, mode: str) -> list[dict]:
    """Whole-grid forward and backward bundles of GDPA and SWA for each SWEEP_TILES candidate
    (explicit tiles: forward and backward alike) and SWEEP_HEADS count, and HSP's for each
    HSP_SWEEP_KV tile; mode "heads": the heads counts only, "swa": the windowed SWA call's
    tiles only."""
    import jax

    heads_only = mode == "heads"
    records = []
    for base in _cases():
        att = base.attention
        if att is None or (mode == "swa" and base.name != _swa_case()):
            continue
        tiles = SWEEP_TILES[_sweep_family(att)]
        variants = (
            [] if heads_only else [(base.name, dataclasses.replace(att, override=t)) for t in tiles]
        )
        variants += [
            (f"{base.name}_heads", dataclasses.replace(att, heads=n))
            for n in SWEEP_HEADS
            if H % n == 0 and mode != "swa"
        ]
        for name, variant in variants:
            block_q, block_kv = variant.tiles("fwd", device.device_kind)
            record = dict(
                chip=chip,
                device_kind=device.device_kind,
                case=name,
                block_q=block_q,
                block_kv=block_kv,
                heads=variant.grid("fwd", device.device_kind).heads_per_block,
            )
            try:
                compiled = _compiled(_attention_case(base.name, variant), device, dump)
            except jax.errors.JaxRuntimeError as err:  # Mosaic: the blocks overflow VMEM
                records.append(record | dict(error=str(err).splitlines()[0][:300]))
                continue
            grids = {
                kernel.split("_")[1]: variant.grid_estimate(
                    sched, kernel.split("_")[1], device.device_kind
                )
                for kernel, sched in compiled.items()
            }
            summary = _case_summary(chip, base.name, grids, ceiling)
            record |= dict(
                bundles={k: g["bundles"] for k, g in grids.items()},
                fwd_fraction=summary["fwd"]["fraction"],
                bwd_fraction=summary["bwd"]["fraction"],
            )
            records.append(record)
    return records if mode != "all" else records + _hsp_sweep(chip, device, dump)


def _hsp_sweep(chip: str, device, dump: Path) -> list[dict]:
    """HSP's whole-grid bundles per HSP_SWEEP_KV tile: full lengths, so every one of the
    B·H·T / block_kv steps is wholly visible."""
    records = []
    for block_kv in HSP_SWEEP_KV:
        case = Case("hsp_s64", _HSP_KERNELS, functools.partial(_hsp_build, block_kv=block_kv))
        bundles = {
            kernel.split("_")[2]: B * H * (T // block_kv) * sched.step_bundles(sched.blocks[0])
            for kernel, sched in _compiled(case, device, dump).items()
        }
        records.append(
            dict(
                chip=chip,
                device_kind=device.device_kind,
                case="hsp_s64",
                block_kv=block_kv,
                bundles=bundles,
            )
        )
    return records


def _sweep_family(att: Attention) -> str:
    """The SWEEP_TILES key of a call: its Tkv regime, or "swa" for a windowed SWA call."""
    from pallas_kernels.gdpa.tuning import kv_regime

    return "swa" if att.window is not None else kv_regime(att.tkv)


def _best(sweeps: list[dict]) -> list[dict]:
    """Per (chip, case): the tiles with the densest forward and backward grids (HSP: the
    fewest bundles)."""
    best = []
    for chip, kind in sorted({(r["chip"], r["device_kind"]) for r in sweeps}):
        rows = [r for r in sweeps if r["chip"] == chip and r["case"] == "hsp_s64"]
        if not rows:  # a heads-only sweep
            continue
        best.append(
            dict(
                chip=chip,
                device_kind=kind,
                case="hsp_s64",
                fwd=min(rows, key=lambda r: r["bundles"]["fwd"])["block_kv"],
                bwd=min(rows, key=lambda r: r["bundles"]["bwd"])["block_kv"],
            )
        )
    compiled = [r for r in sweeps if "error" not in r]
    for key in sorted({(r["chip"], r["device_kind"], r["case"]) for r in sweeps}):
        if key[2] == "hsp_s64":
            continue
        rows = [r for r in compiled if (r["chip"], r["device_kind"], r["case"]) == key]
        fwd = max(rows, key=lambda r: r["fwd_fraction"])
        bwd = max(rows, key=lambda r: r["bwd_fraction"])
        knob = ("heads",) if key[2].endswith("_heads") else ("block_q", "block_kv")
        best.append(
            dict(
                chip=key[0],
                device_kind=key[1],
                case=key[2],
                fwd=(*(fwd[k] for k in knob), fwd["fwd_fraction"]),
                bwd=(*(bwd[k] for k in knob), bwd["bwd_fraction"]),
            )
        )
    return best


def _compiled(case: Case, device, dump: Path) -> dict[str, Schedule]:
    """Compile `case` for `device`, read each kernel's schedule from the dumps, clear them."""
    for stale in dump.iterdir():
        stale.unlink()
    in_vmem = vmem_arrays(case.build(device).as_text())
    if in_vmem:
        raise RuntimeError(
            f"case {case.name}: XLA placed {in_vmem[:3]} in VMEM; its kernels' block DMAs "
            "would become vector copies the step path skips: enlarge the arrays (B, "
            "CEILING_SHAPE)"
        )
    found = {}
    for kernel in case.kernels:
        dumps = llo.kernel_dumps(dump, kernel)
        if not dumps:
            names = sorted({p.name.split("-")[1] for p in dump.iterdir()})
            raise RuntimeError(f"no schedule dumped for {kernel} in case {case.name}: {names}")
        listing, utilization = dumps[-1]
        bundles = llo.parse_bundles(listing)
        found[kernel] = Schedule(bundles, llo.mxu_blocks(bundles, utilization))
    return found


_ARRAY = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]\{[^}]*S\(1\)")
_BYTES = {"bf16": 2, "f16": 2, "f32": 4, "s32": 4, "u32": 4, "s8": 1, "u8": 1, "pred": 1}


def vmem_arrays(hlo_text: str) -> list[str]:
    """The arrays larger than HBM_ONLY_BYTES that a compiled TPU program's HLO places in VMEM
    (memory space S(1) in their layout), e.g. 'bf16[4,4096,512]'."""
    found = []
    for dtype, dims in _ARRAY.findall(hlo_text):
        size = _BYTES.get(dtype, 4) * math.prod(int(d) for d in dims.split(",") if d)
        if size > HBM_ONLY_BYTES:
            found.append(f"{dtype}[{dims}]")
    return sorted(set(found))


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
    """Compile value_and_grad of `loss` for `device`; shapes are bf16 arrays, or (shape, dtype)
    pairs for int32 lengths (no gradient)."""
    import jax
    import jax.numpy as jnp

    from pallas_kernels.common.target import compile_target

    arg = _args(device)
    specs = [arg(*s) if isinstance(s[-1], type) else arg(s) for s in shapes]
    argnums = tuple(i for i, s in enumerate(specs) if s.dtype != jnp.int32)
    with compile_target(device):
        return jax.jit(jax.value_and_grad(loss, argnums=argnums)).lower(*specs).compile()


def _cases() -> list[Case]:
    return [
        _attention_case("gdpa_self", Attention("gdpa", T, None)),
        _attention_case("gdpa_cross", Attention("gdpa", CROSS_TKV, None)),
        _attention_case(_swa_case(), Attention("swa", T, SWA_WINDOW)),
        _attention_case("swa_full", Attention("swa", T, None)),
        Case("hsp_s64", _HSP_KERNELS, _hsp_build),
    ]


def _swa_case() -> str:
    return f"swa_w{SWA_WINDOW}"


def _attention_case(name: str, att: Attention) -> Case:
    """The forward + backward program of a GDPA (silu) or SWA call."""
    import jax.numpy as jnp

    from pallas_kernels.gdpa.api import gdpa
    from pallas_kernels.swa.api import swa_attention

    lens = ((B,), jnp.int32)
    block_q, block_kv = att.override or (None, None)
    tiles = dict(block_q=block_q, block_kv=block_kv)

    def gdpa_loss(q, k, v, q_lens, kv_lens):
        o = gdpa(
            q,
            k,
            v,
            activation="silu",
            qk_scale=D**-0.5,
            out_scale=1 / att.tkv,
            q_lengths=q_lens,
            kv_lengths=kv_lens,
            backend="pallas",
            heads_per_step=att.heads,
            **tiles,
        )
        return o.astype(jnp.float32).sum()

    def swa_loss(q, k, v, lengths):
        o = swa_attention(
            q,
            k,
            v,
            q_lengths=lengths,
            kv_lengths=lengths,
            window=att.window,
            backend="pallas",
            heads_per_step=att.heads,
            **tiles,
        )
        return o.astype(jnp.float32).sum()

    def build(dev):
        qkv = ((B, T, H, D), (B, att.tkv, H, D), (B, att.tkv, H, D))
        if att.op == "gdpa":
            return _grad_compile(dev, gdpa_loss, *qkv, lens, lens)
        return _grad_compile(dev, swa_loss, *qkv, lens)

    kernels = tuple(f"{att.op}_{kind}_tpu" for kind in ("fwd", "dkdv", "dq"))
    return Case(name, kernels, build, att)


_HSP_KERNELS = ("seed_pooling_fwd_tpu", "seed_pooling_bwd_tpu")


def _hsp_build(dev, block_kv: int | None = None):
    """Forward + backward of seed pooling with HSP_SEEDS seeds (block_kv: None = the table's)."""
    import jax.numpy as jnp

    from pallas_kernels.hsp.api import seed_pooling

    def loss(seeds, k, v, kv_lengths):
        o = seed_pooling(
            seeds,
            k,
            v,
            kv_lengths=kv_lengths,
            backend="tpu",
            interpret=False,
            device_kind=dev.device_kind,
            block_kv=block_kv,
        )
        return o.astype(jnp.float32).sum()

    lens = ((B,), jnp.int32)
    return _grad_compile(dev, loss, (HSP_SEEDS, H, D), (B, T, H, D), (B, T, H, D), lens)


def _ceiling_case(bm: int, bn: int, bk: int) -> Case:
    """A bf16 [M, K] @ [K, N] Pallas matmul, fp32 accumulation, [bm, bk] x [bk, bn] blocks."""
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

    return Case("ceiling", ("mxu_ceiling_matmul",), build)


if __name__ == "__main__":
    main()
