"""`kunlun-jax compare`: several bench files -> one Markdown report (and a plot).

Measured rows and compiled estimates go to separate tables with different columns: an
estimate has a roofline bound where a measurement has a step time, so the two can never be
read as the same kind of number.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kunlun_jax.bench.schema import BENCH_SCHEMA, load

MEASURED_HEADER = (
    "| run | device | devices | batch | step ms: median [p10, p90] | examples/s "
    "| train GFLOPs/example | MFU vs published peak | MFU vs same-run matmul "
    "| MFU vs same-run matmul, real tokens | matmul TFLOP/s | copy GB/s | peak memory MiB "
    "| XLA / analytic FLOPs | source |"
)
ESTIMATE_HEADER = (
    "| run | target | devices | batch | XLA GFLOPs / device / step | GB accessed / device / step "
    "| memory / device GiB | roofline step ms (lower bound) | limiter "
    "| examples/s (upper bound) | source |"
)


def load_records(paths: Sequence[Path | str]) -> list[tuple[dict[str, Any], str]]:
    """(record, file name) for every record of every file, validated, in the given order."""
    out = []
    for path in paths:
        for record in load(path, BENCH_SCHEMA)["records"]:
            out.append((record, Path(path).name))
    return out


def _rule(header: str) -> str:
    """The Markdown separator row under `header`: one `---` per column."""
    return "|" + "---|" * (header.count("|") - 1)


def _fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "–" if value is None else format(value * scale, spec)


def _link(name: str, link_dir: str | None) -> str:
    return f"[{name}]({link_dir.rstrip('/')}/{name})" if link_dir else name


def real_tokens_mfu(record: dict[str, Any]) -> float | None:
    """A measured record's MFU against the same-run matmul counting real (unpadded) tokens,
    the spec's convention; the padded count is the record's headline. Records written before
    `vs_measured_matmul_real_tokens` existed get it from their FLOP counts."""
    mfu, flops = record["mfu"], record["flops"]
    if "vs_measured_matmul_real_tokens" in mfu:
        return mfu["vs_measured_matmul_real_tokens"]
    real = flops["train_per_example_real_tokens"]
    return None if real is None else mfu["vs_measured_matmul"] * real / flops["train_per_example"]


def _measured_row(r: dict[str, Any], source: str) -> str:
    t, f, mfu, c, mem = r["timing"], r["flops"], r["mfu"], r["ceilings"], r["memory"]
    step = f"{t['median_s'] * 1e3:.3g} [{t['p10_s'] * 1e3:.3g}, {t['p90_s'] * 1e3:.3g}]"
    cells = [
        r["name"],
        r["environment"]["device_kind"],
        str(r["num_devices"]),
        str(r["batch_size"]),
        step,
        f"{t['examples_per_sec']:,.0f}",
        _fmt(f["train_per_example"], ".4g", 1e-9),
        _fmt(mfu["vs_table_peak"], ".2%"),
        _fmt(mfu["vs_measured_matmul"], ".2%"),
        _fmt(real_tokens_mfu(r), ".2%"),
        f"{c['matmul_tflops']:.3g} ({c['matmul_dtype']})",
        f"{c['copy_gbps']:.3g}",
        _fmt(mem["peak_bytes"], ".1f", 2**-20),
        _fmt(f["xla_over_analytic_dense"], ".3f"),
        source,
    ]
    return "| " + " | ".join(cells) + " |"


def _estimate_row(r: dict[str, Any], source: str) -> str:
    e = r["estimate"]
    cells = [
        r["name"],
        f"{e['topology']} ({e['device_kind']})",
        str(r["num_devices"]),
        str(r["batch_size"]),
        f"{e['xla_flops_per_device'] * 1e-9:.4g}",
        f"{e['xla_bytes_per_device'] * 1e-9:.4g}",
        _fmt(e["memory_per_device_bytes"], ".3f", 2**-30),
        f"{e['roofline_step_s'] * 1e3:.3g}",
        e["limiter"],
        f"{e['roofline_examples_per_sec']:,.0f}",
        source,
    ]
    return "| " + " | ".join(cells) + " |"


def markdown_report(
    records: Sequence[tuple[dict[str, Any], str]], *, link_dir: str | None = None
) -> str:
    """The Markdown report: a measured table, then a compiled-estimate table (when present),
    then every record's notes. link_dir: link each source file name under this directory."""
    measured = [(r, s) for r, s in records if r["kind"] == "measured"]
    estimates = [(r, s) for r, s in records if r["kind"] == "compiled_estimate"]
    lines = []
    if measured:
        lines += ["### Measured", "", MEASURED_HEADER, _rule(MEASURED_HEADER)]
        lines += [_measured_row(r, _link(s, link_dir)) for r, s in measured]
        lines.append("")
    if estimates:
        lines += [
            "### Compiled estimates (no hardware: roofline bounds from published peaks, "
            "not measurements)",
            "",
            ESTIMATE_HEADER,
            _rule(ESTIMATE_HEADER),
        ]
        lines += [_estimate_row(r, _link(s, link_dir)) for r, s in estimates]
        lines.append("")
    notes = sorted({f"{n}" for r, _ in records for n in r["notes"]})
    if notes:
        lines += ["Notes:", *(f"- {n}" for n in notes), ""]
    conventions = sorted({r["flops"]["convention"] for r, _ in records})
    lines += [f"FLOPs: {c}." for c in conventions]
    return "\n".join(lines) + "\n"
