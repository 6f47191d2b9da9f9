"""Kunlun model: shapes, padding invariance, finite gradients, ablation switches build."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kunlun_jax.config import ModelConfig, StreamTower
from kunlun_jax.data.pipeline import trim_to_buckets
from kunlun_jax.model import Kunlun
from kunlun_jax.model.common import GdpaScoring
from kunlun_jax.model.towers import layer_roles, resolve_towers
from kunlun_jax.model.wukong import MixtureOfWukong, expert_partition
from tests.conftest import random_batch

SMALL = ModelConfig(
    d_model=16,
    num_heads=2,
    num_layers=2,
    n_sum=4,
    n_seed=6,
    n_tok=2,
    skl_rank=2,
    window=3,
    head_hidden=(16,),
)


def _init_apply(cfg, spec, batch):
    model = Kunlun(cfg, spec)
    params = jax.jit(model.init)(jax.random.key(0), batch)
    return model, params


def test_output_shape_and_finite_with_empty_histories(tiny_spec):
    lengths = {"click": np.array([0, 3, 12, 0]), "view": np.array([0, 0, 20, 5])}
    batch = random_batch(tiny_spec, 4, lengths=lengths)
    model, params = _init_apply(SMALL, tiny_spec, batch)
    logits = jax.jit(model.apply)(params, batch)
    assert logits.shape == (4,)
    assert logits.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(logits)))


def _padded(seq):
    """bool [B, T]: the padded positions of one stream {item, side, dt, length} of a batch."""
    return np.arange(seq["item"].shape[1])[None] >= seq["length"][:, None]


def _scramble_padding(batch, spec, seed):
    """Rewrites every padded position with other (valid) ids and times."""
    rng = np.random.default_rng(seed)
    out = jax.tree.map(np.array, batch)
    for s in spec.streams:
        seq = out["seqs"][s.name]
        pad = _padded(seq)
        seq["item"] = np.where(pad, rng.integers(1, s.item_vocab_size, pad.shape), seq["item"])
        seq["side"] = np.where(pad, rng.integers(1, s.side_vocab_size, pad.shape), seq["side"])
        seq["dt"] = np.where(pad, rng.uniform(0, 1e6, pad.shape), seq["dt"]).astype(np.float32)
    return out


@pytest.fixture(scope="module")
def compiled_small():
    from tests.conftest import tiny_spec as spec_fixture

    spec = spec_fixture.__wrapped__()
    batch = random_batch(spec, 6)
    model, params = _init_apply(SMALL, spec, batch)
    return spec, params, jax.jit(model.apply)


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_padded_positions_never_change_the_output(compiled_small, seed):
    spec, params, apply = compiled_small
    rng = np.random.default_rng(seed)
    lengths = {s.name: rng.integers(0, s.max_len + 1, 6) for s in spec.streams}
    batch = random_batch(spec, 6, seed=seed, lengths=lengths)
    base = np.asarray(apply(params, batch))
    scrambled = np.asarray(apply(params, _scramble_padding(batch, spec, seed + 1)))
    np.testing.assert_array_equal(base, scrambled)


def _fill_padded_times(batch, value):
    """The batch with every padded dt set to `value` (validate_batch reads real events only)."""
    out = jax.tree.map(np.array, batch)
    for seq in out["seqs"].values():
        seq["dt"] = np.where(_padded(seq), value, seq["dt"]).astype(np.float32)
    return out


def test_non_finite_padded_times_change_neither_logits_nor_gradients(tiny_spec):
    """NaN / Inf times at padded positions: the same logits and gradients as zeros there. The
    forward masks padded ROTE rows out, but the backward multiplies them by zero (0 · NaN = NaN)
    unless the model zeroes padded times first. dt is the only per-event float input."""
    cfg = dataclasses.replace(SMALL, seed_rote=True)  # both readers of dt: SWA and seed ROTE
    lengths = {"click": np.array([0, 3, 12, 5]), "view": np.array([2, 0, 20, 5])}
    batch = random_batch(tiny_spec, 4, lengths=lengths)  # zero padded times
    model, params = _init_apply(cfg, tiny_spec, batch)

    def loss(p, b):
        logits = model.apply(p, b)
        return logits.sum(), logits

    step = jax.jit(jax.value_and_grad(loss, has_aux=True))
    (_, base), base_grads = step(params, batch)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(base_grads))
    for value in (np.nan, np.inf, -np.inf):
        (_, logits), grads = step(params, _fill_padded_times(batch, value))
        np.testing.assert_array_equal(logits, base, err_msg=f"padded dt = {value}")
        for (path, g), ref in zip(
            jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree.leaves(base_grads), strict=True
        ):
            np.testing.assert_array_equal(g, ref, err_msg=f"{jax.tree_util.keystr(path)}, {value}")


def test_trimming_padding_to_a_bucket_keeps_the_output(compiled_small):
    """data.length_buckets cuts trailing padding: same logits (up to float reordering)."""
    spec, params, apply = compiled_small
    lengths = {s.name: np.array([0, 1, 3, 5, 2, 4]) for s in spec.streams}
    batch = random_batch(spec, 6, seed=3, lengths=lengths)
    trimmed = trim_to_buckets(batch, (5, 8))
    assert {s: v["item"].shape[1] for s, v in trimmed["seqs"].items()} == {"click": 5, "view": 5}
    np.testing.assert_allclose(apply(params, trimmed), apply(params, batch), rtol=1e-5, atol=1e-6)


def test_real_events_do_change_the_output(compiled_small):
    spec, params, apply = compiled_small
    lengths = {s.name: np.full(6, 4) for s in spec.streams}
    batch = random_batch(spec, 6, lengths=lengths)
    changed = jax.tree.map(np.array, batch)
    changed["seqs"]["click"]["item"][:, 0] = changed["seqs"]["click"]["item"][:, 0] % 99 + 1
    assert not np.allclose(apply(params, batch), apply(params, changed))


def test_gradients_are_finite_and_reach_every_parameter(tiny_spec):
    batch = random_batch(tiny_spec, 4)
    model, params = _init_apply(SMALL, tiny_spec, batch)
    grads = jax.jit(jax.grad(lambda p: model.apply(p, batch).sum()))(params)
    leaves = jax.tree_util.tree_flatten_with_path(grads)[0]
    for path, g in leaves:
        assert np.all(np.isfinite(np.asarray(g))), jax.tree_util.keystr(path)
    nonzero = sum(bool(np.any(np.asarray(g) != 0)) for _, g in leaves)
    assert nonzero == len(leaves), "some parameters receive no gradient"


def test_compskip_roles_alternate():
    on, off = SMALL, dataclasses.replace(SMALL, compskip=False)
    assert [layer_roles(on, i) for i in range(4)] == [
        (True, False, True),
        (False, True, False),
        (True, False, True),
        (False, True, False),
    ]
    assert all(layer_roles(off, i) == (True, True, True) for i in range(4))


def test_event_personalization_resolves_per_stream_towers(tiny_spec):
    cfg = dataclasses.replace(
        SMALL, streams={"view": StreamTower(max_len=8, d_model=8, num_layers=1, window=0)}
    )
    towers = {t.name: t for t in resolve_towers(cfg, tiny_spec)}
    assert (towers["view"].max_len, towers["view"].d_model, towers["view"].num_layers) == (8, 8, 1)
    assert towers["view"].window == 0
    assert (towers["click"].d_model, towers["click"].max_len) == (16, 12)
    flat = {
        t.name: t
        for t in resolve_towers(dataclasses.replace(cfg, event_personalization=False), tiny_spec)
    }
    assert flat["view"].d_model == 16
    assert flat["view"].max_len == 20
    with pytest.raises(ValueError, match="not streams of the dataset"):
        resolve_towers(dataclasses.replace(SMALL, streams={"nope": StreamTower()}), tiny_spec)


def test_events_beyond_a_streams_max_len_are_ignored(tiny_spec):
    cfg = dataclasses.replace(SMALL, streams={"view": StreamTower(max_len=5)})
    lengths = {"click": np.full(3, 4), "view": np.full(3, 20)}
    batch = random_batch(tiny_spec, 3, lengths=lengths)
    model, params = _init_apply(cfg, tiny_spec, batch)
    changed = jax.tree.map(np.array, batch)
    changed["seqs"]["view"]["item"][:, 5:] = 1
    np.testing.assert_array_equal(model.apply(params, batch), model.apply(params, changed))


# Every ablation switch away from its default, grouped so that each group compiles once.
ABLATIONS = [
    {"ffn": "pffn", "pooling": "pma", "window": 0, "rote": False, "causal": True}
    | {"expert_partition": "interleaved"},
    {"pooling": "mean", "compskip": False, "event_personalization": False, "num_experts": 1}
    | {"weight_gen_norm": True},
    {"compression": "dense", "gdpa_activation": "sigmoid", "remat": "full", "dtype": "bfloat16"}
    | {"seq_attention": "gdpa", "seed_attention": "gdpa", "rote_gap": "previous"}
    | {"rote_position": True, "seed_rote": True},
]


@pytest.mark.parametrize(
    "overrides", ABLATIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items())
)
def test_every_ablation_switch_builds_and_trains(tiny_spec, overrides):
    import optax

    from kunlun_jax.train.state import bce_loss

    cfg = dataclasses.replace(
        SMALL, streams={"view": StreamTower(d_model=8, num_layers=1)}, **overrides
    )
    batch = random_batch(tiny_spec, 8)
    model, params = _init_apply(cfg, tiny_spec, batch)
    tx = optax.adam(1e-2)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt):
        loss, g = jax.value_and_grad(lambda p: bce_loss(model.apply(p, batch), batch["label"]))(
            params
        )
        updates, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, updates), opt, loss

    losses = []
    for _ in range(4):
        params, opt, loss = step(params, opt)
        losses.append(float(loss))
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0], f"{overrides}: loss did not decrease {losses}"


KINDS = ("contiguous", "interleaved")


@given(n_in=st.integers(1, 40), m=st.integers(1, 6))
def test_expert_partitions_cover_every_token_once_with_the_same_share_sizes(n_in, m):
    m = min(m, n_in)
    tokens = np.arange(n_in)
    parts = {kind: [tokens[s] for s in expert_partition(n_in, m, kind)] for kind in KINDS}
    for kind, shares in parts.items():
        np.testing.assert_array_equal(np.sort(np.concatenate(shares)), tokens, err_msg=kind)
    assert [len(s) for s in parts["contiguous"]] == [len(s) for s in parts["interleaved"]]
    assert all(np.all(np.diff(s) == 1) for s in parts["contiguous"])
    assert all(np.all(s % m == e) for e, s in enumerate(parts["interleaved"]))


@pytest.mark.parametrize("kind", KINDS)
def test_each_wukong_expert_sees_only_its_share_of_the_tokens(kind):
    """Changing input token i changes exactly the output block of the expert that owns i."""
    n_in, n_out, m = 7, 6, 2
    z = jax.random.normal(jax.random.key(0), (2, n_in, 8))
    layer = MixtureOfWukong(n_out, num_experts=m, partition=kind)
    params = layer.init(jax.random.key(1), z)
    base = layer.apply(params, z)
    owner = {
        int(t): e for e, s in enumerate(expert_partition(n_in, m, kind)) for t in np.arange(n_in)[s]
    }
    out_blocks = np.array_split(np.arange(n_out), m)
    for token, e in owner.items():
        moved = np.abs(np.asarray(layer.apply(params, z.at[:, token].add(1.0)) - base))
        changed = np.flatnonzero(moved.max(axis=(0, 2)) > 1e-6)
        np.testing.assert_array_equal(changed, out_blocks[e], err_msg=f"{kind}: token {token}")
    with pytest.raises(ValueError, match="'contiguous' or 'interleaved'"):
        expert_partition(n_in, m, "random")


def test_mmoe_mixes_the_same_experts_with_one_gate_per_task():
    """At init (zero gates) every task's mixture is the experts' mean; a gate that favours
    one expert gives that expert's output for its task only; every parameter gets gradient."""
    from kunlun_jax.model.common import GatedExperts

    x = jax.random.normal(jax.random.key(0), (5, 12))
    x_tasks = jnp.broadcast_to(x[:, None], (5, 2, 12))
    layer = GatedExperts(num_shared=3, num_own=0, width=8, num_tasks=2)
    params = nn.unbox(layer.init(jax.random.key(1), x_tasks, x))
    p = params["params"]
    assert set(p) == {"experts", "experts_bias", "gates"}
    experts = jax.nn.silu(jnp.einsum("bf,efw->bew", x, p["experts"]) + p["experts_bias"])
    mixed, shared = layer.apply(params, x_tasks, x)
    assert mixed.shape == (5, 2, 8)
    assert shared is None
    np.testing.assert_allclose(
        mixed, np.broadcast_to(experts.mean(1)[:, None], mixed.shape), rtol=1e-5, atol=1e-6
    )
    # task 1's gate scores expert 2 by 1e3·x_0, so x_0 > 0 picks it (and x_0 < 0 the others)
    gates = p["gates"].at[0, 1, 2].set(1e3)
    picked, _ = layer.apply({"params": {**p, "gates": gates}}, x_tasks, x)
    np.testing.assert_allclose(picked[:, 0], mixed[:, 0], rtol=1e-6)
    positive = np.asarray(x[:, 0] > 0)
    np.testing.assert_allclose(picked[positive, 1], experts[positive, 2], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        picked[~positive, 1], experts[~positive, :2].mean(1), rtol=1e-4, atol=1e-5
    )
    weights = jnp.arange(16.0).reshape(2, 8)
    grads = jax.grad(lambda q: (layer.apply(q, x_tasks, x)[0] * weights).sum())(params)
    for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
        assert np.abs(np.asarray(g)).max() > 0, jax.tree_util.keystr(path)


def test_ple_tasks_see_their_own_experts_and_the_shared_ones_only():
    """One PLE level: at init task k's output is the mean of its own and the shared experts;
    task k's output has no gradient through another task's experts, and the shared output
    (fed to a next level) mixes every expert."""
    from kunlun_jax.model.common import GatedExperts

    k, own, n_shared, width = 3, 2, 2, 4
    x = jax.random.normal(jax.random.key(0), (6, 5))
    x_tasks = jax.random.normal(jax.random.key(1), (6, k, 5))
    layer = GatedExperts(n_shared, own, width, k, emit_shared=True)
    params = nn.unbox(layer.init(jax.random.key(2), x_tasks, x))
    p = params["params"]
    assert p["task_experts"].shape == (k, own, 5, width)
    assert p["gates"].shape == (5, k, own + n_shared)
    assert p["shared_gate"].shape == (5, k * own + n_shared)
    shared = jax.nn.silu(jnp.einsum("bf,efw->bew", x, p["experts"]) + p["experts_bias"])
    mine = jax.nn.silu(
        jnp.einsum("bkf,kefw->bkew", x_tasks, p["task_experts"]) + p["task_experts_bias"]
    )
    tasks_out, shared_out = layer.apply(params, x_tasks, x)
    seen = jnp.concatenate([mine, jnp.broadcast_to(shared[:, None], (6, k, n_shared, width))], 2)
    np.testing.assert_allclose(tasks_out, seen.mean(2), rtol=1e-5, atol=1e-6)
    every = jnp.concatenate([mine.reshape(6, k * own, width), shared], 1)
    np.testing.assert_allclose(shared_out, every.mean(1), rtol=1e-5, atol=1e-6)
    for task in range(k):
        grad = jax.grad(lambda q, t=task: layer.apply(q, x_tasks, x)[0][:, t].sum())(params)
        moved = np.abs(np.asarray(grad["params"]["task_experts"])).max(axis=(1, 2, 3))
        assert (moved > 0).tolist() == [t == task for t in range(k)]
    grad = jax.grad(lambda q: layer.apply(q, x_tasks, x)[1].sum())(params)
    assert np.all(np.abs(np.asarray(grad["params"]["task_experts"])).max(axis=(1, 2, 3)) > 0)


def test_ple_with_no_task_experts_and_one_level_is_mmoe(tiny_spec):
    """task_heads = ple with task_own_experts = 0, ple_levels = 1 has MMoE's parameters and,
    with the same (random, gates included) values, gives its logits; two levels add a second
    expert level whose input is the first's, and the towers get the rest of head_hidden."""
    from kunlun_jax.model.common import task_logits

    spec = dataclasses.replace(tiny_spec, tasks=("click", "like"))

    class Head(nn.Module):
        cfg: ModelConfig

        @nn.compact
        def __call__(self, x):
            return task_logits(x, self.cfg, spec, train=False)

    x = jax.random.normal(jax.random.key(0), (4, 12))
    mmoe = dataclasses.replace(SMALL, task_heads="mmoe", head_hidden=(16, 8))
    params = nn.unbox(Head(mmoe).init(jax.random.key(1), x))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    params = tree.unflatten(
        [jax.random.normal(k, v.shape) for k, v in zip(keys, leaves, strict=True)]
    )
    ple = dataclasses.replace(mmoe, task_heads="ple", task_own_experts=0)
    assert jax.tree.structure(nn.unbox(Head(ple).init(jax.random.key(1), x))) == tree
    np.testing.assert_allclose(
        Head(ple).apply(params, x), Head(mmoe).apply(params, x), rtol=1e-6, atol=1e-6
    )
    two = dataclasses.replace(ple, task_own_experts=1, ple_levels=2)
    top = nn.unbox(Head(two).init(jax.random.key(1), x))["params"]
    assert top["head_experts"]["shared_gate"].shape == (12, 2 * 1 + 4)  # K·own + shared
    assert top["head_experts_1"]["task_experts"].shape == (2, 1, 16, 8)
    assert "shared_gate" not in top["head_experts_1"]
    assert top["head_click"]["Dense_0"]["kernel"].shape == (8, 1)  # no hidden layer left


def test_entire_space_logits_multiply_a_child_by_its_parent():
    """ESMM: σ(and_logit(a, b)) = σ(a)·σ(b), finite with finite gradients at any scale; a task
    whose parent is trained gets P(parent)·P(task | parent), in any column order; a task
    without one keeps its logit."""
    from kunlun_jax.model.common import and_logit, entire_space_logits

    a = jnp.array([-100.0, -20.0, -3.0, 0.0, 2.5, 20.0, 100.0])
    a, b = jnp.meshgrid(a, a)
    z = and_logit(a, b)
    np.testing.assert_allclose(
        jax.nn.sigmoid(z), np.minimum(jax.nn.sigmoid(a) * jax.nn.sigmoid(b), 1 - 1e-6), rtol=2e-5
    )
    grads = jax.grad(lambda x, y: and_logit(x, y).sum(), argnums=(0, 1))(a, b)
    assert all(np.all(np.isfinite(g)) for g in (z, *grads))
    logits = jax.random.normal(jax.random.key(0), (6, 3)) * 3
    out = entire_space_logits(logits, ("love", "click", "like"))
    np.testing.assert_allclose(out[:, 1:], logits[:, 1:])
    np.testing.assert_allclose(out[:, 0], and_logit(logits[:, 2], logits[:, 0]), rtol=1e-6)
    out = entire_space_logits(logits[:, :2], ("click", "conversion"))
    np.testing.assert_allclose(out[:, 1], and_logit(logits[:, 0], logits[:, 1]), rtol=1e-6)
    assert np.all(out[:, 1] < out[:, 0])


def test_pallas_kernels_match_the_reference_inside_the_model(tiny_spec):
    batch = random_batch(tiny_spec, 4)
    cfg = dataclasses.replace(SMALL, d_model=64, num_layers=1)  # Pallas GDPA needs head dim >= 32
    model, params = _init_apply(cfg, tiny_spec, batch)
    pallas = Kunlun(dataclasses.replace(cfg, kernels="pallas"), tiny_spec)
    ref_logits, ref_grads = jax.value_and_grad(lambda p: model.apply(p, batch).sum())(params)
    pal_logits, pal_grads = jax.value_and_grad(lambda p: pallas.apply(p, batch).sum())(params)
    np.testing.assert_allclose(pal_logits, ref_logits, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(pal_grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_every_parameter_carries_logical_axis_names(tiny_spec):
    import flax.linen as nn

    batch = random_batch(tiny_spec, 2)
    boxed = jax.eval_shape(Kunlun(SMALL, tiny_spec).init, jax.random.key(0), batch)["params"]
    leaves = jax.tree_util.tree_flatten_with_path(
        boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned)
    )[0]
    for path, leaf in leaves:
        assert isinstance(leaf, nn.Partitioned), jax.tree_util.keystr(path)
        assert len(leaf.names) == leaf.value.ndim, jax.tree_util.keystr(path)


def test_compskip_odd_layers_reuse_the_cached_summary(tiny_spec):
    batch = random_batch(tiny_spec, 2)
    params = jax.eval_shape(Kunlun(SMALL, tiny_spec).init, jax.random.key(0), batch)["params"]
    pair = params["segment_0"]
    assert {k for k in pair["layer_0"] if k.startswith("summary_")} == {
        "summary_click",
        "summary_view",
    }
    assert not [k for k in pair["layer_1"] if k.startswith("summary_")]
    assert "gdpa_ffn" in pair["layer_0"]["block_click"]
    assert "swa" not in pair["layer_0"]["block_click"]
    assert "swa" in pair["layer_1"]["block_click"]
    assert "gdpa_ffn" not in pair["layer_1"]["block_click"]


def test_depth_is_scanned_not_unrolled(tiny_spec):
    """Layer pairs of one kind share one compiled body: params stack along a leading axis."""
    cfg = dataclasses.replace(SMALL, num_layers=6, streams={"view": StreamTower(num_layers=2)})
    batch = random_batch(tiny_spec, 2)
    params = jax.eval_shape(Kunlun(cfg, tiny_spec).init, jax.random.key(0), batch)["params"]
    segments = sorted(k for k in params if k.startswith("segment_"))
    assert segments == ["segment_0", "segment_1"]  # layers 0-1 (both streams), 2-5 (click only)
    wg = params["segment_1"]["layer_0"]["weight_gen"]["token_mix"]
    assert wg.value.shape[0] == 2  # two stacked CompSkip pairs
    assert "block_view" not in params["segment_1"]["layer_0"]


@pytest.mark.parametrize("arch", ["kunlun", "interformer"])
def test_weight_gen_norm_switch_removes_the_norm_and_its_scale_invariance(arch, tiny_spec):
    """With the norm (model.weight_gen_norm = true), WeightGen's X_sum does not see the size
    of the tokens (LN); without it (the default) the size of an embedding row reaches X_sum,
    and the two parameter trees differ by exactly the norm's scale and bias in every
    WeightGen."""
    from kunlun_jax.model.factory import build_model
    from kunlun_jax.model.weight_gen import WeightGen

    x = jax.random.normal(jax.random.key(0), (3, 5, 16))
    for norm in (True, False):
        gen = WeightGen(4, norm=norm)
        params = gen.init(jax.random.key(1), x)
        small, large = gen.apply(params, x), gen.apply(params, 20.0 * x)
        assert small.shape == (3, 4, 16)
        if norm:
            np.testing.assert_allclose(small, large, rtol=1e-4, atol=1e-4)
        else:
            assert float(jnp.max(jnp.abs(large - small))) > 0.1

    batch = random_batch(tiny_spec, 2)

    def leaves(norm: bool) -> dict[str, tuple[int, ...]]:
        cfg = dataclasses.replace(SMALL, arch=arch, weight_gen_norm=norm)
        shapes = jax.eval_shape(build_model(cfg, tiny_spec).init, jax.random.key(0), batch)
        flat = jax.tree_util.tree_flatten_with_path(nn.unbox(shapes["params"]))[0]
        return {jax.tree_util.keystr(k): v.shape for k, v in flat}

    with_norm, without = leaves(True), leaves(False)
    removed = sorted(set(with_norm) - set(without))
    assert set(without) <= set(with_norm)
    # Each WeightGen (the modules owning a token_mix) loses its LayerNorm's scale and bias.
    gens = {k.removesuffix("['token_mix']") for k in without if k.endswith("['token_mix']")}
    assert {k.split("['LayerNorm_0']")[0] for k in removed} == gens
    assert len(removed) == 2 * len(gens) >= 4  # Kunlun: one a layer; InterFormer: more


@pytest.mark.parametrize("gdpa", [None, GdpaScoring("silu", 1.0, 0.1)], ids=["softmax", "gdpa"])
def test_sliding_window_attention_sees_only_its_window(gdpa):
    from kunlun_jax.model.attention import SequenceSelfAttention

    attn = SequenceSelfAttention(num_heads=2, window=2, rote=True, gdpa=gdpa)
    s = jax.random.normal(jax.random.key(0), (1, 10, 8))
    dt = jnp.arange(10, dtype=jnp.float32)[None] * 600.0
    lengths = jnp.array([10])
    params = attn.init(jax.random.key(1), s, dt, lengths)
    base = attn.apply(params, s, dt, lengths)
    moved = attn.apply(params, s.at[0, 9].set(5.0), dt, lengths)
    changed = np.any(np.asarray(base != moved), axis=-1)[0]
    np.testing.assert_array_equal(changed, np.arange(10) >= 7)  # |t - 9| <= 2
    causal = SequenceSelfAttention(num_heads=2, window=0, causal=True, rote=False, gdpa=gdpa)
    cp = causal.init(jax.random.key(1), s, dt, lengths)
    moved = causal.apply(cp, s.at[0, 4].set(5.0), dt, lengths)
    changed = np.any(np.asarray(causal.apply(cp, s, dt, lengths) != moved), axis=-1)[0]
    np.testing.assert_array_equal(changed, np.arange(10) >= 4)  # j <= i: older events see it


def test_gdpa_seed_attention_ignores_padding_and_empty_histories():
    from kunlun_jax.model.hsp import SequenceSummary

    pool = SequenceSummary(
        n_tok=2, d_out=8, num_heads=2, n_seed=4, gdpa=GdpaScoring("gelu", 0.5, 0.1)
    )
    s = jax.random.normal(jax.random.key(0), (2, 6, 8))
    lengths = jnp.array([4, 0])
    params = pool.init(jax.random.key(1), s, lengths)
    out = pool.apply(params, s, lengths)
    assert out.shape == (2, 2, 8)
    assert np.all(np.isfinite(out))
    padded_moved = pool.apply(params, s.at[:, 4:].set(7.0).at[1].set(3.0), lengths)
    np.testing.assert_array_equal(out, padded_moved)
    real_moved = pool.apply(params, s.at[0, 3].set(7.0), lengths)
    assert not np.allclose(out[0], real_moved[0])


@pytest.mark.parametrize("gdpa", [None, GdpaScoring("silu", 1.0, 0.2)], ids=["softmax", "gdpa"])
def test_seed_rote_lets_the_pooling_see_recency_and_nothing_else(gdpa):
    """model.seed_rote: the seed attention's keys are rotated by the events' time before the
    request, so moving a real event in time changes the summary; padded events' times and a
    summary without seed ROTE never depend on dt."""
    from kunlun_jax.model.hsp import SequenceSummary

    s = jax.random.normal(jax.random.key(0), (2, 6, 8))
    dt = jnp.tile(jnp.array([60.0, 600.0, 3600.0, 7200.0, 86400.0, 90000.0]), (2, 1))
    lengths = jnp.array([4, 6])
    kwargs = dict(n_tok=2, d_out=8, num_heads=2, n_seed=4, gdpa=gdpa)
    rote = SequenceSummary(**kwargs, rote_t_scale=3600.0)
    params = rote.init(jax.random.key(1), s, lengths, dt)
    out = rote.apply(params, s, lengths, dt)
    later = rote.apply(params, s, lengths, dt.at[:, 1].set(50_000.0))
    assert not np.allclose(out, later, atol=1e-3)
    padded_moved = rote.apply(params, s, lengths, dt.at[0, 4:].set(1e7))
    np.testing.assert_array_equal(out[0], padded_moved[0])
    plain = SequenceSummary(**kwargs)
    np.testing.assert_array_equal(
        plain.apply(params, s, lengths, dt), plain.apply(params, s, lengths, 3 * dt)
    )
    np.testing.assert_array_equal(
        plain.apply(params, s, lengths), plain.apply(params, s, lengths, dt)
    )
    with pytest.raises(ValueError, match="needs the events' dt"):
        rote.apply(params, s, lengths)


def test_rote_gaps_and_positions():
    from kunlun_jax.model.rote import event_gaps, rote_angles

    dt = jnp.array([[10.0, 70.0, 100.0, 0.0], [5.0, 0.0, 0.0, 0.0]])  # newest first; padded
    lengths = jnp.array([3, 1])
    np.testing.assert_array_equal(event_gaps(dt, lengths), [[60, 30, 0, 0], [0, 0, 0, 0]])
    request = rote_angles(dt, 4, t_scale=60.0)
    np.testing.assert_allclose(request[..., 0], np.log1p(dt / 60.0), rtol=1e-6)
    previous = rote_angles(dt, 4, t_scale=60.0, lengths=lengths, gap="previous", position=True)
    phi = np.log1p(np.array([[60, 30, 0, 0], [0, 0, 0, 0]]) / 60.0) + np.arange(4)
    np.testing.assert_allclose(previous, phi[..., None] * np.array([1.0, 0.01]), rtol=1e-6)
    with pytest.raises(ValueError, match="needs the rows' lengths"):
        rote_angles(dt, 4, t_scale=60.0, gap="previous")
