"""`build_model(model_cfg, spec)`: the model named by `model.arch` (Kunlun or a baseline)."""

from __future__ import annotations

import flax.linen as nn

from kunlun_jax.baselines import DIN, DCNv2, InterFormer, WukongRanker
from kunlun_jax.config import ModelConfig
from kunlun_jax.data.spec import FeatureSpec
from kunlun_jax.model.kunlun import Kunlun

MODELS: dict[str, type[nn.Module]] = {
    "kunlun": Kunlun,
    "interformer": InterFormer,
    "wukong": WukongRanker,
    "dcnv2": DCNv2,
    "din": DIN,
}


def build_model(cfg: ModelConfig, spec: FeatureSpec) -> nn.Module:
    """The Flax module for `cfg.arch`: `model.apply({"params": p}, batch, train=...)` -> [B]
    logits, or [B, K] for K > 1 tasks (`spec.tasks`)."""
    if cfg.arch not in MODELS:
        raise ValueError(f"model.arch = {cfg.arch!r} is not valid; choose one of {list(MODELS)}")
    return MODELS[cfg.arch](cfg, spec)
