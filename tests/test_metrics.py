import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kunlun_jax.metrics import StreamingMetrics, auc, binary_entropy, log_loss, normalized_entropy


def test_log_loss_and_ne_match_hand_computed_values():
    y = np.array([1, 0, 1, 1])
    p = np.array([0.9, 0.2, 0.6, 0.5])
    expected_ll = -(np.log(0.9) + np.log(0.8) + np.log(0.6) + np.log(0.5)) / 4
    assert log_loss(y, p) == pytest.approx(expected_ll, rel=1e-12)
    h = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
    assert normalized_entropy(y, p) == pytest.approx(expected_ll / h, rel=1e-12)
    # With a given (training) base rate the denominator changes accordingly.
    h5 = np.log(2.0)
    assert normalized_entropy(y, p, base_rate=0.5) == pytest.approx(expected_ll / h5, rel=1e-12)


def test_predicting_the_base_rate_gives_ne_one():
    y = np.array([1, 0, 0, 0, 1, 0, 0, 0])
    assert normalized_entropy(y, np.full(8, 0.25)) == pytest.approx(1.0, rel=1e-9)


def test_binary_entropy_edges():
    assert float(binary_entropy(0.5)) == pytest.approx(np.log(2))
    assert float(binary_entropy(0.0)) < 1e-5
    assert float(binary_entropy(1.0)) < 1e-5


def test_auc_hand_computed_with_ties():
    # pairs (pos, neg): scores pos = [0.8, 0.4], neg = [0.4, 0.1]
    # (0.8>0.4)=1 (0.8>0.1)=1 (0.4=0.4)=0.5 (0.4>0.1)=1 -> 3.5 / 4
    y = np.array([1, 1, 0, 0])
    s = np.array([0.8, 0.4, 0.4, 0.1])
    assert auc(y, s) == pytest.approx(0.875)
    assert np.isnan(auc(np.ones(3), np.arange(3.0)))


def _pairwise_auc(y, s):
    pos, neg = s[y == 1], s[y == 0]
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / (len(pos) * len(neg))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 300), st.booleans())
def test_auc_matches_pairwise_definition(seed, n, discrete):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    if y.min() == y.max():
        y[0] = 1 - y[0]
    s = rng.integers(0, 5, n).astype(float) if discrete else rng.normal(size=n)
    assert auc(y, s) == pytest.approx(_pairwise_auc(y, s), abs=1e-12)


def test_streaming_equals_one_shot():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 1000).astype(float)
    p = rng.uniform(0.01, 0.99, 1000)
    oracle = rng.uniform(0.01, 0.99, 1000)
    m = StreamingMetrics()
    for i in range(0, 1000, 128):
        m.update(y[i : i + 128], p[i : i + 128], oracle[i : i + 128])
    out = m.compute()
    assert out["count"] == 1000
    assert out["ne"] == pytest.approx(normalized_entropy(y, p), rel=1e-12)
    assert out["auc"] == pytest.approx(auc(y, p), rel=1e-12)
    assert out["log_loss"] == pytest.approx(log_loss(y, p), rel=1e-12)
    assert out["calibration"] == pytest.approx(p.mean() / y.mean(), rel=1e-12)
    expected_oracle = np.mean(binary_entropy(oracle)) / binary_entropy(y.mean())
    assert out["oracle_ne"] == pytest.approx(expected_oracle, rel=1e-12)


def test_streaming_rejects_bad_input():
    m = StreamingMetrics()
    with pytest.raises(ValueError, match="no examples"):
        m.compute()
    with pytest.raises(ValueError, match="NaN or Inf"):
        m.update(np.array([1.0]), np.array([np.nan]))
    with pytest.raises(ValueError, match="differ in shape"):
        m.update(np.array([1.0, 0.0]), np.array([0.5]))


def test_task_metrics_report_each_task_like_its_own_stream():
    from kunlun_jax.metrics import TaskMetrics

    rng = np.random.default_rng(0)
    labels = (rng.random((200, 2)) < [0.6, 0.2]).astype(np.float32)
    probs = rng.uniform(0.05, 0.95, (200, 2))
    oracle = rng.uniform(0.05, 0.95, (200, 2))
    both = TaskMetrics(("like", "love"), base_rates=(0.5, 0.25))
    for lo in range(0, 200, 64):  # streamed in batches
        both.update(labels[lo : lo + 64], probs[lo : lo + 64], oracle[lo : lo + 64])
    out = both.compute()
    for t, (name, rate) in enumerate([("like", 0.5), ("love", 0.25)]):
        alone = StreamingMetrics(base_rate=rate)
        alone.update(labels[:, t], probs[:, t], oracle[:, t])
        prefix = "" if t == 0 else f"{name}/"
        for key, value in alone.compute().items():
            assert out[prefix + key] == pytest.approx(value, rel=1e-12), prefix + key
    assert {"oracle_ne", "love/oracle_ne"} <= set(out)
    with pytest.raises(ValueError, match=r"oracle_p \(64,\) must have the labels' shape"):
        both.update(labels[:64], probs[:64], oracle[:64, 0])
    one = TaskMetrics(("click",))
    one.update(labels[:, 0], probs[:, 0])
    assert one.compute()["ne"] == pytest.approx(normalized_entropy(labels[:, 0], probs[:, 0]))
    with pytest.raises(ValueError, match=r"must both be \[B, 2\] for the tasks"):
        both.update(labels[:, 0], probs[:, 0])
    with pytest.raises(ValueError, match="1 base rates for the 2 tasks"):
        TaskMetrics(("like", "love"), base_rates=(0.5,))
