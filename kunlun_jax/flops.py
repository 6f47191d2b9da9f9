"""Analytic FLOP and parameter model of Kunlun, and XLA's own count for cross-checking.

`model_flops(cfg, spec)` walks the model's control flow (CompSkip roles from
`layer_roles`, per-stream towers from `resolve_towers`, stream projections when d_e != d,
fresh vs cached summaries, the Wukong expert partition) and counts, per example:

* matmul FLOPs, 2·m·n·k per matmul (einsums, Dense layers, attention scores and PV). Norms,
  activations, softmax, ROTE rotations, masks and gathers are not counted (they are a few
  percent of what XLA reports on matmul-dominated configs);
* parameters per component, matching the real param tree leaf for leaf.

Attention-shaped ops (SWA, GDPA FFN, HSP seed attention) follow the spec's convention
(shared/spec/kunlun.md, GDPA section): scores + PV = 4·Tq·Tkv·d_h per head, with
Tkv -> min(Tkv, 2w + 1) under a window and halved for causal (`attention="kernel"`, the
default: what a block-skipping kernel computes and the number scaling laws use).
`attention="dense"` counts the full Tq·Tkv score matrix instead, which is what the plain-jnp
reference path (and so XLA) computes before masking.

Token counts: by default every sequence op runs over the padded T_e (dense compute, what XLA
sees). `lengths={stream: mean real events}` counts real tokens instead (the spec's convention
for MFU); a mean is clipped to T_e, and attention terms use mean·min(mean, 2w+1), an
approximation of the mean over rows.

Backward: `backward = 2 × forward` (two matmuls per forward matmul; this is exactly what
autodiff of the reference path runs). The spec's convention for fused attention kernels,
which recompute the scores in backward, is 2.5× on the attention part: reported separately as
`kernel_backward = 2·(forward − attention_forward) + 2.5·attention_forward`. `total` uses
`backward`. `recompute` is the extra forward work the backward re-runs under `model.remat`
(`jaxpr_flops` of the gradient with and without it): the layers' matmuls for "full"; for
"dots" (`dots_with_no_batch_dims_saveable`: only matmuls without batch dimensions are saved)
those whose einsums carry batch dimensions: attention scores/PV, the PFFN's generated weight
and its product with S, Wukong's FM product Z (Zᵀ Y). Either way, minus what the backward
never reads: the last matmul of the stream block of a scanned group's last layer, whose
output only joins the residual sum the group returns.

CLI: `python -m kunlun_jax.flops --config base` prints the per-component table.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from kunlun_jax.config import ModelConfig
from kunlun_jax.data.spec import FeatureSpec
from kunlun_jax.model.embedding import padded_vocab
from kunlun_jax.model.towers import Tower, layer_roles, layer_segments, resolve_towers

AttentionCount = Literal["kernel", "dense"]

#: Components in model order (the table's row order).
COMPONENTS = (
    "embedding",
    "stream_proj",
    "weight_gen",
    "summary",
    "gdpa_ffn",
    "pffn",
    "swa",
    "wukong",
    "final_summary",
    "head",
)


@dataclasses.dataclass(frozen=True)
class FlopEntry:
    """One op (or a group of params) of the model.

    component: one of COMPONENTS; op: the op inside it (e.g. "qkv", "scores_pv",
    "expert_0/fm_mlp"); flops: forward matmul FLOPs per example; params: parameters owned;
    stage: "input", "layer_<l>" or "output"; stream: the event stream the op works on (None on
    the non-sequence path); attention: the scores/PV matmuls of an attention-shaped kernel;
    batched: its einsums carry batch dimensions (attention entries always do); group_output:
    its output only joins the residual sum a scanned layer group returns, so no remat policy
    recomputes it (module docstring).
    """

    component: str
    op: str
    flops: float
    params: int
    stage: str
    stream: str | None = None
    attention: bool = False
    batched: bool = False
    group_output: bool = False


def _group(entries: Iterable[FlopEntry], key: Callable[[FlopEntry], str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for e in entries:
        out[key(e)] = out.get(key(e), 0.0) + e.flops
    return out


def _group_params(entries: Iterable[FlopEntry], key: Callable[[FlopEntry], str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in entries:
        out[key(e)] = out.get(key(e), 0) + e.params
    return out


def _stream_key(e: FlopEntry) -> str:
    return e.stream or "non-sequence"


_KEYS: dict[str, Callable[[FlopEntry], str]] = {
    "component": lambda e: e.component,
    "layer": lambda e: e.stage,
    "stream": _stream_key,
}


@dataclasses.dataclass(frozen=True)
class FlopReport:
    """Per-example FLOPs of one model (see the module docstring for the conventions).

    forward / backward / total: matmul FLOPs per example (backward = 2 × forward).
    attention_forward: the part of `forward` in attention scores/PV (SWA, GDPA, seed attention).
    kernel_backward: backward under the spec's 2.5× convention for attention kernels.
    recompute: forward FLOPs re-run in backward under `model.remat` (0 without remat).
    by_component / by_layer / by_stream: forward FLOPs per component, stage ("input",
    "layer_<l>", "output") and stream ("non-sequence" for the rest).
    params_by_component: parameter count per component (sums to the model's param count).
    entries: the op-level breakdown everything above is summed from.
    """

    forward: float
    backward: float
    total: float
    attention_forward: float
    kernel_backward: float
    recompute: float
    by_component: dict[str, float]
    by_layer: dict[str, float]
    by_stream: dict[str, float]
    params_by_component: dict[str, int]
    entries: tuple[FlopEntry, ...]

    @classmethod
    def from_entries(cls, entries: Sequence[FlopEntry], *, remat: str = "none") -> FlopReport:
        """Sums `entries` into a report; `remat`: the model's remat policy (module docstring)."""
        entries = tuple(entries)
        order = {c: i for i, c in enumerate(COMPONENTS)}
        entries = tuple(sorted(entries, key=lambda e: order.get(e.component, len(order))))
        forward = float(sum(e.flops for e in entries))
        attention = float(sum(e.flops for e in entries if e.attention))
        rerun = [e for e in entries if e.stage.startswith("layer_") and not e.group_output]
        recompute = {
            "none": 0.0,
            "full": float(sum(e.flops for e in rerun)),
            "dots": float(sum(e.flops for e in rerun if e.batched)),
        }[remat]
        return cls(
            forward=forward,
            backward=2.0 * forward,
            total=3.0 * forward,
            attention_forward=attention,
            kernel_backward=2.0 * (forward - attention) + 2.5 * attention,
            recompute=recompute,
            by_component=_group(entries, _KEYS["component"]),
            by_layer=_group(entries, _KEYS["layer"]),
            by_stream=_group(entries, _KEYS["stream"]),
            params_by_component=_group_params(entries, _KEYS["component"]),
            entries=entries,
        )

    @property
    def params(self) -> int:
        """Total parameter count."""
        return sum(self.params_by_component.values())

    def select(
        self,
        *,
        component: str | None = None,
        stage: str | None = None,
        stream: str | None = None,
        op: str | None = None,
    ) -> float:
        """Forward FLOPs of the entries matching every given filter."""
        return float(
            sum(
                e.flops
                for e in self.entries
                if (component is None or e.component == component)
                and (stage is None or e.stage == stage)
                and (stream is None or e.stream == stream)
                and (op is None or e.op == op)
            )
        )

    def table(self, by: Literal["component", "layer", "stream"] = "component") -> str:
        """Markdown table: one row per component (or stage, or stream) with its parameters,
        forward GFLOPs per example and share of the forward; then a total row."""
        key = _KEYS[by]
        flops, params = _group(self.entries, key), _group_params(self.entries, key)
        total_g = self.forward / 1e9
        decimals = max(3, 3 - math.floor(math.log10(total_g))) if total_g > 0 else 3
        lines = [
            f"| {by} | params | forward GFLOPs/example | share |",
            "|---|---:|---:|---:|",
        ]
        for name, f in flops.items():
            share = f / self.forward if self.forward else 0.0
            lines.append(f"| {name} | {params[name]:,} | {f / 1e9:.{decimals}f} | {share:.1%} |")
        lines.append(f"| **total** | {self.params:,} | {total_g:.{decimals}f} | 100.0% |")
        return "\n".join(lines)

    def summary(self) -> str:
        """One paragraph: forward, backward, train-step totals per example and conventions."""
        g = 1e9
        text = (
            f"per example: forward {self.forward / g:.4g} GFLOPs (attention scores/PV "
            f"{self.attention_forward / self.forward:.1%}), backward {self.backward / g:.4g} "
            f"(2x matmuls; {self.kernel_backward / g:.4g} with the 2.5x attention-kernel "
            f"convention), train step {self.total / g:.4g} GFLOPs"
        )
        if self.recompute:
            text += f" (+{self.recompute / g:.4g} remat recompute)"
        return text + f"; {self.params:,} params."


class _Counter:
    """Collects FlopEntry rows while walking the model."""

    def __init__(self) -> None:
        self.entries: list[FlopEntry] = []

    def add(
        self,
        component: str,
        op: str,
        flops: float,
        params: int,
        stage: str,
        stream: str | None = None,
        *,
        attention: bool = False,
        batched: bool = False,
        group_output: bool = False,
    ) -> None:
        self.entries.append(
            FlopEntry(
                component,
                op,
                float(flops),
                int(params),
                stage,
                stream,
                attention,
                batched or attention,
                group_output,
            )
        )

    def mlp(
        self,
        component: str,
        op: str,
        in_dim: int,
        widths: Sequence[int],
        tokens: float,
        stage: str,
        stream: str | None = None,
    ) -> None:
        """common.MLP: Dense(+bias) layers in_dim -> widths[0] -> ... on `tokens` tokens."""
        flops, params, d_in = 0.0, 0, in_dim
        for w in widths:
            flops += 2.0 * tokens * d_in * w
            params += d_in * w + w
            d_in = w
        self.add(component, op, flops, params, stage, stream)


def _attention_flops(
    tq: float, tkv: float, width: int, *, window: int, causal: bool, mode: AttentionCount
) -> float:
    """Scores + PV over all heads: 4·Tq·Tkv_eff·(H·d_h) (spec convention, see module doc)."""
    if mode == "dense":
        return 4.0 * tq * tkv * width
    eff = min(tkv, 2 * window + 1) if window > 0 else tkv
    flops = 4.0 * tq * eff * width
    return flops / 2 if causal else flops


def _summary(
    c: _Counter,
    cfg: ModelConfig,
    t: Tower,
    tokens: float,
    d_out: int,
    component: str,
    stage: str,
    batch_size: int | None,
) -> None:
    """TowerSummary: LN(S) -> SequenceSummary (HSP / PMA / mean pooling) -> [n_tok_e, d_out]."""
    de, name = t.d_model, t.name
    c.add(component, "norm", 0, 2 * de, stage, name)
    if cfg.pooling == "mean":
        c.add(
            component, "expand", 2 * de * t.n_tok * d_out, (de + 1) * t.n_tok * d_out, stage, name
        )
        return
    n_seeds = t.n_tok if cfg.pooling == "pma" else cfg.n_seed
    # Seed queries Dense(LN(E)) do not depend on the example: computed once per batch.
    seed_q = 2.0 * n_seeds * de * de / batch_size if batch_size else 0.0
    c.add(component, "seed_q", seed_q, n_seeds * de + 2 * de + de * de, stage, name)
    c.add(component, "kv", 2.0 * tokens * de * 2 * de, 2 * de * de, stage, name)
    # Seed attention: softmax, padding mask only (no window / causal).
    scores = 4.0 * n_seeds * tokens * de
    c.add(component, "scores_pv", scores, 0, stage, name, attention=True)
    c.add(component, "o", 2.0 * n_seeds * de * de, de * de, stage, name)
    if cfg.pooling == "pma":
        c.add(component, "proj", 2.0 * t.n_tok * de * d_out, de * d_out + d_out, stage, name)
    elif cfg.compression == "sumkron":
        k = cfg.skl_rank
        flops = 2.0 * k * cfg.n_seed * t.n_tok * de + 2.0 * k * t.n_tok * de * d_out
        c.add(component, "compress", flops, k * cfg.n_seed * t.n_tok + k * de * d_out, stage, name)
    else:
        size = cfg.n_seed * de * t.n_tok * d_out
        c.add(component, "compress", 2.0 * size, size, stage, name)


def _stream_block(
    c: _Counter,
    cfg: ModelConfig,
    t: Tower,
    n: float,
    layer: int,
    ends_group: bool,
    attention: AttentionCount,
) -> None:
    """StreamBlock of stream t on n tokens at `layer`: the FFN (GDPA or PFFN) and / or SWA, per
    `layer_roles`. ends_group: `layer` is the last of a scanned group, so the block's last
    matmul only joins the residual sum the group returns (FlopEntry.group_output)."""
    stage, de, name, d = f"layer_{layer}", t.d_model, t.name, cfg.d_model
    use_ffn, use_attention, _ = layer_roles(cfg, layer)
    ffn_last = ends_group and not use_attention
    if use_ffn and cfg.ffn == "gdpa":
        comp = "gdpa_ffn"
        c.add(comp, "norm", 0, 2 * de, stage, name)
        c.add(comp, "q", 2.0 * n * de * de, de * de, stage, name)
        c.add(comp, "kv", 2 * (2.0 * cfg.n_sum * d * de), 2 * d * de, stage, name)
        gdpa = 4.0 * n * cfg.n_sum * de  # cross attention: no window, no causal
        c.add(comp, "scores_pv", gdpa, 0, stage, name, attention=True)
        c.add(comp, "o", 2.0 * n * de * de, de * de, stage, name, group_output=ffn_last)
    elif use_ffn:
        comp = "pffn"
        c.add(comp, "norm", 0, 2 * de, stage, name)
        c.add(comp, "ac", 2 * (2.0 * cfg.n_sum * d * de), 2 * d * de, stage, name)
        c.add(comp, "weight", 2.0 * cfg.n_sum * de * de, 0, stage, name, batched=True)
        apply = 2.0 * n * de * de
        c.add(comp, "apply", apply, 0, stage, name, batched=True, group_output=ffn_last)
    if use_attention:
        c.add("swa", "norm", 0, 2 * de, stage, name)
        c.add("swa", "qkv", 2.0 * n * de * 3 * de, 3 * de * de, stage, name)
        flops = _attention_flops(n, n, de, window=t.window, causal=cfg.causal, mode=attention)
        c.add("swa", "scores_pv", flops, 0, stage, name, attention=True)
        c.add("swa", "o", 2.0 * n * de * de, de * de, stage, name, group_output=ends_group)


def _group_ends(cfg: ModelConfig, towers: tuple[Tower, ...]) -> set[int]:
    """The layers that end a scanned (and rematerialized) group, `model.kunlun.LayerGroup`."""
    return {
        s.start + (r + 1) * s.group_size - 1
        for s in layer_segments(cfg, towers)
        for r in range(s.repeats)
    }


def _wukong(c: _Counter, cfg: ModelConfig, n_in: int, n_out: int, d: int, stage: str) -> None:
    """MixtureOfWukong over [X_sum ; summaries] (n_in tokens) -> n_out tokens, + out_norm."""
    m = min(cfg.num_experts, n_in, n_out)
    in_sizes = [len(p) for p in np.array_split(np.arange(n_in), m)]
    out_sizes = [len(p) for p in np.array_split(np.arange(n_out), m)]
    k, r = cfg.wukong_fm_rank, cfg.mlp_ratio
    for e, (ni, no) in enumerate(zip(in_sizes, out_sizes, strict=True)):
        n_f = (cfg.wukong_fm_tokens * no) // n_out or (no + 1) // 2
        n_l = no - n_f
        # Z (Zᵀ Y): Y [n_in, k] is a parameter, Z (Zᵀ Y) a per-example (batched) product;
        # fm_norm is a LayerNorm over the flattened [n_in·k].
        c.add("wukong", f"expert_{e}/fm_proj", 2.0 * ni * d * k, ni * k, stage)
        c.add("wukong", f"expert_{e}/fm", 2.0 * ni * d * k, 2 * ni * k, stage, batched=True)
        c.mlp("wukong", f"expert_{e}/fm_mlp", ni * k, (r * d, n_f * d), 1, stage)
        if n_l > 0:
            c.add("wukong", f"expert_{e}/lcb", 2.0 * ni * n_l * d, ni * n_l, stage)
    c.add("wukong", "out_norm", 0, 2 * d, stage)


def _real_tokens(towers: Sequence[Tower], lengths: Mapping[str, float] | None) -> dict[str, float]:
    lengths = dict(lengths or {})
    unknown = set(lengths) - {t.name for t in towers}
    if unknown:
        raise ValueError(
            f"lengths names {sorted(unknown)} are not streams; streams are "
            f"{[t.name for t in towers]}"
        )
    out = {}
    for t in towers:
        n = float(lengths.get(t.name, t.max_len))
        if n < 0:
            raise ValueError(f"lengths[{t.name!r}] must be >= 0, got {n}")
        out[t.name] = min(n, float(t.max_len))
    return out


def model_flops(
    cfg: ModelConfig,
    spec: FeatureSpec,
    *,
    lengths: Mapping[str, float] | None = None,
    attention: AttentionCount = "kernel",
    batch_size: int | None = None,
) -> FlopReport:
    """Forward/backward matmul FLOPs per example and params per component of `Kunlun(cfg, spec)`.

    lengths: mean real events per stream (default: the padded T_e, i.e. dense compute).
    attention: "kernel" = spec convention (window -> min(T, 2w+1), causal halves);
        "dense" = the full score matrix the reference path computes and masks.
    batch_size: amortize batch-independent matmuls (the HSP seed-query projection, computed
        once per batch) over this many examples; None leaves them out (large-batch limit).
    """
    towers = resolve_towers(cfg, spec)
    tokens = _real_tokens(towers, lengths)
    c = _Counter()
    d, r = cfg.d_model, cfg.mlp_ratio
    n_ns = len(spec.sparse_names) + (1 if spec.num_dense > 0 else 0)

    # FeatureEmbedding: tables (gathers, no FLOPs), event-type vectors, dense projection.
    rows = lambda v: padded_vocab(v, cfg.vocab_multiple)
    tables = sum(rows(v) * d for v in spec.sparse_vocab_sizes) + len(spec.streams) * d
    for s in spec.streams:
        tables += (0 if s.item_feature else rows(s.item_vocab_size) * d) + (
            0 if s.side_feature else rows(s.side_vocab_size) * d
        )
    c.add("embedding", "tables", 0, tables, "input")
    if spec.num_dense > 0:
        c.add(
            "embedding", "dense_proj", 2.0 * spec.num_dense * d, (spec.num_dense + 1) * d, "input"
        )
    for t in towers:
        if t.d_model != d:
            c.add("stream_proj", "proj", 2.0 * tokens[t.name] * d * t.d_model, d * t.d_model,
                  "input", t.name)  # fmt: skip

    summarized: set[str] = set()
    group_ends = _group_ends(cfg, towers)
    for layer in range(cfg.num_layers):
        stage = f"layer_{layer}"
        fresh = layer_roles(cfg, layer)[2]
        # WeightGen: LN (model.weight_gen_norm), token mix n_ns -> n_sum, gated MLP.
        mix_params = n_ns * cfg.n_sum + (2 * d if cfg.weight_gen_norm else 0)
        c.add("weight_gen", "token_mix", 2.0 * n_ns * cfg.n_sum * d, mix_params, stage)
        c.mlp("weight_gen", "gate_mlp", d, (r * d, d), cfg.n_sum, stage)
        for t in towers:
            if layer >= t.num_layers:
                continue
            n, name = tokens[t.name], t.name
            if fresh or name not in summarized:
                _summary(c, cfg, t, n, d, "summary", stage, batch_size)
                summarized.add(name)
            _stream_block(c, cfg, t, n, layer, layer in group_ends, attention)
        n_in = cfg.n_sum + sum(t.n_tok for t in towers)
        _wukong(c, cfg, n_in, n_ns, d, stage)

    for t in towers:
        _summary(c, cfg, t, tokens[t.name], d, "final_summary", "output", batch_size)
    head_in = (n_ns + sum(t.n_tok for t in towers)) * d
    n_tasks = len(spec.tasks)
    if n_tasks > 1 and cfg.task_heads == "per_task":
        for task in spec.tasks:
            c.mlp("head", f"mlp_{task}", head_in, (*cfg.head_hidden, 1), 1, "output")
    elif n_tasks > 1 and cfg.task_heads in ("mmoe", "ple"):
        tower = _expert_levels(c, cfg, head_in, n_tasks)
        for task in spec.tasks:
            c.mlp("head", f"mlp_{task}", tower[0], (*tower[1:], 1), 1, "output")
    else:
        c.mlp("head", "mlp", head_in, (*cfg.head_hidden, n_tasks), 1, "output")
    return FlopReport.from_entries(c.entries, remat=cfg.remat)


def _expert_levels(c: _Counter, cfg: ModelConfig, head_in: int, k: int) -> tuple[int, ...]:
    """Adds the mmoe / ple head's expert levels (`model.common.GatedExperts`: experts, gates
    and their mixtures) to `c`; returns the towers' input width and hidden widths."""
    levels, own = cfg.expert_levels()
    s, f = cfg.task_experts, head_in
    for level, w in enumerate(cfg.head_hidden[:levels]):
        n_experts = s + k * own
        c.add(
            "head", f"experts_{level}", 2.0 * n_experts * f * w, n_experts * (f + 1) * w, "output"
        )
        gated = k * (own + s)  # each task's gate sees its own experts and the shared ones
        if level < levels - 1:
            gated += n_experts  # the shared gate sees every expert
        c.add("head", f"gates_{level}", 2.0 * gated * (f + w), f * gated, "output")
        f = w
    return (f, *cfg.head_hidden[levels:])


def xla_flops(fn: Callable[..., Any], *args: Any) -> float:
    """FLOPs XLA's cost analysis reports for `jax.jit(fn)(*args)` (whole call, all examples)."""
    import jax

    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    if cost is None:
        return 0.0
    if isinstance(cost, Mapping):
        cost = [cost]
    return float(sum(float(c.get("flops", 0.0)) for c in cost if c))


def jaxpr_flops(fn: Callable[..., Any], *args: Any) -> float:
    """Matmul FLOPs (every dot_general, 2·m·n·k) of the jaxpr JAX traces for `fn(*args)`: a
    scan body counted once per iteration, a cond's branches all counted. This is the program
    before XLA, whose CSE may merge a remat's recomputation back into the forward
    (`prevent_cse=False` on a one-iteration scan), so `xla_flops` of a gradient can miss what
    JAX asks to recompute."""
    import jax

    return _dot_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def _dot_flops(jaxpr: Any) -> float:
    """dot_general FLOPs of a jaxpr and, recursively, of the jaxprs its equations hold."""
    total = 0.0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contracting, _), _ = eqn.params["dimension_numbers"]
            k = math.prod(eqn.invars[0].aval.shape[i] for i in contracting)
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * k
        else:
            trips = eqn.params["length"] if eqn.primitive.name == "scan" else 1
            total += trips * sum(_dot_flops(sub) for sub in _sub_jaxprs(eqn.params))
    return total


def _sub_jaxprs(params: Mapping[str, Any]) -> Iterable[Any]:
    """The jaxprs (open, or closed ones' jaxpr) in an equation's params: a scan's or
    remat's body, a pjit's callee, a cond's branches."""
    import jax.extend.core as jex

    for value in params.values():
        for v in value if isinstance(value, tuple | list) else (value,):
            if isinstance(v, jex.ClosedJaxpr):
                yield v.jaxpr
            elif isinstance(v, jex.Jaxpr):
                yield v


def synthetic_mean_lengths(config: Any, num: int = 2048) -> dict[str, float]:
    """Mean real events per stream, E[min(length, T_e)], over `num` synthetic requests."""
    from kunlun_jax.data import synthetic

    spec = synthetic.feature_spec(config.data.synthetic)
    source = synthetic.SyntheticSource(
        config.data.synthetic, num_examples=num, seed=config.data.seed, split="train"
    )
    batch = source.batch(list(range(num)))
    return {
        t.name: float(np.mean(np.minimum(batch["seqs"][t.name]["length"], t.max_len)))
        for t in resolve_towers(config.model, spec)
    }


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m kunlun_jax.flops --config base`: the per-component FLOP/param table."""
    from kunlun_jax.config import ConfigError, available_configs, load_config
    from kunlun_jax.data.synthetic import feature_spec

    p = argparse.ArgumentParser(prog="python -m kunlun_jax.flops", description=main.__doc__)
    p.add_argument(
        "--config", default="tiny", help=f"named config ({', '.join(available_configs())}) or path"
    )
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--by", choices=tuple(_KEYS), default="component", help="table rows")
    p.add_argument(
        "--lengths",
        choices=("padded", "synthetic"),
        default="padded",
        help="tokens counted: padded T_e (dense compute) or the synthetic data's mean real lengths",
    )
    p.add_argument(
        "--attention",
        choices=("kernel", "dense"),
        default="kernel",
        help="kernel: window/causal-aware spec convention; dense: full score matrix (reference)",
    )
    args = p.parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    spec = feature_spec(config.data.synthetic)
    lengths = synthetic_mean_lengths(config) if args.lengths == "synthetic" else None
    report = model_flops(config.model, spec, lengths=lengths, attention=args.attention)
    towers = resolve_towers(config.model, spec)

    def describe(t: Tower) -> str:
        mean = f" (mean {lengths[t.name]:.0f})" if lengths else ""
        return f"{t.name} T={t.max_len}{mean} d={t.d_model} H={t.num_heads} L={t.num_layers}"

    print(
        f"Kunlun `{config.name}`: {', '.join(describe(t) for t in towers)}; "
        f"{args.lengths} tokens, {args.attention} attention count"
    )
    print()
    print(report.table(args.by))
    print()
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
