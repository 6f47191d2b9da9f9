"""Analytic FLOP/param model (kunlun_jax.flops) against the real model and XLA's cost analysis."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from kunlun_jax.config import ModelConfig, StreamTower, load_config
from kunlun_jax.data.spec import FeatureSpec, StreamSpec
from kunlun_jax.data.synthetic import feature_spec
from kunlun_jax.flops import COMPONENTS, FlopReport, jaxpr_flops, main, model_flops, xla_flops
from kunlun_jax.model import Kunlun
from tests.conftest import random_batch

B = 4
# Matmul-dominated: d = 128, sequences of 64 / 48 events, one stream with a narrower, shallower
# tower (exercises the stream projection and L_e < L).
SPEC = FeatureSpec(
    sparse_names=("user", "item", "ctx"),
    sparse_vocab_sizes=(50, 100, 10),
    num_dense=2,
    streams=(
        StreamSpec("click", 100, 10, 64, item_feature="item", side_feature="ctx"),
        StreamSpec("view", 60, 5, 48),
    ),
)
CFG = ModelConfig(
    d_model=128,
    num_heads=2,
    num_layers=2,
    n_sum=8,
    n_seed=16,
    n_tok=4,
    skl_rank=2,
    window=16,
    head_hidden=(64,),
    streams={"view": StreamTower(d_model=64, num_layers=1)},
)
XLA_CASES = {
    "compskip": CFG,
    "no_compskip": dataclasses.replace(CFG, compskip=False),
    "pffn": dataclasses.replace(CFG, ffn="pffn"),
}
# Analytic / XLA forward FLOPs. XLA also counts norms, softmax, activations, ROTE and masks
# (measured ~2-3% on these configs), so the analytic count is a little lower.
XLA_RTOL = 0.10


def _param_shapes(cfg: ModelConfig, spec: FeatureSpec, batch: dict) -> Any:
    return jax.eval_shape(Kunlun(cfg, spec).init, jax.random.key(0), batch)


def _component(path: tuple[str, ...], cfg: ModelConfig) -> str:
    """The FLOP-model component owning a param, from its path in the real param tree.

    Layers live under scanned segments: segment_<i>/layer_<j>/... (stacked over repeats).
    """
    if path[0].startswith("segment_"):
        path = path[1:]
    top = path[0]
    if top == "embedding":
        return "embedding"
    if top.startswith("proj_"):
        return "stream_proj"
    if top.startswith("final_summary_"):
        return "final_summary"
    if top == "head" or top.startswith("head_"):
        return "head"
    assert top.startswith("layer_"), path
    sub = path[1]
    if sub == "weight_gen":
        return "weight_gen"
    if sub.startswith("summary_"):
        return "summary"
    if sub in ("interaction", "out_norm"):
        return "wukong"
    assert sub.startswith("block_"), path
    if path[2] in ("attn_norm", "swa"):
        return "swa"
    assert path[2] in ("ffn_norm", "gdpa_ffn", "pffn"), path
    return "gdpa_ffn" if cfg.ffn == "gdpa" else "pffn"


def _tree_params_by_component(shapes: Any, cfg: ModelConfig) -> dict[str, int]:
    out: dict[str, int] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(shapes["params"])[0]:
        names = tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))
        comp = _component(names, cfg)
        out[comp] = out.get(comp, 0) + leaf.size
    return out


@pytest.fixture(scope="module")
def batch() -> dict:
    return random_batch(SPEC, B)


@pytest.fixture(scope="module")
def xla_per_example(batch) -> dict[str, float]:
    """XLA's forward FLOPs per example of each XLA_CASES model (one compile each)."""
    out = {}
    for name, cfg in XLA_CASES.items():
        shapes = _param_shapes(cfg, SPEC, batch)
        out[name] = xla_flops(Kunlun(cfg, SPEC).apply, shapes, batch) / B
    return out


def _dense_report(cfg: ModelConfig) -> FlopReport:
    """What the reference path computes: full score matrices, seed queries once per batch."""
    return model_flops(cfg, SPEC, attention="dense", batch_size=B)


@pytest.mark.parametrize("case", list(XLA_CASES))
def test_forward_matches_xla(case, xla_per_example):
    analytic = _dense_report(XLA_CASES[case]).forward
    ratio = analytic / xla_per_example[case]
    assert ratio == pytest.approx(1.0, rel=XLA_RTOL), (case, analytic, xla_per_example[case])


def test_compskip_saves_exactly_the_skipped_ops(xla_per_example):
    on, off = _dense_report(XLA_CASES["compskip"]), _dense_report(XLA_CASES["no_compskip"])
    assert on.forward < off.forward
    # Without CompSkip layer 1 also re-summarizes and runs the GDPA FFN, and layer 0 also runs
    # SWA; "view" (L_e = 1) is absent from layer 1.
    skipped = (
        off.select(stage="layer_1", component="summary")
        + off.select(stage="layer_1", component="gdpa_ffn")
        + off.select(stage="layer_0", component="swa")
    )
    assert off.forward - on.forward == skipped
    # The same from the formulas: click summary + click GDPA FFN (layer 1), SWA on both (layer 0).
    d, k, n_seed, n_tok, n_sum, t = 128, 2, 16, 4, 8, 64
    summary = (
        4 * t * d * d  # K/V projection of the sequence
        + 4 * n_seed * t * d  # seed attention scores + PV
        + 2 * n_seed * d * d  # output projection
        + 2 * n_seed * d * d / B  # seed queries, once per batch
        + 2 * k * n_seed * n_tok * d  # SumKronLinear: Z contraction
        + 2 * k * n_tok * d * d  # SumKronLinear: W contraction
    )
    gdpa = 4 * t * d * d + 4 * n_sum * d * d + 4 * t * n_sum * d
    swa = sum(8 * n * de * de + 4 * n * n * de for n, de in ((64, 128), (48, 64)))
    assert skipped == summary + gdpa + swa
    xla_saved = xla_per_example["no_compskip"] - xla_per_example["compskip"]
    assert skipped / xla_saved == pytest.approx(1.0, rel=XLA_RTOL)


def test_window_and_causal_counts():
    t, de, w = 64, 128, 5

    def swa(**kw: Any) -> float:
        rep = model_flops(dataclasses.replace(CFG, **kw), SPEC)
        return rep.select(component="swa", op="scores_pv", stream="click")

    cfg = {"compskip": False}
    assert swa(window=w, **cfg) == 2 * 4 * t * (2 * w + 1) * de  # 2 layers
    assert swa(window=0, **cfg) == 2 * 4 * t * t * de
    assert swa(window=100, **cfg) == swa(window=0, **cfg)  # 2w + 1 > T: full attention
    assert swa(window=w, causal=True, **cfg) == swa(window=w, **cfg) / 2
    assert swa(window=0, causal=True, **cfg) == swa(window=0, **cfg) / 2
    dense = model_flops(dataclasses.replace(CFG, window=w, causal=True), SPEC, attention="dense")
    assert dense.select(component="swa", op="scores_pv", stream="click") == 4 * t * t * de


def test_real_lengths_scale_linearly():
    cfg = dataclasses.replace(CFG, window=4)  # 2w + 1 = 9 <= every length below
    padded = model_flops(cfg, SPEC)
    assert model_flops(cfg, SPEC, lengths={"click": 64, "view": 48}).forward == padded.forward
    assert model_flops(cfg, SPEC, lengths={"click": 1000}).forward == padded.forward  # clipped
    f = [model_flops(cfg, SPEC, lengths={"click": n, "view": n}) for n in (10, 20, 30)]
    assert f[2].forward - f[1].forward == pytest.approx(f[1].forward - f[0].forward, rel=1e-12)
    assert f[0].forward < padded.forward
    for comp in ("weight_gen", "wukong", "head"):  # the non-sequence path does not change
        assert f[0].by_component[comp] == padded.by_component[comp]
    with pytest.raises(ValueError, match="not streams"):
        model_flops(cfg, SPEC, lengths={"nope": 3})


def test_backward_conventions_and_breakdowns():
    rep = model_flops(dataclasses.replace(CFG, remat="full"), SPEC)
    assert rep.backward == 2 * rep.forward
    assert rep.total == 3 * rep.forward
    attn = sum(e.flops for e in rep.entries if e.op == "scores_pv")
    assert rep.attention_forward == attn > 0
    assert rep.kernel_backward == pytest.approx(rep.backward + 0.5 * attn)
    for breakdown in (rep.by_component, rep.by_layer, rep.by_stream):
        assert sum(breakdown.values()) == pytest.approx(rep.forward, rel=1e-12)
    assert set(rep.by_stream) == {"click", "view", "non-sequence"}
    assert list(rep.by_component) == [c for c in COMPONENTS if c in rep.by_component]
    assert model_flops(CFG, SPEC).recompute == 0
    dots = model_flops(dataclasses.replace(CFG, remat="dots"), SPEC)
    layers = rep.by_layer["layer_0"] + rep.by_layer["layer_1"]
    # The exact counts: test_remat_recompute_matches_the_traced_gradient.
    assert 0 < dots.recompute < rep.recompute < layers


REMAT_CASES = {
    # One-layer groups ("view" ends after layer 0): each stream block's last matmul (GDPA
    # FFN / SWA output projection, PFFN product) only feeds the group's output, never re-run.
    "gdpa": CFG,
    "pffn": dataclasses.replace(CFG, ffn="pffn"),
    # CompSkip pairs scanned twice: the PFFN's output feeds the pair's SWA layer.
    "pffn_pairs": dataclasses.replace(
        CFG, ffn="pffn", num_layers=4, streams={"view": StreamTower(d_model=64)}
    ),
}


@pytest.mark.parametrize("case", list(REMAT_CASES))
def test_remat_recompute_matches_the_traced_gradient(case, batch):
    """`recompute` against the matmul FLOPs each remat policy adds to the traced gradient.
    Against the jaxpr, not XLA: XLA counts a scan's (while loop's) body once, and its CSE folds
    a one-iteration scan's recomputation back into the forward (prevent_cse=False), so its
    cost analysis saw 0.4 of the 3.2 MFLOPs per example "dots" adds to "pffn"."""

    def grad_flops(cfg: ModelConfig) -> float:
        model = Kunlun(cfg, SPEC)
        grad = jax.grad(lambda p, b: model.apply(p, b).sum())
        return jaxpr_flops(grad, _param_shapes(cfg, SPEC, batch), batch) / B

    plain = grad_flops(REMAT_CASES[case])
    for remat in ("dots", "full"):
        cfg = dataclasses.replace(REMAT_CASES[case], remat=remat)
        assert _dense_report(cfg).recompute == grad_flops(cfg) - plain > 0, remat


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"compskip": False},
        {"ffn": "pffn"},
        {"pooling": "pma", "num_experts": 3, "wukong_fm_tokens": 2},
        {"pooling": "mean", "event_personalization": False, "weight_gen_norm": True},
        {"compression": "dense", "num_layers": 3},
    ],
    ids=["default", "no_compskip", "pffn", "pma", "mean_norm", "dense_compress"],
)
def test_params_match_model_tree(overrides, batch):
    cfg = dataclasses.replace(CFG, **overrides)
    tree = _tree_params_by_component(_param_shapes(cfg, SPEC, batch), cfg)
    report = model_flops(cfg, SPEC)
    assert report.params_by_component == tree
    assert report.params == sum(tree.values())


def test_xla_flops_counts_matmuls():
    a, b = jnp.ones((4, 8, 16)), jnp.ones((16, 32))
    assert xla_flops(lambda x, y: x @ y, a, b) == 2 * 4 * 8 * 16 * 32


def test_cli_prints_tiny_table(capsys):
    assert main(["--config", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "| component | params | forward GFLOPs/example | share |" in out
    for comp in ("embedding", "weight_gen", "summary", "gdpa_ffn", "swa", "wukong", "head"):
        assert f"| {comp} |" in out
    config = load_config("tiny")
    spec = feature_spec(config.data.synthetic)
    shapes = _param_shapes(config.model, spec, random_batch(spec, 2))
    n_params = sum(x.size for x in jax.tree.leaves(shapes))
    assert f"| **total** | {n_params:,} |" in out


def test_each_task_adds_one_head_output_or_one_tower(batch):
    spec = dataclasses.replace(SPEC, tasks=("like", "love", "share"))
    one_task = model_flops(CFG, SPEC)
    (width,), e = CFG.head_hidden, 3
    head = one_task.params_by_component["head"]  # (F + 1)·W + W + 1
    head_in = (head - width - 1) // width - 1
    extra = {
        "shared": 2 * (width + 1),
        "esmm": 2 * (width + 1),  # the shared head, read as P(child | parent)
        "per_task": 2 * head,
        # experts (F + 1)·W each, a gate column per (task, expert), towers Dense(W, 1)
        "mmoe": e * (head_in + 1) * width + head_in * 3 * e + 3 * (width + 1) - head,
        # and one expert of each task's own, each task's gate seeing it too
        "ple": (e + 3) * (head_in + 1) * width + head_in * 3 * (e + 1) + 3 * (width + 1) - head,
    }
    for heads, more in extra.items():
        cfg = dataclasses.replace(CFG, task_heads=heads, task_experts=e, task_own_experts=1)
        tree = _tree_params_by_component(_param_shapes(cfg, spec, batch), cfg)
        report = model_flops(cfg, spec)
        assert report.params_by_component == tree, heads
        assert report.params - one_task.params == more, heads


@pytest.mark.parametrize(
    "heads",
    [{"task_heads": "mmoe"}, {"task_heads": "ple", "task_own_experts": 2, "ple_levels": 2}],
    ids=["mmoe", "ple"],
)
def test_expert_head_flops_match_xla(heads):
    """The analytic MMoE / PLE head (experts, gates and mixtures, towers) against XLA's count
    of `task_logits` alone; XLA also counts the SiLU, the softmax and the biases."""
    from kunlun_jax.model.common import task_logits

    spec = dataclasses.replace(SPEC, tasks=("like", "love", "share"))
    cfg = dataclasses.replace(CFG, task_experts=4, head_hidden=(64, 32), **heads)
    report = model_flops(cfg, spec)
    analytic = sum(e.flops for e in report.entries if e.component == "head")

    class Head(nn.Module):
        @nn.compact
        def __call__(self, x):
            return task_logits(x, cfg, spec, train=False)

    n_experts = 4 + 3 * heads.get("task_own_experts", 0)  # level 0: n_experts·(F + 1)·64
    head_in = next(e for e in report.entries if e.op == "experts_0").params // n_experts // 64 - 1
    x = jnp.ones((B, head_in))
    params = Head().init(jax.random.key(0), x)
    assert xla_flops(Head().apply, params, x) / B == pytest.approx(analytic, rel=0.05)
