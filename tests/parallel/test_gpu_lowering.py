"""The sharded train step, every GPU kernel in it, lowered for H100s that are not attached.

The mesh is 4 of the simulated CPU devices (data=2 x fsdp=2), or one for `base`; the program
is lowered for CUDA with the model's kernels chosen as on an H100 (`lowering_for_gpu`): GDPA
and seed pooling as Pallas Triton kernels, sliding-window attention as tokamax's Mosaic GPU
kernel. This is the
whole step a GPU run compiles (sharding, shard_map around each kernel, the backward kernels),
short of XLA:GPU and ptxas, checked without device time.
"""

from __future__ import annotations

import collections
import re

import jax
import pytest

from kunlun_jax.config import load_config
from kunlun_jax.parallel.aot import lower_train_step
from kunlun_jax.train.experiment import plan_config
from tests.kernels.helpers import (
    H100,
    MOSAIC_GPU_CALL,
    TRITON_CALL,
    custom_calls,
    lowering_for_gpu,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore:The Pallas Triton backend is deprecated:DeprecationWarning"
)
# bf16 (tokamax's GPU attention takes no fp32) and head dim 64 (its Mosaic GPU kernel's
# multiple): the model's attention, GDPA FFN and seed pooling all have a GPU kernel.
GPU_SHAPED = [
    "data.num_eval=256",
    "data.synthetic.max_history=16",
    "data.synthetic.mean_history=6",
    "model.d_model=128",
    "model.num_heads=2",
    "model.dtype=bfloat16",
    "model.head_hidden=[32]",
    "model.streams.impression.d_model=128",
    "model.streams.impression.max_len=8",
    "train.batch_size=32",
    "mesh.data=2",
    "mesh.fsdp=2",
]
TRITON_KERNELS = (
    "gdpa_fwd_triton",
    "gdpa_dq_triton",
    "gdpa_dkdv_triton",
    "seed_pooling_fwd_triton",
    "seed_pooling_bwd_triton",
)


def _kernels_in_step(name: str, overrides: list[str], n_devices: int):
    """(custom call targets, Triton kernel names) of config `name`'s step on n_devices,
    lowered for H100s."""
    config = load_config(name, overrides)
    layout, example = plan_config(config, jax.devices()[:n_devices])
    with layout.activate(), lowering_for_gpu(H100, layout.plan.mesh):
        text = lower_train_step(layout, example, lowering_platforms=("cuda",)).as_text()
    targets = custom_calls(text)
    names = collections.Counter(re.findall(r'name = "(\w+_triton)"', text))
    return targets, names


@pytest.mark.parametrize(
    ("name", "overrides", "n_devices"),
    [
        ("tiny", [*GPU_SHAPED, "model.kernels=auto"], 4),
        ("tiny", [*GPU_SHAPED, "model.kernels=pallas"], 4),
        # What the GPU session's bench stage runs on one GPU.
        pytest.param("base", ["mesh.data=1"], 1, marks=pytest.mark.slow),
    ],
)
def test_the_step_lowers_with_every_gpu_kernel(name, overrides, n_devices):
    targets, names = _kernels_in_step(name, overrides, n_devices)
    for name in TRITON_KERNELS:
        assert names[name] > 0, (name, names)
    # Every GDPA layer runs its three kernels; the softmax attention is tokamax's Mosaic GPU
    # kernel (forward + two backward kernels per layer), not the XLA reference.
    assert names["gdpa_fwd_triton"] == names["gdpa_dq_triton"] == names["gdpa_dkdv_triton"]
    assert targets[MOSAIC_GPU_CALL] > 0, targets
    assert targets[MOSAIC_GPU_CALL] % 3 == 0, targets
    assert targets[TRITON_CALL] == sum(names.values())
