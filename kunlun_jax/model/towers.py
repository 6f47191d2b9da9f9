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


@dataclasses.dataclass(frozen=True)
class Segment:
    """`repeats` consecutive groups of `group_size` layers (a CompSkip pair, or one layer) that
    run the same streams: compiled once and scanned, so compile time does not grow with depth."""

    start: int  # index of the first layer
    group_size: int
    repeats: int
    active: tuple[str, ...]  # streams whose towers run in these layers (layer < L_e)


def layer_segments(cfg: ModelConfig, towers: tuple[Tower, ...]) -> tuple[Segment, ...]:
    """Splits layers 0..L-1 into segments of identical groups.

    A segment boundary falls where a stream's tower ends (layer == L_e). With CompSkip a
    group is an (even, odd) layer pair; an unpaired layer at a boundary is its own segment.
    """
    runs: list[tuple[int, int, tuple[str, ...]]] = []
    for layer in range(cfg.num_layers):
        active = tuple(t.name for t in towers if layer < t.num_layers)
        if runs and runs[-1][2] == active:
            runs[-1] = (runs[-1][0], layer + 1, active)
        else:
            runs.append((layer, layer + 1, active))
    segments = []
    for start, stop, active in runs:
        if not cfg.compskip:
            segments.append(Segment(start, 1, stop - start, active))
            continue
        if start % 2:
            segments.append(Segment(start, 1, 1, active))
            start += 1
        if (pairs := (stop - start) // 2) > 0:
            segments.append(Segment(start, 2, pairs, active))
        if (stop - start) % 2:
            segments.append(Segment(stop - 1, 1, 1, active))
    return tuple(segments)
