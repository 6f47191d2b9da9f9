"""The synthetic generator: determinism, the batch format, and each planted term of the model."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kunlun_jax.config import SyntheticConfig
from kunlun_jax.data import synthetic as syn
from kunlun_jax.data.spec import validate_batch
from kunlun_jax.metrics import binary_entropy

TINY = SyntheticConfig(
    num_users=40, num_items=60, num_categories=8, max_history=8, mean_history=4, num_dense=6
)
N = 12_000  # examples for the statistical checks


def _assert_same(a: Any, b: Any) -> None:
    """Nested dicts of arrays are identical (values and dtypes)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_same(a[key], b[key])
    else:
        assert np.asarray(a).dtype == np.asarray(b).dtype
        np.testing.assert_array_equal(a, b)


def _rows(batch: Any, order: list[int]) -> Any:
    """The batch's examples in `order` (a permutation of its rows)."""
    if isinstance(batch, dict):
        return {key: _rows(value, order) for key, value in batch.items()}
    return batch[order]


def _differs(a: dict, b: dict) -> bool:
    return not np.array_equal(a["sparse"], b["sparse"]) or not np.array_equal(
        a["seqs"]["impression"]["dt"], b["seqs"]["impression"]["dt"]
    )


@pytest.fixture(scope="module")
def source() -> syn.SyntheticSource:
    return syn.SyntheticSource(SyntheticConfig(), num_examples=10 * N, seed=0, split="train")


@pytest.fixture(scope="module")
def big(source: syn.SyntheticSource) -> dict:
    return source.batch(range(N))


# ---------------------------------------------------------------------------------------------
# Determinism and splits.


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**64 - 1),
    indices=st.lists(st.integers(0, 999), min_size=1, max_size=12),
)
def test_deterministic_in_seed_split_index(seed: int, indices: list[int]) -> None:
    a = syn.SyntheticSource(TINY, num_examples=1000, seed=seed, split="train")
    b = syn.SyntheticSource(TINY, num_examples=1000, seed=seed, split="train")
    batch = a.batch(indices)
    _assert_same(batch, b.batch(indices))
    # Any access order and any batch composition give the same examples.
    items = {i: b[i] for i in reversed(indices)}
    _assert_same(batch, syn.stack_examples([items[i] for i in indices]))
    reordered = b.batch([*indices[::-1], 1000 - 1])
    _assert_same(batch, _rows(reordered, list(range(len(indices)))[::-1]))


def test_batch_equals_items_in_any_order(source: syn.SyntheticSource) -> None:
    indices = [17, 3, 99_999, 3, -1, 0]
    batch = source.batch(indices)
    _assert_same(batch, syn.stack_examples([source[i] for i in indices]))
    _assert_same(source[-1], source[len(source) - 1])
    with pytest.raises(IndexError):
        source[len(source)]


def test_seeds_and_splits_differ() -> None:
    train = syn.SyntheticSource(TINY, num_examples=100, seed=1, split="train")
    evals = syn.SyntheticSource(TINY, num_examples=100, seed=1, split="eval")
    other = syn.SyntheticSource(TINY, num_examples=100, seed=2, split="train")
    for i in range(5):
        assert _differs(train[i], evals[i])
        assert _differs(train[i], other[i])
    # Splits share one world (users, items, teacher); seeds do not.
    np.testing.assert_array_equal(train.world.user_taste, evals.world.user_taste)
    np.testing.assert_array_equal(train.world.item_vec, evals.world.item_vec)
    assert not np.array_equal(train.world.user_taste, other.world.user_taste)
    with pytest.raises(ValueError, match="split"):
        syn.SyntheticSource(TINY, num_examples=1, seed=0, split="test")


# ---------------------------------------------------------------------------------------------
# The batch format.


@pytest.mark.parametrize(
    "cfg",
    [SyntheticConfig(), TINY, dataclasses.replace(TINY, num_dense=0, teacher=True)],
    ids=["default", "tiny", "teacher-no-dense"],
)
def test_examples_match_the_spec(cfg: SyntheticConfig) -> None:
    src = syn.SyntheticSource(cfg, num_examples=200, seed=3, split="eval")
    spec = syn.feature_spec(cfg)
    assert spec.sparse_names == syn.SPARSE_NAMES
    assert spec.stream_names == syn.STREAMS
    for stream in spec.streams:  # history ids live in the candidate's id spaces
        assert spec.sparse_names.index(stream.item_feature) == 1
        assert spec.sparse_vocab_sizes[1] == stream.item_vocab_size == cfg.num_items + 1
        assert spec.sparse_names.index(stream.side_feature) == 2
        assert spec.sparse_vocab_sizes[2] == stream.side_vocab_size == cfg.num_categories + 1
    example = src[5]
    assert example["sparse"].shape == (5,)
    assert example["sparse"].dtype == np.int32
    assert example["dense"].shape == (cfg.num_dense,)
    assert example["dense"].dtype == np.float32
    assert example["label"].shape == ()
    assert example["oracle_p"].dtype == np.float32
    for seq in example["seqs"].values():
        assert seq["item"].shape == seq["dt"].shape == (cfg.max_history,)
        assert seq["length"].shape == ()
        assert seq["length"].dtype == np.int32
    validate_batch(syn.stack_examples([src[i] for i in range(64)]), spec)
    validate_batch(src.batch(range(64, 200)), spec)


def test_histories_are_long_tailed_and_newest_first(big: dict) -> None:
    t_max = SyntheticConfig().max_history
    means = {}
    for name in syn.STREAMS:
        seq = big["seqs"][name]
        length = seq["length"]
        means[name] = length.mean()
        assert (length == 0).mean() > 0.05, name  # some users never did this
        assert length.max() == t_max, name  # capped
        assert length.mean() > np.median(length), name  # right-skewed
        real = np.arange(t_max) < length[:, None]
        assert np.all(seq["item"][real] > 0)
        assert np.all(seq["item"][~real] == 0)
        assert np.all(seq["side"][real] > 0)
        assert np.all(seq["side"][~real] == 0)
        assert np.all(np.diff(seq["dt"], axis=1)[real[:, 1:]] >= 0)  # newest first
        assert np.all(seq["dt"][~real] == 0)
    assert means["purchase"] < means["click"] < means["impression"]
    total = sum(big["seqs"][name]["length"] for name in syn.STREAMS)
    assert 0.01 < (total == 0).mean() < 0.1  # cold-start users
    assert 0.7 < means["click"] / SyntheticConfig().mean_history < 1.3
    # Bursty sessions and long pauses: consecutive gaps of minutes and of days.
    dt, length = big["seqs"]["click"]["dt"], big["seqs"]["click"]["length"]
    gaps = np.diff(dt, axis=1)[np.arange(1, t_max) < length[:, None]]
    assert (gaps < 600).mean() > 0.3
    assert (gaps > 12 * 3600).mean() > 0.15


def test_histories_follow_taste_by_event_type(source: syn.SyntheticSource, big: dict) -> None:
    """Purchases reflect the user's taste most, impressions least; recent ones more than old."""
    world = source.world
    taste = world.user_taste[big["sparse"][:, 0]]
    mean_affinity = {}
    for name in syn.STREAMS:
        seq = big["seqs"][name]
        affinity = np.einsum("btd,bd->bt", world.item_vec[seq["item"]], taste)
        real = np.arange(seq["item"].shape[1]) < seq["length"][:, None]
        mean_affinity[name] = affinity[real].mean()
        if name == "purchase":
            recent, old = real & (seq["dt"] < 86_400), real & (seq["dt"] > 30 * 86_400)
            assert affinity[recent].mean() > affinity[old].mean() + 0.03  # taste drift
    assert mean_affinity["purchase"] > mean_affinity["click"] > mean_affinity["impression"] + 0.2


# ---------------------------------------------------------------------------------------------
# Labels follow the planted model.


def test_labels_are_bernoulli_of_oracle_p(source: syn.SyntheticSource, big: dict) -> None:
    p, y = big["oracle_p"].astype(np.float64), big["label"]
    assert 0.2 < p.mean() < 0.45
    sd = np.sqrt((p * (1 - p)).sum()) / len(p)
    assert abs(y.mean() - p.mean()) < 4 * sd
    # Calibration: in every decile of p the click rate matches the mean p.
    edges = np.quantile(p, np.linspace(0, 1, 11))
    bins = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, 9)
    for k in range(10):
        pk, yk = p[bins == k], y[bins == k]
        assert abs(yk.mean() - pk.mean()) < 4 * np.sqrt((pk * (1 - pk)).sum()) / len(pk) + 1e-3
    np.testing.assert_allclose(p, source.click_probability(big), rtol=1e-6)


def test_bayes_optimal_ne(source: syn.SyntheticSource, big: dict) -> None:
    ne = syn.bayes_optimal_ne(source, num=4000)
    assert 0.4 < ne < 0.8
    p, y = np.clip(big["oracle_p"].astype(np.float64), 1e-7, 1 - 1e-7), big["label"]
    # The oracle's realized NE on drawn labels matches its expectation.
    log_loss = -(y * np.log(p) + (1 - y) * np.log1p(-p)).mean()
    realized = log_loss / binary_entropy(y.mean())
    expected = binary_entropy(p).mean() / binary_entropy(p.mean())
    assert abs(realized - expected) < 0.02
    assert abs(syn.base_rate(source, num=4000) - p[:4000].mean()) < 1e-6


def test_conversions_follow_clicks_with_their_own_planted_model(
    source: syn.SyntheticSource, big: dict
) -> None:
    """tasks (conversion, click): the click column is the one-task data's label, unchanged; a
    conversion needs a click; both columns are Bernoulli of their oracle_p column, and the
    conversion's is p_true · q, with q the planted P(conversion | click)."""
    both = syn.SyntheticSource(
        source.cfg, num_examples=N, seed=0, split="train", tasks=("conversion", "click")
    )
    assert both.spec.tasks == ("conversion", "click")
    batch = both.batch(range(N))
    validate_batch(batch, both.spec)
    (conv, click), (p_conv, p_click) = batch["label"].T, batch["oracle_p"].astype(np.float64).T
    for key in ("sparse", "dense", "seqs"):
        _assert_same(batch[key], big[key])
    np.testing.assert_array_equal(click, big["label"])
    np.testing.assert_array_equal(p_click, big["oracle_p"].astype(np.float64))
    assert np.all(conv <= click)
    np.testing.assert_allclose(p_conv, both.conversion_probability(big), rtol=1e-6)
    assert np.all(p_conv <= p_click)
    q = p_conv / p_click
    assert 0.1 < q.mean() < 0.35
    assert q.std() > 0.05  # a task of its own, not a fixed fraction of the clicks
    assert np.corrcoef(q, p_click)[0, 1] < 0.9
    sd = np.sqrt((p_conv * (1 - p_conv)).sum()) / N
    assert abs(conv.mean() - p_conv.mean()) < 4 * sd
    clicked = click == 1  # among clicks, conversions are Bernoulli(q)
    sd_q = np.sqrt((q[clicked] * (1 - q[clicked])).sum()) / clicked.sum()
    assert abs(conv[clicked].mean() - q[clicked].mean()) < 4 * sd_q
    assert np.array_equal(both[5]["label"], batch["label"][5])  # one by one: the same draws
    only = syn.SyntheticSource(
        source.cfg, num_examples=N, seed=0, split="train", tasks=("conversion",)
    )
    one = only.batch(range(1000))
    np.testing.assert_array_equal(one["label"], conv[:1000])
    assert syn.bayes_optimal_ne(only, num=4000) < 1.0
    assert syn.base_rate(only, num=4000) == pytest.approx(p_conv[:4000].mean(), rel=1e-6)
    for tasks in (("purchase",), ("click", "click"), ()):
        with pytest.raises(ValueError, match="synthetic tasks must be distinct names"):
            syn.feature_spec(source.cfg, tasks)


def test_logit_terms_sum_to_the_logit(source: syn.SyntheticSource, big: dict) -> None:
    terms = source.logit_terms(big)
    assert set(terms) == {"bias", *syn.TERMS}
    logit = sum(terms.values())
    np.testing.assert_allclose(syn._sigmoid(logit), big["oracle_p"], rtol=1e-5, atol=1e-7)
    # Each term is standardized: its std is its weight, its mean about 0.
    cfg = source.cfg
    for name, weight in zip(
        syn.TERMS,
        [cfg.affinity_weight, cfg.sequence_weight, cfg.context_weight, cfg.dense_weight],
        strict=True,
    ):
        assert abs(terms[name].std() / weight - 1) < 0.15, name
        assert abs(terms[name].mean()) < 0.15 * weight, name
        # ... and the labels carry each term's signal.
        assert np.corrcoef(big["label"], terms[name])[0, 1] > 0.05, name


def test_ablating_a_weight_changes_only_the_labels() -> None:
    full = syn.SyntheticSource(TINY, num_examples=500, seed=4, split="train")
    cfg = dataclasses.replace(TINY, sequence_weight=0.0)
    ablated = syn.SyntheticSource(cfg, num_examples=500, seed=4, split="train")
    a, b = full.batch(range(500)), ablated.batch(range(500))
    for key in ("sparse", "dense", "seqs"):
        _assert_same(a[key], b[key])
    drop = full.logit(a) - ablated.logit(a)
    np.testing.assert_allclose(drop, full.logit_terms(a)["sequence"], atol=1e-9)
    assert np.abs(drop).mean() > 0.3
    assert ablated.logit_terms(a)["sequence"].max() == 0.0


def test_candidate_like_a_recent_purchase_clicks_more(big: dict) -> None:
    p, category = big["oracle_p"], big["sparse"][:, 2]
    purchase = big["seqs"]["purchase"]
    bought = purchase["length"] > 0
    recent_same = bought & (purchase["side"][:, 0] == category) & (purchase["dt"][:, 0] < 86_400)
    never_same = bought & ~(purchase["side"] == category[:, None]).any(axis=1)
    assert recent_same.sum() > 200
    assert p[recent_same].mean() > p[never_same].mean() + 0.05


def _single_event(source: syn.SyntheticSource, stream: str, dt: float) -> dict:
    """A request whose only history is one event, the candidate item itself, `dt` s ago."""
    example = source[0]
    seqs = {}
    for name, seq in example["seqs"].items():
        seq = {k: np.zeros_like(v) for k, v in seq.items()}
        if name == stream:
            seq["item"][0], seq["side"][0] = example["sparse"][1], example["sparse"][2]
            seq["dt"][0], seq["length"] = dt, np.int32(1)
        seqs[name] = seq
    return example | {"seqs": seqs}


def test_event_types_are_ordered(source: syn.SyntheticSource) -> None:
    empty = _single_event(source, "none", 0.0)
    gain = {
        s: source.logit(_single_event(source, s, 60.0)) - source.logit(empty) for s in syn.STREAMS
    }
    assert gain["purchase"] > gain["click"] > gain["impression"] > 0
    assert syn.STREAM_WEIGHTS[0] > syn.STREAM_WEIGHTS[1] > syn.STREAM_WEIGHTS[2] > 0


@pytest.mark.parametrize("stream", syn.STREAMS)
def test_older_events_matter_less(source: syn.SyntheticSource, stream: str) -> None:
    ages = [60.0, 3600.0, 86_400.0, 30 * 86_400.0]
    logits = [float(source.logit(_single_event(source, stream, age))) for age in ages]
    assert all(a > b for a, b in itertools.pairwise(logits)), logits


def test_shifting_history_older_lowers_p(source: syn.SyntheticSource, big: dict) -> None:
    seqs = {}
    for name, seq in big["seqs"].items():
        real = np.arange(seq["dt"].shape[1]) < seq["length"][:, None]
        seqs[name] = seq | {"dt": np.where(real, seq["dt"] + np.float32(7 * 86_400), 0)}
    before, after = source.logit(big), source.logit(big | {"seqs": seqs})
    assert np.all(after <= before + 1e-9)
    assert (before - after).mean() > 0.3


# ---------------------------------------------------------------------------------------------
# Teacher mode.


@pytest.fixture(scope="module")
def teacher() -> syn.SyntheticSource:
    return syn.SyntheticSource(SyntheticConfig(teacher=True), num_examples=N, seed=0, split="train")


def test_teacher_is_deterministic_and_calibrated(teacher: syn.SyntheticSource) -> None:
    again = syn.SyntheticSource(
        SyntheticConfig(teacher=True), num_examples=N, seed=0, split="train"
    )
    _assert_same(teacher.batch(range(50)), again.batch(range(50)))
    batch = teacher.batch(range(3000))
    p = batch["oracle_p"].astype(np.float64)
    assert 0.15 < p.mean() < 0.5
    assert abs(batch["label"].mean() - p.mean()) < 4 * np.sqrt((p * (1 - p)).sum()) / len(p)
    assert 0.3 < syn.bayes_optimal_ne(teacher, num=3000) < 0.9
    # The teacher reads the histories: forgetting them moves the logit.
    forgotten = batch | {
        "seqs": {k: v | {"length": np.zeros_like(v["length"])} for k, v in batch["seqs"].items()}
    }
    assert np.abs(teacher.logit(batch) - teacher.logit(forgotten)).mean() > 0.2
    # Teacher mode draws the same features, and labels unlike the planted model's.
    planted = syn.SyntheticSource(SyntheticConfig(), num_examples=N, seed=0, split="train")
    planted_batch = planted.batch(range(3000))
    for key in ("sparse", "dense", "seqs"):
        _assert_same(batch[key], planted_batch[key])
    assert np.corrcoef(planted.logit(batch), teacher.logit(batch))[0, 1] < 0.9


def test_label_noise_raises_the_floor(teacher: syn.SyntheticSource) -> None:
    noisy = syn.SyntheticSource(
        SyntheticConfig(teacher=True, label_noise=0.3), num_examples=N, seed=0, split="train"
    )
    clean_ne = syn.bayes_optimal_ne(teacher, num=3000)
    noisy_ne = syn.bayes_optimal_ne(noisy, num=3000)
    assert clean_ne + 0.1 < noisy_ne < 1.0
    p_clean = teacher.batch(range(100))["oracle_p"]
    np.testing.assert_allclose(noisy.batch(range(100))["oracle_p"], 0.7 * p_clean + 0.15, rtol=1e-5)
