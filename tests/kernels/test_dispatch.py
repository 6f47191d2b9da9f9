"""The record of which implementation each public op ran (`common.dispatch`): what a
benchmark reports beside its numbers, since "auto" picks per platform, head dim and shape."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from pallas_kernels.common import dispatch
from pallas_kernels.gdpa import gdpa
from pallas_kernels.hsp import seed_pooling
from pallas_kernels.swa import api as swa_api
from pallas_kernels.swa import swa_attention
from pallas_kernels.swa.reference import attention_reference
from tests.kernels.helpers import normal_inputs

Q, K, V, SEEDS = normal_inputs(0, [(1, 8, 1, 32)] * 3 + [(4, 1, 32)], "float32")


def test_each_op_records_the_implementation_it_ran():
    with dispatch.recording() as ran:
        gdpa(Q, K, V, backend="auto")  # CPU: auto runs the reference
        gdpa(Q, K, V, backend="reference")
        swa_attention(Q, K, V, window=2, backend="auto")
        seed_pooling(SEEDS, K, V, backend="auto")
    assert ran == collections.Counter(
        {("gdpa", "reference"): 2, ("attention", "reference"): 1, ("seed_pooling", "reference"): 1}
    )
    assert dispatch.describe(ran) == (
        "attention: reference × 1, gdpa: reference × 2, seed_pooling: reference × 1"
    )
    gdpa(Q, K, V)  # outside a recording: nothing to count into, no error
    assert sum(ran.values()) == 4


@pytest.mark.parametrize("tokamax_refuses", [False, True])
def test_auto_attention_records_tokamax_or_the_reference_it_fell_back_to(
    monkeypatch, tokamax_refuses
):
    """On GPU "auto" tries a tokamax kernel first and falls back to the reference where
    tokamax raises NotImplementedError; the record names the one that ran."""
    monkeypatch.setattr(swa_api, "_resolve_backend", lambda *_: ("tokamax_xla", "reference"))
    if tokamax_refuses:

        def refuse(*args, **kwargs):
            raise NotImplementedError("not this case")

        monkeypatch.setattr(swa_api, "swa_tokamax", refuse)
    with dispatch.recording() as ran:
        out = swa_attention(Q, K, V, window=2, backend="auto")
    ran_impl = "reference" if tokamax_refuses else "tokamax_xla"
    assert ran == collections.Counter({("attention", ran_impl): 1})
    want = attention_reference(Q, K, V, scale=32**-0.5, window=2)
    np.testing.assert_allclose(np.asarray(out), np.asarray(want), rtol=2e-5, atol=2e-5)
