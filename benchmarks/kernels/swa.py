"""SWA benchmark: sliding-window vs full softmax attention, our kernel vs XLA vs tokamax.

GPU / TPU:  python -m benchmarks.kernels.swa --out benchmarks/results/swa_<device>.json \
                --plot benchmarks/results/swa_<device>.png
CPU smoke:  python -m benchmarks.kernels.swa --smoke --out /tmp/swa.json
            (tiny shapes, tokamax "xla" only: it checks the plumbing in ~4 compiles per case;
            Pallas kernels would need interpret mode, which measures nothing)

Cases: self-attention over T ∈ {1024, 2048, 4096, 8192} (batch = 16384 / T) with the window w
(default 128) and without (full attention, same T, same implementation), full lengths; plus
jagged ("uniform" lengths) and causal windowed cases at T = 4096. The sweep section of the JSON
(and the optional plot) gives fwd+bwd time vs T per implementation at fixed w, with the full
attention time and the speedup full / SWA beside it.

Implementations are `swa_attention` backends, each named explicitly: pallas_tpu (ours; TPU
only, skipped elsewhere), jax_triton (ours, block-sparse Triton-language kernels; GPU),
reference (plain jnp under XLA, dense masked scores: O(T²)), and
tokamax_<impl> for impl in mosaic, triton, cudnn, xla, xla_chunked. Failures are recorded per
implementation, not raised. FLOPs, timing and same-run baselines (bf16 matmul TFLOP/s, copy
GB/s) follow benchmarks/kernels/gdpa.py: forward 4·D per (query, key) pair the window, the
lengths and causality leave, per head, backward 2.5× forward.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from benchmarks.kernels.gdpa import (
    FLOPS_CONVENTION,
    TOKENS_PER_BATCH,
    Case,
    add_fractions,
    baselines,
    bench_parser,
    describe_baselines,
    parse_bench_args,
    run_case,
    write_report,
)
from kunlun_jax.provenance import environment
from pallas_kernels.swa import swa_attention
from pallas_kernels.swa.api import TOKAMAX_BACKENDS

ALL_IMPLS = ("pallas_tpu", "jax_triton", "reference", *TOKAMAX_BACKENDS)
SMOKE_IMPLS = ("tokamax_xla",)
SWEEP_T = (1024, 2048, 4096, 8192)


def sweep_cases(ts: tuple[int, ...], window: int, heads: int, head_dim: int) -> list[Case]:
    """For each T: the windowed case and full attention at the same shape (full lengths)."""
    cases = []
    for t in ts:
        batch = max(TOKENS_PER_BATCH // t, 1)
        cases.append(Case(f"self_T{t}_w{window}", batch, heads, t, t, head_dim, "full", window))
        cases.append(Case(f"self_T{t}_full", batch, heads, t, t, head_dim, "full"))
    return cases


def default_cases(window: int, heads: int, head_dim: int) -> list[Case]:
    """The T sweep plus jagged and causal windowed cases at T = 4096."""
    b = TOKENS_PER_BATCH // 4096
    return [
        *sweep_cases(SWEEP_T, window, heads, head_dim),
        Case(f"self_T4096_w{window}", b, heads, 4096, 4096, head_dim, "uniform", window),
        Case(f"self_T4096_w{window}", b, heads, 4096, 4096, head_dim, "full", window, True),
    ]


# tokamax's kernels first (the GPU path and likely the fastest full attention), XLA last: a
# stage cut off by its time cap loses the least telling rows.
QUICK_IMPLS = ("tokamax_mosaic", "tokamax_cudnn", "jax_triton", "reference")


def quick_cases(window: int, heads: int, head_dim: int) -> list[Case]:
    """T ∈ {4096, 1024}, windowed and full: the 5× target at T = 4096 in one short call (run
    first, so that a cut-off stage still has it)."""
    return sweep_cases((4096, 1024), window, heads, head_dim)


def smoke_cases() -> list[Case]:
    """Two tiny T for the sweep (each case and implementation costs ~4 CPU compiles)."""
    return sweep_cases((16, 32), 2, 2, 32)


def attention_fn(impl: str, case: Case, block_q: int | None, block_kv: int | None) -> Callable:
    """attend(q, k, v, q_lengths, kv_lengths) -> o for one `swa_attention` backend."""
    blocks = (
        dict(block_q=block_q, block_kv=block_kv) if impl in ("pallas_tpu", "jax_triton") else {}
    )

    def attend(q, k, v, q_lens, kv_lens):
        return swa_attention(
            q,
            k,
            v,
            q_lengths=q_lens,
            kv_lengths=kv_lens,
            window=case.window,
            causal=case.causal,
            backend=impl,
            **blocks,
        )

    return attend


def sweep_summary(results: list[dict]) -> dict:
    """fwd+bwd ms vs T per implementation, windowed and full, on the full-length non-causal
    cases; speedup_vs_full = its own full attention / its windowed at the same T,
    speedup_vs_best_full = the fastest full attention of any implementation (`best_full`)
    / its windowed (the issue's >= 5× at w = 128, T = 4096); None where a run failed."""
    rows = [r for r in results if r["lengths"] == "full" and not r["causal"]]
    window = next((r["window"] for r in rows if r["window"] is not None), None)
    ts = sorted({r["tq"] for r in rows})
    summary: dict = dict(window=window, t=ts, impls={})
    for impl in dict.fromkeys(r["impl"] for r in rows):
        series = {}
        for kind, want_window in (("swa", window), ("full", None)):
            by_t = {r["tq"]: r for r in rows if r["impl"] == impl and r["window"] == want_window}
            series[f"{kind}_fwdbwd_ms"] = [by_t.get(t, {}).get("fwdbwd_ms") for t in ts]
        series["speedup_vs_full"] = [
            full / swa if full and swa else None
            for swa, full in zip(series["swa_fwdbwd_ms"], series["full_fwdbwd_ms"], strict=True)
        ]
        summary["impls"][impl] = series
    best = []
    for i in range(len(ts)):
        full = {impl: s["full_fwdbwd_ms"][i] for impl, s in summary["impls"].items()}
        timed = {impl: ms for impl, ms in full.items() if ms}
        fastest = min(timed, key=timed.get) if timed else None
        best.append(dict(impl=fastest, fwdbwd_ms=timed.get(fastest)))
    summary["best_full"] = best
    for series in summary["impls"].values():
        series["speedup_vs_best_full"] = [
            b["fwdbwd_ms"] / swa if b["fwdbwd_ms"] and swa else None
            for swa, b in zip(series["swa_fwdbwd_ms"], best, strict=True)
        ]
    return summary


def plot_sweep(summary: dict, path: str, device: str) -> None:
    """Log-log fwd+bwd time vs T: SWA solid, full attention dashed, one colour per impl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (impl, series) in enumerate(summary["impls"].items()):
        color = f"C{i}"
        for kind, style in (("swa", "-"), ("full", "--")):
            ms_by_t = zip(summary["t"], series[f"{kind}_fwdbwd_ms"], strict=True)
            points = [(t, ms) for t, ms in ms_by_t if ms]
            if points:
                label = f"{impl} ({'w=' + str(summary['window']) if kind == 'swa' else 'full'})"
                ts, ms = zip(*points, strict=True)
                ax.plot(ts, ms, style, color=color, marker="o", label=label)
    ax.set(xscale="log", yscale="log", xlabel="T", ylabel="fwd+bwd ms", title=f"SWA on {device}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = bench_parser(__doc__, ALL_IMPLS)
    parser.add_argument("--plot", help="optional PNG path: fwd+bwd time vs T")
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--block-q", type=int, help="override pallas_tpu / jax_triton tiles")
    parser.add_argument("--block-kv", type=int, help="override pallas_tpu / jax_triton tiles")
    return parse_bench_args(parser, argv, SMOKE_IMPLS, ALL_IMPLS, QUICK_IMPLS)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.smoke:
        cases = smoke_cases()
    elif args.quick:
        cases = quick_cases(args.window, args.heads, args.head_dim)
    else:
        cases = default_cases(args.window, args.heads, args.head_dim)
    report = dict(
        environment=environment(),
        baselines=baselines(args.smoke, args.iters),
        flops_convention=FLOPS_CONVENTION,
        results=[],
    )
    env = report["environment"]
    print(describe_baselines(report))
    for case in cases:
        for impl in args.impls:
            if impl == "pallas_tpu" and env["platform"] != "tpu":
                r = dict(vars(case), impl=impl, error="skipped: pallas_tpu needs a TPU")
            else:
                r = run_case(case, impl, args, make_attend=attention_fn)
            if r["error"] is None:
                add_fractions(r, report["baselines"])
                summary = f"fwd {r['fwd_ms']:9.3f} ms  fwd+bwd {r['fwdbwd_ms']:9.3f} ms"
                summary += f"  {r['fwdbwd_tflops']:8.3g} TFLOP/s"
            else:
                summary = r["error"]
            print(
                f"{case.name:18s} {case.lengths:8s} causal={case.causal!s:5} {impl:20s} {summary}"
            )
            report["results"].append(r)
            report["sweep"] = sweep_summary(report["results"])
            write_report(args.out, report)
    report["sweep"] = sweep_summary(report["results"])
    write_report(args.out, report)
    if args.plot:
        plot_sweep(report["sweep"], args.plot, env["device_kind"])
    return report


if __name__ == "__main__":
    main()
