"""HSP benchmark: seed pooling and the whole HSP block (pooling + 'o' + SumKronLinear), our
Pallas kernel vs the XLA composition vs tokamax attention, throughput vs B and T.

GPU / TPU:  python -m benchmarks.kernels.hsp --out benchmarks/results/hsp_<device>.json
CPU smoke:  python -m benchmarks.kernels.hsp --smoke --out /tmp/hsp.json
            (tiny shapes; the XLA reference and tokamax "xla" only: the Pallas kernel would
            run in interpret mode, which measures nothing; if asked for with --impls, its
            results carry "interpret": true)

Per case (B, T, S seeds, H heads of D, n_tok, rank r; bf16) and pooling implementation:
- pool_*: seed pooling alone, seeds [S, H, D] and k, v [B, T, H, D] -> [B, S, H, D];
- hsp_*: pooling, then the model's tail (`TAIL`: Dense 'o' over H·D, SumKronLinear) ->
  [B, n_tok, d_out], gradients w.r.t. seeds, k, v and the tail's weights;
and once per case, `tail_*`: the tail alone on a precomputed pooled array. tail_fwdbwd_ms /
hsp_fwdbwd_ms of hsp_pallas bounds what fusing the tail into the kernel could save (a fused
kernel still does the tail's FLOPs; it only avoids the round trip), the measurement
`pallas_kernels/hsp/api.py` defers the fusion decision to.
FLOPs count real (unpadded) tokens: pooling forward 4·S·Σ len·H·D, backward 2.5× forward;
kv_gbps = bytes of the real K and V rows / pool_fwd time (HSP is memory-bound: S FLOPs per
byte of K/V in bf16). examples_per_s = B / hsp_fwdbwd time. Baselines (bf16 matmul TFLOP/s,
copy GB/s, `kunlun_jax.bench.ceilings`) are measured in the same run (`gdpa.baselines`).
tokamax implementations are named explicitly; failures are recorded per implementation, not
raised.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tokamax

from benchmarks.kernels.gdpa import (
    BWD_FLOPS_FACTOR,
    baselines,
    bench_parser,
    describe_baselines,
    parse_bench_args,
    time_ms,
    write_report,
)
from kunlun_jax.model.common import Dense
from kunlun_jax.model.hsp import SumKronLinear
from kunlun_jax.provenance import environment
from pallas_kernels.hsp import seed_pooling

TOKAMAX_IMPLS = ("mosaic", "triton", "cudnn", "xla")
ALL_IMPLS = ("hsp_pallas", "hsp_reference", *(f"tokamax_{i}" for i in TOKAMAX_IMPLS))
SMOKE_IMPLS = ("hsp_reference", "tokamax_xla")
# --quick: the target (>= 3x the XLA composition) and the cuDNN yardstick.
QUICK_IMPLS = ("hsp_pallas", "hsp_reference", "tokamax_cudnn")
TIMED = ("pool_fwd", "pool_fwdbwd", "hsp_fwd", "hsp_fwdbwd")


@dataclasses.dataclass(frozen=True)
class Case:
    """One shape. lengths: "full" or "longtail" (log-normal, median T/4, clipped to [1, T])."""

    batch: int
    t: int
    seeds: int = 64
    heads: int = 4
    head_dim: int = 64
    n_tok: int = 16
    rank: int = 8
    lengths: str = "longtail"

    @property
    def name(self) -> str:
        return f"B{self.batch}_T{self.t}_{self.lengths}"

    @property
    def d(self) -> int:
        return self.heads * self.head_dim


class Tail(nn.Module):
    """The model's projections after the pooling (`SequenceSummary._seed_attention`'s 'o' and
    the 'sumkron' compression): [B, S, H, D] -> [B, n_tok, d_out = H·D]."""

    n_tok: int
    rank: int

    @nn.compact
    def __call__(self, pooled: jax.Array) -> jax.Array:
        b, s, h, dh = pooled.shape
        x = Dense(h * dh, ("heads", "embed"), use_bias=False, dtype=pooled.dtype, name="o")(
            pooled.reshape(b, s, h * dh)
        )
        return SumKronLinear(self.n_tok, h * dh, self.rank, pooled.dtype, name="compress")(x)


def default_cases(lengths: tuple[str, ...]) -> list[Case]:
    """The `base` config's HSP (d = 256, H = 4, S = 64, n_tok = 16, r = 8): T ∈ {256 … 4096}
    at B = 512, and B ∈ {64 … 2048} at T = 1024."""
    cases = []
    for kind in lengths:
        cases += [Case(512, t, lengths=kind) for t in (256, 512, 1024, 2048, 4096)]
        cases += [Case(b, 1024, lengths=kind) for b in (64, 128, 256, 1024, 2048)]
    return cases


def quick_cases() -> list[Case]:
    """`base`'s HSP at T ∈ {1024, 4096} (B = 512, long-tailed) and B = 2048 (T = 1024, full)."""
    return [Case(512, 1024), Case(512, 4096), Case(2048, 1024, lengths="full")]


def smoke_cases() -> list[Case]:
    """One tiny jagged case (each case costs a dozen CPU compiles)."""
    return [Case(2, 32, seeds=8, heads=2, head_dim=32, n_tok=2, rank=2)]


def case_lengths(case: Case, seed: int = 0) -> np.ndarray:
    """int32 kv lengths [B] for the case's distribution."""
    if case.lengths == "full":
        return np.full(case.batch, case.t, np.int32)
    rng = np.random.default_rng(seed)
    lens = np.ceil(rng.lognormal(np.log(case.t / 4), 1.0, case.batch))
    return np.clip(lens, 1, case.t).astype(np.int32)


def pool_fn(impl: str, block_kv: int | None) -> Callable:
    """pool(seeds [S, H, D], k, v [B, T, H, D], kv_lengths [B]) -> [B, S, H, D]."""
    if impl.startswith("hsp_"):
        backend = "pallas" if impl == "hsp_pallas" else "reference"
        blocks = dict(block_kv=block_kv) if backend == "pallas" else {}
        return lambda s, k, v, lens: seed_pooling(
            s, k, v, kv_lengths=lens, backend=backend, **blocks
        )
    tokamax_impl = impl.removeprefix("tokamax_")

    def pool(s, k, v, lens):
        q = jnp.broadcast_to(s[None].astype(k.dtype), (k.shape[0], *s.shape))
        return tokamax.dot_product_attention(
            q, k, v, key_value_seq_lengths=lens, implementation=tokamax_impl
        )

    return pool


def _timings(forward: Callable, args: tuple, n_diff: int, prefix: str, timing: dict) -> dict:
    """{prefix_fwd_ms, prefix_fwdbwd_ms}: jitted forward, and the grad of a weighted sum of its
    output w.r.t. the first n_diff args (the weights made before timing, an argument)."""
    out = jax.eval_shape(forward, *args)
    weights = jnp.asarray(np.cos(np.arange(out.size, dtype=np.float32)).reshape(out.shape))

    def loss(*a):
        *inputs, w = a
        return jnp.sum(forward(*inputs).astype(jnp.float32) * w)

    return {
        f"{prefix}_fwd_ms": time_ms(jax.jit(forward), args, **timing),
        f"{prefix}_fwdbwd_ms": time_ms(
            jax.jit(jax.grad(loss, argnums=tuple(range(n_diff)))), (*args, weights), **timing
        ),
    }


def run_case(
    case: Case, impls: list[str], args: argparse.Namespace, save: Callable[[dict], None]
) -> dict:
    """The tail's timings and, per implementation, pooling and HSP timings and rates;
    save(result) after the tail and after every implementation (a run stopped by a time
    limit keeps what it measured)."""
    lens_np = case_lengths(case)
    rng = np.random.default_rng(0)  # numpy: no eager XLA compiles for input generation

    def normal(*shape):
        return jnp.asarray(rng.standard_normal(shape, np.float32).astype(jnp.bfloat16))

    seeds = normal(case.seeds, case.heads, case.head_dim)
    k, v = (normal(case.batch, case.t, case.heads, case.head_dim) for _ in range(2))
    lens = jnp.asarray(lens_np)
    pooled = normal(case.batch, case.seeds, case.heads, case.head_dim)
    tail = Tail(case.n_tok, case.rank)
    tail_params = jax.jit(tail.init)(jax.random.key(0), pooled)
    timing = dict(iters=args.iters, warmup=args.warmup)
    pool_flops = 4.0 * case.seeds * case.d * float(lens_np.sum())
    real_kv_bytes = 2 * 2 * case.d * float(lens_np.sum())  # K and V, bf16
    result = dict(
        dataclasses.asdict(case),
        name=case.name,
        kv_lengths=lens_np.tolist(),
        pool_fwd_flops=pool_flops,
        tail=_timings(tail.apply, (tail_params, pooled), 2, "tail", timing),
        impls={},
    )
    save(result)
    for impl in impls:
        pool = pool_fn(impl, args.block_kv)

        def hsp(params, s, k, v, lens, pool=pool):
            return tail.apply(params, pool(s, k, v, lens))

        interpret = impl == "hsp_pallas" and jax.default_backend() not in ("gpu", "tpu")
        entry: dict = dict(error=None, interpret=interpret)
        try:
            entry |= _timings(pool, (seeds, k, v, lens), 3, "pool", timing)
            entry |= _timings(hsp, (tail_params, seeds, k, v, lens), 4, "hsp", timing)
        except Exception as e:
            entry["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        else:
            entry |= dict(
                pool_fwd_tflops=pool_flops / entry["pool_fwd_ms"] * 1e-9,
                pool_fwdbwd_tflops=(1 + BWD_FLOPS_FACTOR)
                * pool_flops
                / entry["pool_fwdbwd_ms"]
                * 1e-9,
                kv_gbps=real_kv_bytes / entry["pool_fwd_ms"] * 1e-6,
                examples_per_s=case.batch / entry["hsp_fwdbwd_ms"] * 1e3,
                tail_share_of_hsp=result["tail"]["tail_fwdbwd_ms"] / entry["hsp_fwdbwd_ms"],
            )
        result["impls"][impl] = entry
        _add_speedups(result["impls"])
        save(result)
    return result


def _add_speedups(entries: dict[str, dict]) -> None:
    """hsp_speedup_vs_reference (fwd+bwd) on every timed entry once hsp_reference is timed."""
    ref = entries.get("hsp_reference", {})
    for entry in entries.values():
        if entry["error"] is None and ref.get("error", "missing") is None:
            entry["hsp_speedup_vs_reference"] = ref["hsp_fwdbwd_ms"] / entry["hsp_fwdbwd_ms"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = bench_parser(__doc__, ALL_IMPLS)
    parser.add_argument(
        "--lengths", nargs="+", choices=("longtail", "full"), default=["longtail", "full"]
    )
    parser.add_argument("--block-kv", type=int, help="override hsp_pallas kv tile (tuning)")
    return parse_bench_args(parser, argv, SMOKE_IMPLS, ALL_IMPLS, QUICK_IMPLS)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.smoke:
        cases = smoke_cases()
    elif args.quick:
        cases = quick_cases()
    else:
        cases = default_cases(tuple(args.lengths))
    report = dict(
        environment=environment(),
        baselines=baselines(args.smoke, args.iters),
        flops_convention="pool fwd 4·S·Σlen·H·D on real tokens; bwd 2.5× fwd",
        results=[],
    )
    print(describe_baselines(report))

    def save(result: dict) -> None:
        if not report["results"] or report["results"][-1] is not result:
            report["results"].append(result)
        write_report(args.out, report)

    for case in cases:
        r = run_case(case, args.impls, args, save)
        print(f"{case.name:24s} tail fwd+bwd {r['tail']['tail_fwdbwd_ms']:8.3f} ms")
        for impl, e in r["impls"].items():
            if e["error"] is None:
                summary = " ".join(f"{k} {e[f'{k}_ms']:8.3f} ms" for k in TIMED)
                summary += f"  {e['examples_per_s']:10.0f} ex/s  kv {e['kv_gbps']:7.1f} GB/s"
            else:
                summary = e["error"]
            print(f"  {impl:16s} {summary}")
    return report


if __name__ == "__main__":
    main()
