import numpy as np
import pytest

from kunlun_jax.data.spec import BatchError, validate_batch
from tests.conftest import random_batch


def test_random_batch_is_valid(tiny_spec):
    validate_batch(random_batch(tiny_spec, 8), tiny_spec)


def _corrupt(batch, path, fn):
    node = batch
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = fn(node[path[-1]])
    return batch


@pytest.mark.parametrize(
    ("path", "fn", "message"),
    [
        (("label",), lambda a: a + 2, r"'label' must hold only 0 or 1"),
        (("sparse",), lambda a: a.astype(np.float32), r"'sparse' has dtype float32"),
        (("sparse",), lambda a: a[:, :2], r"'sparse' has shape \(8, 2\); expected \(8, 3\)"),
        (("sparse",), lambda a: a + 1000, r"column 0 \('user'\) has id .* outside \[0, 50\)"),
        (("dense",), lambda a: a * np.nan, r"'dense' holds NaN or Inf"),
        (("dense",), lambda a: a.astype(np.float64) * 1e39, r"beyond float32's range"),
        (("seqs", "view", "dt"), lambda a: a.astype(np.float64) * 1e39, r"finite in float32"),
        (("seqs", "click"), lambda a: a["item"], r"'seqs.click' must be a dict"),
        (
            ("seqs", "click", "length"),
            lambda a: a + 100,
            r"seqs\.click\.length must be in \[0, 12\]",
        ),
        (("seqs", "view", "item"), lambda a: a + 1000, r"seqs\.view\.item has ids outside"),
        (
            ("seqs", "view", "dt"),
            lambda a: -a - 1,
            r"seqs\.view\.dt must be finite in float32 and >= 0",
        ),
        (
            ("seqs", "view", "dt"),
            lambda a: np.concatenate([a[:, 6::-1], a[:, 7:]], axis=1),
            r"non-decreasing",
        ),
        (("seqs", "click", "item"), lambda a: a * 0, r"padding id 0 for a real event"),
    ],
)
def test_corrupt_batches_are_rejected_with_the_field_named(tiny_spec, path, fn, message):
    batch = random_batch(tiny_spec, 8, lengths={"click": np.full(8, 5), "view": np.full(8, 7)})
    with pytest.raises(BatchError, match=message):
        validate_batch(_corrupt(batch, path, fn), tiny_spec)


def test_true_click_probabilities_are_checked_where_given(tiny_spec):
    batch = random_batch(tiny_spec, 4)
    batch["oracle_p"] = np.full(4, 0.25, np.float32)
    validate_batch(batch, tiny_spec)
    batch["oracle_p"][1] = np.nan
    with pytest.raises(BatchError, match=r"'oracle_p' must be in \[0, 1\]"):
        validate_batch(batch, tiny_spec)
    batch["oracle_p"] = np.full((4, 2), 0.25, np.float32)
    with pytest.raises(BatchError, match=r"'oracle_p' has shape \(4, 2\); expected \(4,\)"):
        validate_batch(batch, tiny_spec)


def test_missing_stream_and_field(tiny_spec):
    batch = random_batch(tiny_spec, 4)
    del batch["seqs"]["view"]
    with pytest.raises(BatchError, match="do not match the spec"):
        validate_batch(batch, tiny_spec)
    batch = random_batch(tiny_spec, 4)
    del batch["dense"]
    with pytest.raises(BatchError, match="missing field 'dense'"):
        validate_batch(batch, tiny_spec)
