"""Baselines (InterFormer, Wukong, DCNv2, DIN): build, shapes, logical axes, padding, learning."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kunlun_jax.config import ARCHS, ModelConfig, load_config
from kunlun_jax.data.movielens import open_source
from kunlun_jax.data.pipeline import make_source
from kunlun_jax.data.spec import validate_batch
from kunlun_jax.model.factory import MODELS, build_model
from tests.conftest import random_batch

FIXTURE = Path(__file__).parent / "fixtures" / "ml-latest-small"
BASELINES = ("interformer", "wukong", "dcnv2", "din")
SMALL = dict(d_model=16, num_heads=2, num_layers=1, n_sum=2, n_tok=2, head_hidden=(16,))


def small_model(arch: str) -> ModelConfig:
    return ModelConfig(arch=arch, **SMALL)


@pytest.fixture(scope="module")
def synthetic_batch():
    cfg = load_config(
        "tiny",
        [
            "data.synthetic.num_users=50",
            "data.synthetic.num_items=80",
            "data.synthetic.max_history=8",
            "data.synthetic.mean_history=4",
        ],
    )
    source, spec = make_source(cfg.data, "eval")
    return source.batch(range(32)), spec


@pytest.fixture(scope="module")
def movielens_batch():
    source = open_source("movielens-latest-small", FIXTURE, "train", max_len=6)
    return source.batch(range(16)), source.feature_spec


def test_every_arch_has_a_model():
    assert set(MODELS) == set(ARCHS)
    with pytest.raises(ValueError, match=r"model\.arch"):
        build_model(ModelConfig(arch="nope"), None)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def built(synthetic_batch, movielens_batch):
    """(arch, data) -> (model, params, jitted apply), each compiled once for the module."""
    batches = {"synthetic": synthetic_batch, "movielens": movielens_batch}
    cache = {}

    def get(arch: str, data: str):
        if (arch, data) not in cache:
            batch, spec = batches[data]
            model = build_model(small_model(arch), spec)
            params = jax.jit(model.init)(jax.random.key(0), batch)
            cache[arch, data] = (model, params, jax.jit(model.apply))
        return cache[arch, data]

    return get


@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_predicts_one_logit_per_task(arch):
    """With data.tasks = like, love, the labels and every model's logits are [B, 2]: two
    outputs of one head (esmm: love's output read as P(love | like)), or one head per task
    (model.task_heads = per_task; mmoe: on mixtures of shared experts)."""
    source = open_source(
        "movielens-latest-small", FIXTURE, "train", max_len=6, tasks=("like", "love")
    )
    batch = source.batch(range(16))
    validate_batch(batch, source.spec)
    np.testing.assert_array_equal(batch["label"][:, 1] <= batch["label"][:, 0], True)
    heads = {
        "shared": {"head"},
        "per_task": {"head_like", "head_love"},
        # ple goes through mmoe's extracted_task_features (its own tests: tests/test_model.py)
        "mmoe": {"head_experts", "head_like", "head_love"},
        "esmm": {"head"},
    }
    for task_heads, names in heads.items():
        cfg = dataclasses.replace(small_model(arch), task_heads=task_heads)
        model = build_model(cfg, source.spec)
        params = jax.jit(model.init)(jax.random.key(0), batch)
        top = {n.replace("deep", "head") for n in params["params"]}  # DCNv2's head is "deep"
        assert names <= top, (task_heads, sorted(top))
        logits = jax.jit(model.apply)(params, batch)
        assert logits.shape == (16, 2)
        assert logits.dtype == jnp.float32
        assert np.all(np.isfinite(logits))
        assert not np.allclose(logits[:, 0], logits[:, 1])
        if task_heads == "esmm":  # love needs like: P(love) = P(like) · P(love | like)
            assert np.all(logits[:, 1] <= logits[:, 0])


@pytest.mark.parametrize("arch", BASELINES)
@pytest.mark.parametrize("data", ["synthetic", "movielens"])
def test_baseline_gives_finite_logits_of_shape_b(arch, data, built, request):
    batch, _ = request.getfixturevalue(f"{data}_batch")
    _, params, apply = built(arch, data)
    logits = apply(params, batch)
    assert logits.shape == (len(batch["label"]),)
    assert logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))


@pytest.mark.parametrize("arch", BASELINES)
def test_every_parameter_has_logical_axes_and_tables_are_vocab_first(arch, tiny_spec):
    batch = random_batch(tiny_spec, 4)
    boxed = jax.eval_shape(build_model(small_model(arch), tiny_spec).init, jax.random.key(0), batch)
    leaves = jax.tree_util.tree_flatten_with_path(
        boxed["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned)
    )[0]
    tables = []
    for path, leaf in leaves:
        name = jax.tree_util.keystr(path)
        assert isinstance(leaf, nn.Partitioned), name
        assert len(leaf.names) == leaf.value.ndim, name
        if leaf.names[0] == "vocab":
            tables.append(name)
    assert len(tables) == len(tiny_spec.sparse_names) + 2  # + the unshared "view" item/side tables


@pytest.mark.parametrize("arch", BASELINES)
def test_padding_never_changes_the_output(arch, synthetic_batch, built):
    batch, spec = synthetic_batch
    _, params, apply = built(arch, "synthetic")
    scrambled = jax.tree.map(np.copy, batch)
    rng = np.random.default_rng(3)
    for s in spec.streams:
        seq = scrambled["seqs"][s.name]
        pad = np.arange(s.max_len)[None] >= seq["length"][:, None]
        assert pad.any()
        seq["item"] = np.where(pad, rng.integers(1, s.item_vocab_size, pad.shape), seq["item"])
        seq["side"] = np.where(pad, rng.integers(1, s.side_vocab_size, pad.shape), seq["side"])
        seq["dt"] = np.where(pad, rng.exponential(1e5, pad.shape), seq["dt"]).astype(np.float32)
    np.testing.assert_allclose(apply(params, batch), apply(params, scrambled), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["din", "wukong", "dcnv2"])  # InterFormer: Kunlun's ROTE path
def test_non_finite_padded_times_reach_no_gradient(arch, synthetic_batch, built):
    """NaN at every padded time: the loss and every gradient are those of the batch as it is
    (masked rows meet zero cotangents in the backward, and 0 · NaN would be NaN)."""
    batch, spec = synthetic_batch
    model, params, _ = built(arch, "synthetic")
    poisoned = jax.tree.map(np.copy, batch)
    for s in spec.streams:
        seq = poisoned["seqs"][s.name]
        pad = np.arange(s.max_len)[None] >= seq["length"][:, None]
        seq["dt"] = np.where(pad, np.nan, seq["dt"]).astype(np.float32)

    @jax.jit
    def grads(b):
        return jax.grad(lambda p: model.apply(p, b).sum())(params)

    for got, want in zip(
        jax.tree.leaves(grads(poisoned)), jax.tree.leaves(grads(batch)), strict=True
    ):
        np.testing.assert_array_equal(got, want)


# InterFormer's training step is the slowest compile here (~20 s); its forward runs above.
FIT = [pytest.param(a, marks=pytest.mark.slow) if a == "interformer" else a for a in BASELINES]


@pytest.mark.parametrize("arch", FIT)
def test_baseline_fits_a_batch(arch, synthetic_batch, built):
    batch, _ = synthetic_batch
    model, params, _ = built(arch, "synthetic")
    tx = optax.adam(1e-2)

    @jax.jit
    def step(params, opt):
        def loss_fn(p):
            logits = model.apply(p, batch, train=True)
            return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, batch["label"]))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss

    opt = tx.init(params)
    losses = []
    for _ in range(25):
        params, opt, loss = step(params, opt)
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0], losses
