"""grain pipelines: bucketed history padding (single- and multi-host) and sources' `lengths`."""

from __future__ import annotations

import itertools
from pathlib import Path

import jax
import numpy as np
import pytest

from kunlun_jax.config import ConfigError, SyntheticConfig, load_config
from kunlun_jax.data import movielens as ml
from kunlun_jax.data import synthetic as syn
from kunlun_jax.data.pipeline import bucket_length, eval_batches, first_batch, train_iterator
from kunlun_jax.data.spec import validate_batch

FIXTURE = Path(__file__).parents[1] / "fixtures" / "ml-latest-small"
SMALL_WORLD = SyntheticConfig(
    num_users=40, num_items=60, num_categories=8, max_history=24, mean_history=3, num_dense=6
)
BUCKETS = (4, 8, 16)


@pytest.mark.parametrize(
    ("longest", "expected"), [(0, 4), (4, 4), (5, 8), (16, 16), (17, 24), (24, 24)]
)
def test_bucket_length_is_the_smallest_fitting_bucket_else_the_stored_length(longest, expected):
    assert bucket_length(longest, BUCKETS, 24) == expected


def test_a_bucket_at_or_above_the_stored_length_is_never_used():
    assert bucket_length(3, (32,), 24) == 24


@pytest.fixture(scope="module")
def synthetic() -> syn.SyntheticSource:
    return syn.SyntheticSource(SMALL_WORLD, num_examples=2_000, seed=1, split="train")


@pytest.fixture(scope="module")
def movielens(tmp_path_factory: pytest.TempPathFactory) -> ml.MovieLensSource:
    out = tmp_path_factory.mktemp("ml")
    ml.prepare("movielens-latest-small", FIXTURE, out)
    return ml.MovieLensSource(out, "train", max_len=24)


@pytest.mark.parametrize("name", ["synthetic", "movielens"])
def test_lengths_match_the_batches(name, request):
    source = request.getfixturevalue(name)
    indices = np.random.default_rng(0).choice(len(source), 300, replace=False)
    batch, lengths = source.batch(indices), source.lengths(indices)
    assert lengths.keys() == batch["seqs"].keys()
    for stream, seq in batch["seqs"].items():
        assert lengths[stream].dtype == np.int32
        np.testing.assert_array_equal(lengths[stream], seq["length"])


@pytest.mark.parametrize("name", ["synthetic", "movielens"])
def test_bucketed_batches_only_drop_padding(name, request):
    source = request.getfixturevalue(name)
    full = train_iterator(source, 2, seed=3)
    bucketed = train_iterator(source, 2, seed=3, buckets=BUCKETS)
    seen = set()
    for a, b in itertools.islice(zip(full, bucketed, strict=True), 40):
        validate_batch(b, source.spec)
        np.testing.assert_array_equal(a["label"], b["label"])
        longest = max(int(seq["length"].max()) for seq in b["seqs"].values())
        t = bucket_length(longest, BUCKETS, max(s.max_len for s in source.spec.streams))
        seen.add(t)
        for stream, seq in b["seqs"].items():
            assert seq["item"].shape[1] == min(t, a["seqs"][stream]["item"].shape[1])
            for key in ("item", "side", "dt", "length"):
                kept = a["seqs"][stream][key][:, :t] if key != "length" else seq["length"]
                np.testing.assert_array_equal(seq[key], kept)
            assert not np.any(a["seqs"][stream]["item"][:, t:])  # what was cut is padding
    assert len(seen) > 1, f"only padded lengths {seen} occurred: the test checks too little"


def test_the_batch_order_and_resume_point_do_not_depend_on_the_threads(synthetic):
    """A run checkpointed with one thread count resumes with another (e.g. on a machine with
    more cores) to the same batches."""
    one = train_iterator(synthetic, 16, seed=2, num_threads=1)
    for _ in range(3):
        next(one)
    state = one.get_state()
    expected = [next(one)["oracle_p"] for _ in range(4)]  # distinct per example
    four = train_iterator(synthetic, 16, seed=2, num_threads=4)
    four.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(four)["oracle_p"], want)
    fresh = train_iterator(synthetic, 16, seed=2, num_threads=4)
    straight = [next(fresh)["oracle_p"] for _ in range(7)]
    for got, want in zip(straight[3:], expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_hosts_reading_part_of_a_batch_pick_the_global_bucket(synthetic):
    """Four hosts, each with two separate spans of rows (as a topology-ordered TPU mesh
    interleaves processes along the batch axis)."""
    whole = train_iterator(synthetic, 32, seed=5, buckets=BUCKETS)
    rows = [np.r_[4 * h : 4 * h + 4, 16 + 4 * h : 20 + 4 * h] for h in range(4)]
    hosts = [train_iterator(synthetic, 32, seed=5, rows=r, buckets=BUCKETS) for r in rows]
    for _ in range(8):
        batch = next(whole)
        parts = [next(h) for h in hosts]
        for stream, seq in batch["seqs"].items():
            for host_rows, part in zip(rows, parts, strict=True):
                np.testing.assert_array_equal(part["seqs"][stream]["item"], seq["item"][host_rows])


def test_eval_batches_bucket_too(synthetic):
    shapes = {b["seqs"]["click"]["item"].shape[1] for b, _ in eval_batches(synthetic, 4, BUCKETS)}
    assert shapes <= {*BUCKETS, SMALL_WORLD.max_history}
    assert len(shapes) > 1


@pytest.mark.parametrize("batch_size", [64, 2_000, 2_048])
def test_first_batch_is_the_first_eval_batch(synthetic, batch_size):
    """Also when the source is smaller than a batch: padded by repeating the last example."""
    expected, n = next(eval_batches(synthetic, batch_size))
    assert n == min(batch_size, len(synthetic))
    got = first_batch(synthetic, batch_size)
    assert got.keys() == expected.keys()
    for (path, a), (_, b) in zip(
        jax.tree_util.tree_leaves_with_path(got),
        jax.tree_util.tree_leaves_with_path(expected),
        strict=True,
    ):
        assert a.shape[0] == batch_size, path
        np.testing.assert_array_equal(a, b, err_msg=str(path))


@pytest.mark.parametrize(
    ("buckets", "message"),
    [("[8, 4]", "strictly increasing"), ("[4, 4]", "strictly increasing"), ("[1, 8]", "n_tok")],
)
def test_bad_buckets_name_the_field(buckets, message):
    with pytest.raises(ConfigError, match=rf"data\.length_buckets.*{message}"):
        load_config("tiny", [f"data.length_buckets={buckets}"])
