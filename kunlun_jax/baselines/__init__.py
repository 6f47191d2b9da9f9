"""Baseline ranking models trained by the same loop as Kunlun (dispatch: `model.arch`).

Each takes a `kunlun_jax.data.spec` batch and returns click logits [B] (or [B, K] for K > 1
tasks, `spec.tasks`, from the shared `task_logits` head); every parameter carries logical axis
names, embedding tables first 'vocab' (the optimizer's 'embedding' group).
"""

from kunlun_jax.baselines.dcnv2 import DCNv2
from kunlun_jax.baselines.din import DIN
from kunlun_jax.baselines.interformer import InterFormer
from kunlun_jax.baselines.wukong import WukongRanker

__all__ = ["DIN", "DCNv2", "InterFormer", "WukongRanker"]
