"""GDPA kernel benchmark: forward, backward and fwd+bwd TFLOP/s with same-run baselines.

GPU / TPU:  python benchmarks/kernels/gdpa.py --out benchmarks/results/gdpa_<device>.json
            (--quick: seven production shapes and the main implementations, ~3 min)
CPU smoke:  python benchmarks/kernels/gdpa.py --smoke --out /tmp/gdpa.json
            (tiny shapes; the reference under XLA and tokamax "xla" only: Pallas would need
            interpret mode, which measures nothing)

FLOPs count real (unpadded) tokens, per batch row and head: forward 4·D per (query, key) pair
the mask leaves (`visible_pairs`: lengths, window, causal), backward 2.5× forward. Softmax
attention baselines are counted the same way at the same shapes, also where they compute
more (`computes`: tokamax_mosaic gets no query lengths, tokamax_cudnn_padded no lengths), so
their TFLOP/s are effective rates of the same work. Backward is timed alone
(the jitted VJP applied to saved residuals); fwd+bwd is one jitted grad. Baselines measured
in the same run (`kunlun_jax.bench.ceilings`): a bf16 matmul (TFLOP/s: the practical
tensor-core / MXU peak; f32 on CPU) and an elementwise device-to-device copy (GB/s); every
result also reports its fraction of that matmul and of the published bf16 peak
(`kunlun_jax.bench.roofline.PEAKS`).

Implementations: gdpa_pallas (this platform's Pallas kernel), gdpa_mosaic_gpu (the Mosaic GPU
kernels of the device's architecture, Hopper wgmma or Blackwell tcgen05, D <= 128),
gdpa_jax_triton (the Triton-language kernels through jax_triton.triton_call), gdpa_reference
(plain jnp under XLA) and tokamax_<impl> softmax attention for impl in mosaic, triton, cudnn,
xla, each named explicitly (tokamax's default list silently falls back to XLA), plus
tokamax_cudnn_padded (cuDNN on the padded batch, lengths ignored; jagged cases only). Memory
traffic: the minimal bytes (`minimal_bytes`: real input rows, whole outputs) per second, as a
fraction of the same-run copy; short-K/V GDPA is memory-bound. `summary` puts each case's
numbers beside the issue's targets: fractions of the matmul, speedups over the XLA reference,
over cuDNN on the padded batch (jagged cases) and over cuDNN. Failures are recorded per
implementation, not raised.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tokamax

from kunlun_jax.bench.ceilings import measure_ceilings, median_of_means
from kunlun_jax.bench.roofline import table_peak
from kunlun_jax.provenance import environment
from pallas_kernels.gdpa import gdpa

TOKAMAX_IMPLS = ("mosaic", "triton", "cudnn", "xla")
GDPA_BACKENDS = {
    "gdpa_pallas": "pallas",
    "gdpa_mosaic_gpu": "pallas_mosaic_gpu",  # GPU only; errors are recorded per case
    "gdpa_jax_triton": "jax_triton",  # GPU only (jax-triton); Triton-language kernels
    "gdpa_reference": "reference",
}
# tokamax_cudnn_padded: cuDNN on the padded batch (no lengths), the jagged yardstick;
# run on jagged cases only (on full lengths it is tokamax_cudnn).
PADDED_IMPL = "tokamax_cudnn_padded"
ALL_IMPLS = (*GDPA_BACKENDS, *(f"tokamax_{i}" for i in TOKAMAX_IMPLS), PADDED_IMPL)
SMOKE_IMPLS = ("gdpa_reference", "tokamax_xla")
BWD_FLOPS_FACTOR = 2.5
FLOPS_CONVENTION = "fwd 4·D per visible (query, key) pair of real tokens and head; bwd 2.5× fwd"
TOKENS_PER_BATCH = 16384  # batch = TOKENS_PER_BATCH // Tq keeps the work per case similar
# Cross-attention (short K/V) is memory-bound: 8x the tokens, so that Q and O (256 MiB each at
# H = 8, D = 128, bf16) outgrow the L2 cache (50-60 MB on H100/H200) that repeated timing runs
# would otherwise read from, and a call lasts well above its launch overhead.
CROSS_TOKENS_PER_BATCH = 8 * TOKENS_PER_BATCH


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark shape. lengths: "full", "uniform" (U[1, T]) or "longtail" (log-normal,
    median T/8); self-attention rows share q/kv lengths, cross-attention K/V (summary tokens)
    are always full."""

    name: str
    batch: int
    heads: int
    tq: int
    tkv: int
    head_dim: int
    lengths: str
    window: int | None = None
    causal: bool = False

    @property
    def is_self(self) -> bool:
        return self.name.startswith("self")


def default_cases(heads: tuple[int, ...], head_dim: int) -> list[Case]:
    """Self T ∈ {256, 1024, 4096} and cross Tq ∈ {1024, 4096} × Tkv ∈ {16, 64, 256}, every
    length distribution, plus causal and windowed self-attention at T = 4096."""
    cases = []
    for h in heads:
        for lengths in ("full", "uniform", "longtail"):
            for t in (256, 1024, 4096):
                cases.append(Case(f"self_T{t}", TOKENS_PER_BATCH // t, h, t, t, head_dim, lengths))
            for tq in (1024, 4096):
                for tkv in (16, 64, 256):
                    name = f"cross_Tq{tq}_Tkv{tkv}"
                    batch = CROSS_TOKENS_PER_BATCH // tq
                    cases.append(Case(name, batch, h, tq, tkv, head_dim, lengths))
        b = TOKENS_PER_BATCH // 4096
        cases.append(Case("self_T4096_causal", b, h, 4096, 4096, head_dim, "full", causal=True))
        cases.append(Case("self_T4096_w100", b, h, 4096, 4096, head_dim, "full", window=100))
    return cases


QUICK_IMPLS = (
    "gdpa_pallas",
    "gdpa_mosaic_gpu",
    "gdpa_jax_triton",
    "gdpa_reference",
    "tokamax_cudnn",
    PADDED_IMPL,
    "tokamax_mosaic",
)


def quick_cases(head_dim: int) -> list[Case]:
    """Seven production shapes (H = 8) for one short GPU call: both regimes, each length
    distribution, causal; the full grid is `default_cases`."""
    h, b, cross_b = 8, TOKENS_PER_BATCH // 4096, CROSS_TOKENS_PER_BATCH // 4096
    return [  # regimes alternate: a run cut short by its time limit still has both
        Case("self_T4096", b, h, 4096, 4096, head_dim, "full"),
        Case("cross_Tq4096_Tkv64", cross_b, h, 4096, 64, head_dim, "full"),
        Case("self_T4096", b, h, 4096, 4096, head_dim, "longtail"),
        Case("cross_Tq4096_Tkv256", cross_b, h, 4096, 256, head_dim, "longtail"),
        Case("self_T4096_causal", b, h, 4096, 4096, head_dim, "full", causal=True),
        Case(
            "cross_Tq1024_Tkv16", CROSS_TOKENS_PER_BATCH // 1024, h, 1024, 16, head_dim, "uniform"
        ),
        Case("self_T1024", TOKENS_PER_BATCH // 1024, h, 1024, 1024, head_dim, "full"),
    ]


def smoke_cases() -> list[Case]:
    """One tiny jagged, windowed cross-attention case (each case costs ~6 CPU compiles)."""
    return [Case("cross_Tq32_Tkv16", 2, 2, 32, 16, 32, "longtail", window=4)]


def case_lengths(case: Case, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """int32 (q_lengths, kv_lengths) [B] for the case's length distribution."""
    rng = np.random.default_rng(seed)
    t = case.tq
    if case.lengths == "full":
        q = np.full(case.batch, t)
    elif case.lengths == "uniform":
        q = rng.integers(1, t + 1, case.batch)
    else:
        q = np.clip(np.ceil(rng.lognormal(np.log(t / 8), 1.0, case.batch)), 1, t)
    kv = q if case.is_self else np.full(case.batch, case.tkv)
    return q.astype(np.int32), kv.astype(np.int32)


def visible_pairs(q_len: int, kv_len: int, window: int | None, causal: bool) -> int:
    """(query, key) pairs the mask leaves among q_len × kv_len real tokens: |i - j| <= window,
    j <= i when causal (the GDPA / SWA mask)."""
    i = np.arange(q_len)
    lo = np.zeros(q_len, np.int64) if window is None else np.maximum(i - window, 0)
    hi = np.full(q_len, kv_len - 1, np.int64)
    if window is not None:
        hi = np.minimum(hi, i + window)
    if causal:
        hi = np.minimum(hi, i)
    return int(np.maximum(hi - lo + 1, 0).sum())


def forward_flops(case: Case, q_lens: np.ndarray, kv_lens: np.ndarray) -> float:
    """4·D per visible (query, key) pair of real tokens and head (`visible_pairs`): QKᵀ and PV."""
    pairs = sum(
        visible_pairs(int(q), int(kv), case.window, case.causal)
        for q, kv in zip(q_lens, kv_lens, strict=True)
    )
    return 4.0 * case.head_dim * case.heads * float(pairs)


def minimal_bytes(case: Case, q_lens: np.ndarray, kv_lens: np.ndarray) -> tuple[float, float]:
    """(forward, backward) bytes a kernel must move at least, bf16: forward reads the real
    rows of Q, K, V and writes O; backward reads Q, K, V, dO and writes dQ, dK, dV (counted
    like the copy ceiling: bytes read + written). Outputs are written whole: their padded rows
    must be zero. Short-K/V GDPA is bound by these, not by FLOPs."""
    row = 2.0 * case.heads * case.head_dim  # bytes of one token's [H, D] in bf16
    q, kv = float(np.sum(q_lens)), float(np.sum(kv_lens))
    all_q, all_kv = float(case.batch * case.tq), float(case.batch * case.tkv)
    return row * (q + 2 * kv + all_q), row * (2 * q + 2 * kv + all_q + 2 * all_kv)


def time_ms(fn: Callable, args: tuple, *, iters: int, warmup: int) -> float:
    """`kunlun_jax.bench.ceilings.median_of_means` in milliseconds."""
    return 1e3 * median_of_means(fn, args, iters=iters, warmup=warmup)


def attention_fn(impl: str, case: Case, block_q: int | None, block_kv: int | None) -> Callable:
    """attend(q, k, v, q_lengths, kv_lengths) -> o for one implementation."""
    scale = case.head_dim**-0.5
    if impl.startswith("gdpa_"):
        backend = GDPA_BACKENDS[impl]
        blocks = dict(block_q=block_q, block_kv=block_kv) if backend == "pallas" else {}

        def attend(q, k, v, q_lens, kv_lens):
            return gdpa(
                q,
                k,
                v,
                activation="silu",
                qk_scale=scale,
                out_scale=1.0 / case.tkv,
                q_lengths=q_lens,
                kv_lengths=kv_lens,
                window=case.window,
                causal=case.causal,
                backend=backend,
                **blocks,
            )

        return attend
    window = None if case.window is None else (case.window, case.window)
    tokamax_impl = impl.removeprefix("tokamax_").removesuffix("_padded")
    padded = impl.endswith("_padded")  # lengths ignored: the whole padded batch is computed
    # tokamax 0.0.17's Mosaic GPU kernel cannot lower query lengths (see
    # pallas_kernels/swa/tokamax_gpu.py) and would only mask with them: it gets kv lengths.
    pass_q_lens = not padded and tokamax_impl != "mosaic"

    def attend(q, k, v, q_lens, kv_lens):
        return tokamax.dot_product_attention(
            q,
            k,
            v,
            scale=scale,
            is_causal=case.causal,
            query_seq_lengths=q_lens if pass_q_lens else None,
            key_value_seq_lengths=None if padded else kv_lens,
            local_window_size=window,
            implementation=tokamax_impl,
        )

    return attend


def run_case(
    case: Case, impl: str, args: argparse.Namespace, make_attend: Callable = attention_fn
) -> dict:
    """Timings and TFLOP/s of one (case, implementation); `error` set instead on failure.
    make_attend(impl, case, block_q, block_kv) -> attend(q, k, v, q_lengths, kv_lengths): the
    op under test (GDPA here; other attention benchmarks pass their own)."""
    q_np, kv_np = case_lengths(case)
    fwd_flops = forward_flops(case, q_np, kv_np)
    result = dict(
        dataclasses.asdict(case),
        impl=impl,
        q_lengths=q_np.tolist(),
        kv_lengths=kv_np.tolist(),
        fwd_flops=fwd_flops,
        error=None,
    )
    rng = np.random.default_rng(0)  # numpy: no eager XLA compiles for input generation
    q_shape = (case.batch, case.tq, case.heads, case.head_dim)
    kv_shape = (case.batch, case.tkv, case.heads, case.head_dim)
    q, k, v, do = (
        jnp.asarray(rng.standard_normal(shape, np.float32).astype(jnp.bfloat16))
        for shape in (q_shape, kv_shape, kv_shape, q_shape)
    )
    inputs = (q, k, v, jnp.asarray(q_np), jnp.asarray(kv_np))
    attend = make_attend(impl, case, args.block_q, args.block_kv)

    def loss(q, k, v, q_lens, kv_lens, do):
        o = attend(q, k, v, q_lens, kv_lens)
        return jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32))

    def forward_with_vjp(q, k, v, q_lens, kv_lens):
        return jax.vjp(lambda q, k, v: attend(q, k, v, q_lens, kv_lens), q, k, v)[1]

    def backward(vjp_fn, do):
        return vjp_fn(do)

    timing = dict(iters=args.iters, warmup=args.warmup)
    try:
        fwd_ms = time_ms(jax.jit(attend), inputs, **timing)
        # Backward alone: the VJP (a pytree holding the residuals) applied to dO.
        vjp_fn = jax.jit(forward_with_vjp)(*inputs)
        bwd_ms = time_ms(jax.jit(backward), (vjp_fn, do), **timing)
        fwdbwd = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        fwdbwd_ms = time_ms(fwdbwd, (*inputs, do), **timing)
    except Exception as e:
        result["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        return result
    bwd_flops = BWD_FLOPS_FACTOR * fwd_flops
    fwd_bytes, bwd_bytes = minimal_bytes(case, q_np, kv_np)
    result.update(
        fwd_ms=fwd_ms,
        bwd_ms=bwd_ms,
        fwdbwd_ms=fwdbwd_ms,
        fwd_tflops=fwd_flops / fwd_ms * 1e-9,
        bwd_tflops=bwd_flops / bwd_ms * 1e-9,
        fwdbwd_tflops=(fwd_flops + bwd_flops) / fwdbwd_ms * 1e-9,
        fwd_bytes=fwd_bytes,
        bwd_bytes=bwd_bytes,
        fwd_gbps=fwd_bytes / fwd_ms * 1e-6,
        bwd_gbps=bwd_bytes / bwd_ms * 1e-6,
    )
    return result


def computes(impl: str, case: Case) -> str:
    """What an implementation computes of a case; FLOPs count the real tokens whatever it is."""
    if impl == PADDED_IMPL:
        return "padded batch (no lengths)"
    if impl == "tokamax_mosaic" and case.lengths != "full":
        return "padded query rows (no query lengths)"
    return "real tokens"


OUR_KERNELS = ("gdpa_pallas", "gdpa_mosaic_gpu", "gdpa_jax_triton")


def target_summary(results: list[dict]) -> list[dict]:
    """Per case and GDPA kernel, its numbers beside the issue's H100 targets: forward and
    backward fractions of the same-run matmul (>= 0.70 / 0.50), speedups over the XLA
    reference (>= 3), over cuDNN on the padded batch (jagged cases: > 1) and over cuDNN
    given the lengths (None where that row failed or was not run)."""
    cases: dict[tuple, dict[str, dict]] = {}
    for r in results:
        if r["error"] is None:
            key = (r["name"], r["heads"], r["lengths"], r["window"], r["causal"])
            cases.setdefault(key, {})[r["impl"]] = r
    rows = []
    for (name, heads, lengths, window, causal), by_impl in cases.items():
        for impl in OUR_KERNELS:
            if (r := by_impl.get(impl)) is None:
                continue
            row = dict(
                name=name,
                heads=heads,
                lengths=lengths,
                window=window,
                causal=causal,
                impl=impl,
                fwd_fraction_of_matmul=r["fwd_fraction_of_matmul"],
                bwd_fraction_of_matmul=r["bwd_fraction_of_matmul"],
                fwd_fraction_of_copy=r["fwd_fraction_of_copy"],
            )
            for base, label in (
                ("gdpa_reference", "reference"),
                (PADDED_IMPL, "cudnn_padded"),
                ("tokamax_cudnn", "cudnn"),
            ):
                b = by_impl.get(base)
                for kind in ("fwd", "bwd", "fwdbwd"):
                    ratio = b[f"{kind}_ms"] / r[f"{kind}_ms"] if b else None
                    row[f"{kind}_speedup_vs_{label}"] = ratio
            rows.append(row)
    return rows


def baselines(smoke: bool, iters: int) -> dict:
    """The device's ceilings measured in this run (`kunlun_jax.bench.ceilings`: a matmul in
    bf16, f32 on CPU, and an elementwise copy) and its published bf16 peak (None on a CPU)."""
    ceilings = measure_ceilings(
        matmul_n=256 if smoke else None, copy_elements=(1 << 20) if smoke else None, iters=iters
    )
    peak = table_peak(jax.devices()[0].device_kind)
    return dict(
        dataclasses.asdict(ceilings),
        table_peak_bf16_tflops=peak.bf16_tflops if peak else None,
        table_peak_source=peak.source if peak else None,
    )


def add_fractions(result: dict, ceilings: dict) -> None:
    """Adds TFLOP/s as fractions of the same-run matmul and of the published peak (fwd, bwd,
    fwd+bwd), and the minimal traffic's GB/s as fractions of the same-run copy (fwd, bwd)."""
    table = ceilings["table_peak_bf16_tflops"]
    for kind in ("fwd", "bwd", "fwdbwd"):
        tflops = result[f"{kind}_tflops"]
        result[f"{kind}_fraction_of_matmul"] = tflops / ceilings["matmul_tflops"]
        result[f"{kind}_fraction_of_table_peak"] = tflops / table if table else None
    for kind in ("fwd", "bwd"):
        if f"{kind}_gbps" in result:
            result[f"{kind}_fraction_of_copy"] = result[f"{kind}_gbps"] / ceilings["copy_gbps"]


def describe_baselines(report: dict) -> str:
    """One line: device, same-run matmul and copy ceilings, published peak."""
    b = report["baselines"]
    table = b["table_peak_bf16_tflops"]
    return (
        f"{report['environment']['device_kind']}: {b['matmul_dtype']} matmul "
        f"{b['matmul_tflops']:.3g} TFLOP/s, copy {b['copy_gbps']:.3g} GB/s, published bf16 peak "
        + (f"{table} TFLOP/s" if table else "none")
    )


def write_report(path: str, report: dict) -> None:
    """Write the JSON report atomically (a temporary file renamed over `path`); benchmarks call
    it after every result, so a run stopped by a time limit keeps what it measured."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, path)


def bench_parser(doc: str, all_impls: Sequence[str]) -> argparse.ArgumentParser:
    """Parser with the arguments every kernel benchmark takes (--out, --smoke, --quick,
    --impls, --iters, --warmup); `doc` is the benchmark module's docstring."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON output path")
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--smoke", action="store_true", help="tiny shapes, runs on CPU")
    sizes.add_argument(
        "--quick", action="store_true", help="a few production shapes: one short GPU call"
    )
    parser.add_argument("--impls", nargs="+", choices=all_impls, help="subset to run")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    return parser


def parse_bench_args(
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    smoke_impls: Sequence[str],
    all_impls: Sequence[str],
    quick_impls: Sequence[str] | None = None,
) -> argparse.Namespace:
    """Parse `argv`; --smoke means 2 iterations, 1 warmup and `smoke_impls`, --quick means
    `quick_impls` (default: all), unless --impls is given; otherwise every implementation."""
    args = parser.parse_args(argv)
    if args.smoke:
        args.iters, args.warmup = 2, 1
        args.impls = args.impls or list(smoke_impls)
    if args.quick:
        args.impls = args.impls or list(quick_impls or all_impls)
    args.impls = args.impls or list(all_impls)
    return args


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = bench_parser(__doc__, ALL_IMPLS)
    parser.add_argument("--heads", nargs="+", type=int, default=[4, 8])
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--block-q", type=int, help="override gdpa_pallas tiles (tuning)")
    parser.add_argument("--block-kv", type=int, help="override gdpa_pallas tiles (tuning)")
    return parse_bench_args(parser, argv, SMOKE_IMPLS, ALL_IMPLS, QUICK_IMPLS)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.smoke:
        cases = smoke_cases()
    elif args.quick:
        cases = quick_cases(args.head_dim)
    else:
        cases = default_cases(tuple(args.heads), args.head_dim)
    report = dict(
        environment=environment(),
        baselines=baselines(args.smoke, args.iters),
        flops_convention=FLOPS_CONVENTION,
        results=[],
    )
    print(describe_baselines(report))
    for case in cases:
        for impl in args.impls:
            if impl == PADDED_IMPL and case.lengths == "full":
                continue
            r = run_case(case, impl, args)
            r["computes"] = computes(impl, case)
            if r["error"] is None:
                add_fractions(r, report["baselines"])
                summary = " ".join(f"{k} {r[f'{k}_tflops']:8.3g}" for k in ("fwd", "bwd", "fwdbwd"))
            else:
                summary = r["error"]
            print(f"{case.name:22s} H{case.heads} {case.lengths:8s} {impl:16s} {summary}")
            report["results"].append(r)
            report["summary"] = target_summary(report["results"])
            write_report(args.out, report)
    report["summary"] = target_summary(report["results"])
    write_report(args.out, report)
    return report


if __name__ == "__main__":
    main()
