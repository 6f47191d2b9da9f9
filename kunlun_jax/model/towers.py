"""Per-stream tower sizes, resolved from the model config (event-level personalization)."""

from __future__ import annotations

import dataclasses

from kunlun_jax.config import ModelConfig
from kunlun_jax.data.spec import FeatureSpec


@dataclasses.dataclass(frozen=True)
class Tower:
    """Resolved sizes of one event stream's tower."""

    name: str
    max_len: int  # T_e
    d_model: int  # d_e
    num_heads: int  # H_e
    num_layers: int  # L_e
    n_tok: int
    window: int  # 0 = full attention

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads


def resolve_towers(cfg: ModelConfig, spec: FeatureSpec) -> tuple[Tower, ...]:
    """One Tower per stream of `spec`. With event personalization off every stream uses the
    model-wide sizes; on, `cfg.streams[name]` fields override them (0 / -1 = inherit)."""
    unknown = set(cfg.streams) - set(spec.stream_names)
    if unknown:
        raise ValueError(
            f"model.streams names {sorted(unknown)} are not streams of the dataset; "
            f"its streams are {list(spec.stream_names)}"
        )
    towers = []
    for s in spec.streams:
        o = cfg.streams.get(s.name) if cfg.event_personalization else None
        max_len = min(o.max_len, s.max_len) if o and o.max_len else s.max_len
        towers.append(
            Tower(
                name=s.name,
                max_len=max_len,
                d_model=(o and o.d_model) or cfg.d_model,
                num_heads=(o and o.num_heads) or cfg.num_heads,
                num_layers=(o and o.num_layers) or cfg.num_layers,
                n_tok=(o and o.n_tok) or cfg.n_tok,
                window=o.window if o and o.window >= 0 else cfg.window,
            )
        )
    return tuple(towers)


def layer_roles(cfg: ModelConfig, layer: int) -> tuple[bool, bool, bool]:
    """(runs GDPA FFN, runs SWA, computes a fresh HSP summary) for layer `layer`.

    CompSkip alternates: even layers GDPA + fresh summary, odd layers SWA + cached summary.
    Without CompSkip every layer does all three.
    """
    if not cfg.compskip:
        return True, True, True
    even = layer % 2 == 0
    return even, not even, even
