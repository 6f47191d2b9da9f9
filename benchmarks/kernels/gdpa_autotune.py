"""Autotune GDPA tiles on the attached device: fwd+bwd time per candidate, the fastest kept.

    python -m benchmarks.kernels.gdpa_autotune --impl pallas_triton --out OUT.json \
        [--budget-s 300] [--install]
CPU smoke:  python -m benchmarks.kernels.gdpa_autotune --impl jax_triton --smoke --out /tmp/t.json
            (tiny shapes, two candidates, interpret mode: checks the plumbing, times nothing)

For each key (head dim, Tkv regime) of `KEYS`, at a production shape of that regime (bf16,
H = 8, Tq = 4096; Tkv = 64 "short" or 4096 "long", full lengths, silu), every candidate
`BlockSizes` (the same tiles forward and backward, Triton warps per direction) is timed as
one jitted fwd+bwd (`median_of_means`) under `tuning.override_block_sizes`, beside the
hand-picked table's tiles. pallas_mosaic_gpu: its untuned tiles beside the kv block of the
forward and dQ (64, 128) times the query block of the dK/dV kernel (Hopper: 32, 64; at 64 a
few loop-invariant registers spill, at 32 the score MMAs are half as wide: only a GPU says
which costs more).
For jax_triton on a GPU, candidates that spill registers inside their MMA loops or overflow
shared memory (`compile_for_cuda`) are dropped without timing. The report is rewritten after every
candidate; `--resume-from` an earlier report (same impl and device kind) skips the candidates
it timed, and a run cut off by `--budget-s` keeps its best so far. `--install` merges each
key's winner into `pallas_kernels/gdpa/tuned.json`, which `tuning.default_block_sizes` (and
`mosaic_gpu.block_sizes`) reads before the hand-picked table (exact device kind); commit it
with the report it came from.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.kernels.gdpa import write_report
from kunlun_jax.bench.ceilings import median_of_means
from kunlun_jax.provenance import environment
from pallas_kernels.common.target import target_capability, target_device, target_platform
from pallas_kernels.common.tiles import BlockSizes, triton_sizes
from pallas_kernels.gdpa import gdpa, mosaic_gpu
from pallas_kernels.gdpa.tuning import TUNED_PATH, override_block_sizes, table_block_sizes

IMPLS = ("pallas_triton", "jax_triton", "pallas_tpu", mosaic_gpu.IMPL)
KEYS = ((64, "short"), (128, "short"), (64, "long"), (128, "long"))  # (head dim, regime)
HEADS, TQ, BATCH = 8, 4096, 4
TKV = {"short": 64, "long": 4096}
SMOKE_TKV = {"short": 16, "long": 300}  # CPU interpret mode; > SHORT_KV_MAX is "long"


@dataclasses.dataclass(frozen=True)
class Shape:
    batch: int
    heads: int
    tq: int
    tkv: int
    head_dim: int


def candidates(impl: str) -> list[BlockSizes]:
    """The search space: powers of two for Triton (with warps and stages), multiples of 128 for
    the TPU MXU; Mosaic GPU: the streamed blocks its kernels take on this device's
    architecture (`mosaic_gpu.block_sizes`)."""
    if impl == mosaic_gpu.IMPL:
        arch = _mosaic_arch()
        untuned, kernels = mosaic_gpu.untuned_block_sizes(arch), mosaic_gpu.ARCHS[arch]
        return [
            dataclasses.replace(untuned, block_kv=kv, block_q_bwd=q_bwd)
            for kv, q_bwd in itertools.product(mosaic_gpu.BLOCK_KV_CHOICES, kernels.DKDV_Q_BLOCKS)
        ]
    if impl == "pallas_tpu":
        return [
            BlockSizes(q, kv, q, kv)
            for q, kv in itertools.product((256, 512, 1024), (128, 256, 512))
        ]
    # (forward, backward) warps: 8 backward warps on 64-row tiles repeat MMAs (gdpa.tuning).
    warps = ((4, 4), (8, 4), (8, 8))
    grid = itertools.product((64, 128), (32, 64, 128), warps, (2, 3))
    return [triton_sizes(q, kv, q, kv, warps=w, stages=(s, s)) for q, kv, w, s in grid]


def _mosaic_arch() -> str:
    """The Mosaic GPU kernels of the target device (Hopper's on CPU: the interpreter)."""
    return mosaic_gpu.arch_for(target_device())


def untuned_block_sizes(impl: str, device_kind: str, head_dim: int, regime: str) -> BlockSizes:
    """The tiles `impl` takes without a measured row: the hand-picked table's, Mosaic GPU's own."""
    if impl == mosaic_gpu.IMPL:
        return mosaic_gpu.untuned_block_sizes(_mosaic_arch())
    platform = "gpu" if impl == "jax_triton" else target_platform()
    return table_block_sizes(platform, device_kind, head_dim, regime)


def statically_fits(impl: str, shape: Shape, sizes: BlockSizes) -> str | None:
    """None if `sizes` may run; else why not (jax_triton on a GPU: loop spills or shared memory,
    `triton_cuda_resources.why_not_fit`)."""
    if impl != "jax_triton" or target_platform() != "gpu":
        return None
    from benchmarks.kernels.triton_cuda_resources import gdpa_launches, why_not_fit
    from pallas_kernels.common.triton_compile import compile_for_cuda
    from pallas_kernels.gdpa.blockwise import GdpaSpec

    capability = target_capability()
    spec = GdpaSpec("silu", 1.0, 1.0, None, False)
    dims = (shape.batch, shape.heads, shape.tq, shape.tkv, shape.head_dim)
    for launch in gdpa_launches(spec, sizes, *dims).values():
        if reason := why_not_fit(compile_for_cuda(launch, capability)):
            return reason
    return None


def time_fwdbwd_ms(
    impl: str, shape: Shape, sizes: BlockSizes | None, iters: int, warmup: int
) -> float:
    """Median fwd+bwd time (ms) of one jitted grad under `sizes` (None: the normal lookup)."""
    rng = np.random.default_rng(0)
    q_shape = (shape.batch, shape.tq, shape.heads, shape.head_dim)
    kv_shape = (shape.batch, shape.tkv, shape.heads, shape.head_dim)
    q, k, v = (
        jnp.asarray(rng.standard_normal(s, np.float32)).astype(jnp.bfloat16)
        for s in (q_shape, kv_shape, kv_shape)
    )

    def loss(q, k, v):
        o = gdpa(q, k, v, activation="silu", qk_scale=shape.head_dim**-0.5, backend=impl)
        return jnp.sum(o.astype(jnp.float32))

    # The override is read while tracing, i.e. during the first (warm-up) call.
    with override_block_sizes(sizes) if sizes else contextlib.nullcontext():
        step = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        return 1e3 * median_of_means(step, (q, k, v), iters=iters, warmup=warmup)


def tune_key(impl, shape, pool, report_key, args, deadline, save) -> None:
    """Time every candidate of `pool` for one key into report_key["candidates"] (skipping
    those already there), then set report_key["best"]."""
    done = {json.dumps(c["sizes"], sort_keys=True) for c in report_key["candidates"]}
    for sizes in pool:
        tag = json.dumps(dataclasses.asdict(sizes), sort_keys=True)
        if tag in done:
            continue
        if time.monotonic() > deadline:
            report_key["stopped"] = "budget"
            break
        entry = dict(sizes=dataclasses.asdict(sizes), ms=None, error=None)
        try:
            entry["error"] = statically_fits(impl, shape, sizes)
            if entry["error"] is None:
                entry["ms"] = time_fwdbwd_ms(impl, shape, sizes, args.iters, args.warmup)
        except Exception as e:  # recorded per candidate: a bad tile must not stop the search
            entry["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        report_key["candidates"].append(entry)
        timed = [c for c in report_key["candidates"] if c["ms"] is not None]
        if timed:
            best = min(timed, key=lambda c: c["ms"])
            report_key["best"] = dict(sizes=best["sizes"], ms=best["ms"])
        print(f"  {tag} -> {entry['ms'] if entry['error'] is None else entry['error']}")
        save()


def install(report: dict, path: Path = TUNED_PATH) -> list[dict]:
    """Merge the report's winners into the measured table at `path`; returns its rows."""
    rows = json.loads(path.read_text()) if path.exists() else []
    env = report["environment"]
    for key in report["keys"]:
        if key.get("best") is None:
            continue
        row = dict(
            impl=report["impl"],
            device_kind=env["device_kind"],
            head_dim=key["head_dim"],
            regime=key["regime"],
            sizes=key["best"]["sizes"],
            fwdbwd_ms=key["best"]["ms"],
            table_fwdbwd_ms=key.get("table_ms"),
            source=dict(date=env["date"], command=env["command"]),
        )
        same = (row["impl"], row["device_kind"], row["head_dim"], row["regime"])
        rows = [
            r for r in rows if (r["impl"], r["device_kind"], r["head_dim"], r["regime"]) != same
        ]
        rows.append(row)
    path.write_text(json.dumps(rows, indent=1) + "\n")
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", choices=IMPLS, required=True)
    parser.add_argument("--out", type=Path, required=True, help="JSON report path")
    parser.add_argument("--budget-s", type=float, default=600, help="stop timing after this")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, two candidates (CPU)")
    parser.add_argument(
        "--resume-from", type=Path, help="earlier report: its candidates are not timed again"
    )
    parser.add_argument(
        "--install", action="store_true", help=f"merge winners into {TUNED_PATH.name}"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    deadline = time.monotonic() + args.budget_s
    report = dict(environment=environment(), impl=args.impl, keys=[])
    if args.resume_from and args.resume_from.exists():
        earlier = json.loads(args.resume_from.read_text())
        same = (earlier["impl"], earlier["environment"]["device_kind"])
        if same == (args.impl, report["environment"]["device_kind"]):
            report["keys"] = earlier["keys"]
            # its timings came from that run's machine (same device kind, maybe not the same
            # GPU, clocks or date): its environment is kept beside them
            report["resumed_from"] = dict(
                path=str(args.resume_from), environment=earlier["environment"]
            )
    keys = [(32, "short"), (32, "long")] if args.smoke else list(KEYS)
    pool = candidates(args.impl)[:2] if args.smoke else candidates(args.impl)
    device_kind = report["environment"]["device_kind"]
    for head_dim, regime in keys:
        tkv = (SMOKE_TKV if args.smoke else TKV)[regime]
        shape = (
            Shape(1, 1, 32, tkv, head_dim) if args.smoke else Shape(BATCH, HEADS, TQ, tkv, head_dim)
        )
        key = next(
            (k for k in report["keys"] if (k["head_dim"], k["regime"]) == (head_dim, regime)), None
        )
        if key is None:
            key = dict(
                head_dim=head_dim, regime=regime, shape=dataclasses.asdict(shape), candidates=[]
            )
            report["keys"].append(key)
        print(f"{args.impl} D={head_dim} {regime}: {len(pool)} candidates")
        if "table_ms" not in key and time.monotonic() < deadline:
            key["table_sizes"] = dataclasses.asdict(
                untuned_block_sizes(args.impl, device_kind, head_dim, regime)
            )
            key["table_ms"] = time_fwdbwd_ms(
                args.impl, shape, BlockSizes(**key["table_sizes"]), args.iters, args.warmup
            )
        tune_key(
            args.impl, shape, pool, key, args, deadline, lambda: write_report(str(args.out), report)
        )
        if key.get("best") and key.get("table_ms"):
            key["speedup_vs_table"] = key["table_ms"] / key["best"]["ms"]
    write_report(str(args.out), report)
    if args.install:
        install(report)
    return report


if __name__ == "__main__":
    main()
