"""Typed configuration tree, named configs from `configs/*.toml`, and `--set` overrides.

A config is a frozen dataclass tree (`Config`). Named configs are TOML files holding only the
fields that differ from the defaults below. Overrides use dotted paths:
`--set model.num_layers=4 --set train.learning_rate=3e-3`. Unknown keys and bad values raise
`ConfigError` naming the field and listing what is valid.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the field and the fix."""


@dataclasses.dataclass(frozen=True)
class StreamTower:
    """Per-event-stream tower sizes (event-level personalization). 0 = inherit from `model`."""

    max_len: int = 0  # T_e: most recent events kept for this stream
    d_model: int = 0  # d_e: width of the stream's tower
    num_heads: int = 0  # H_e
    num_layers: int = 0  # L_e: layers this stream runs (<= model.num_layers)
    n_tok: int = 0  # HSP output tokens for this stream
    window: int = -1  # SWA half-window w_e (-1 inherit, 0 = full attention)


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the embedded synthetic ranking-traffic generator (kunlun_jax.data.synthetic)."""

    num_users: int = 2000
    num_items: int = 5000
    num_categories: int = 32
    num_contexts: int = 24  # e.g. hour of day
    num_devices: int = 4
    latent_dim: int = 8
    num_dense: int = 4
    max_history: int = 64  # longest event history generated per stream
    mean_history: int = 20  # mean of the long-tailed history length
    affinity_weight: float = 1.2  # weight of user x candidate affinity
    sequence_weight: float = 1.6  # weight of recency-weighted similarity to past events
    context_weight: float = 0.5  # weight of context (hour / device) bias
    dense_weight: float = 0.3
    bias: float = -0.6  # global logit offset
    teacher: bool = False  # labels from a fixed random deep network instead of the planted model
    teacher_depth: int = 3
    teacher_width: int = 64
    label_noise: float = 0.0  # teacher mode: probability mixing with a coin flip


@dataclasses.dataclass(frozen=True)
class DataConfig:
    source: Literal["synthetic", "movielens-100k", "movielens-1m", "movielens-latest-small"] = (
        "synthetic"
    )
    path: str = ""  # raw or prepared data directory for the real datasets
    max_len: int = 50  # real datasets: most recent events kept per history stream
    # Pad each batch's histories only to the smallest of these lengths that fits its longest
    # history (else the stored length) instead of always to the stored length; each distinct
    # padded shape compiles the step once. () = always the stored length.
    length_buckets: tuple[int, ...] = ()
    # The labels to predict (multi-task: one head output each, the first is the primary task
    # whose metrics are the unprefixed ones); () = the source's first in SOURCE_TASKS.
    tasks: tuple[str, ...] = ()
    num_train: int = 100_000  # synthetic: examples per epoch
    num_eval: int = 10_000  # synthetic: held-out examples
    seed: int = 0
    synthetic: SyntheticConfig = SyntheticConfig()


# The labels each data source has (data.tasks), its default first: the synthetic click, and
# MovieLens "like" (rating >= 4 stars) and "love" (5 stars).
SOURCE_TASKS: dict[str, tuple[str, ...]] = {
    "synthetic": ("click", "conversion"),
    **{f"movielens-{v}": ("like", "love") for v in ("100k", "1m", "latest-small")},
}
# Labels that imply another (a conversion needs a click, 5 stars are >= 4): child -> parent.
TASK_PARENTS: dict[str, str] = {"conversion": "click", "love": "like"}


def task_names(data: DataConfig) -> tuple[str, ...]:
    """The tasks a model of `data` predicts: data.tasks, or the source's default one."""
    return tuple(data.tasks) or SOURCE_TASKS[data.source][:1]


# Model architectures, built by kunlun_jax.model.factory.build_model.
Arch = Literal["kunlun", "interformer", "wukong", "dcnv2", "din"]
ARCHS: tuple[str, ...] = typing.get_args(Arch)
# The archs built around WeightGen, the only ones that read model.weight_gen_norm.
WEIGHT_GEN_ARCHS = ("kunlun", "interformer")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    # Which model: Kunlun, or a baseline (kunlun_jax/baselines) reading the fields it documents.
    arch: Arch = "kunlun"
    d_model: int = 64  # d: width of non-sequence tokens and (by default) sequence towers
    num_heads: int = 4  # H
    num_layers: int = 2  # L Kunlun layers (CompSkip pairs them: GDPA layer, then SWA layer)
    n_sum: int = 8  # summary tokens from personalized weight generation (= GDPA K/V length)
    # LayerNorm on the tokens WeightGen mixes (Kunlun, InterFormer). In the first layer they
    # are the raw embeddings: the norm scales every id's row to unit size, rows that training
    # barely moved (rare and unseen ids) included. Off by default: on ML-100K the norm cost
    # 0.034 test NE against a rerun with it (README, "Kunlun vs baselines on ML-100K").
    weight_gen_norm: bool = False
    n_seed: int = 16  # HSP learnable seeds (overcomplete: > n_tok)
    n_tok: int = 4  # HSP output tokens per stream
    skl_rank: int = 4  # k: Kronecker terms in SumKronLinear
    window: int = 16  # SWA half-window w (token t sees [t-w, t+w]); 0 = full attention
    # Causal SWA mask: query i sees key j only if j <= i in the stored order (with a window,
    # i - w <= j <= i). Histories are stored newest-first, so an event sees itself and NEWER
    # events only (closer to the request), never older ones: the newest event sees only
    # itself. That is causal in storage order and reversed in time; causal in time (an event
    # sees its past, j >= i here) is not implemented. The spec says only "causal variant
    # configurable". Applies to the SWA layers' attention (softmax or GDPA), not to HSP.
    causal: bool = False
    # Scores of the SWA layers' self-attention and of the HSP / PMA seed attention: softmax, or
    # GDPA (gdpa_activation, gdpa_qk_scale; beta = gdpa_out_scale or 1 / T_e, the stream's
    # maximum length: the paper's 1/tau).
    seq_attention: Literal["softmax", "gdpa"] = "softmax"
    seed_attention: Literal["softmax", "gdpa"] = "softmax"
    ffn: Literal["gdpa", "pffn"] = "gdpa"  # GDPA personalized FFN, or InterFormer's d x d PFFN
    gdpa_activation: str = "silu"
    gdpa_qk_scale: float = 1.0  # alpha: applied before the activation
    gdpa_out_scale: float = 0.0  # beta after the activation; 0 = 1 / n_sum in the FFN, 1 / T_e
    # in GDPA self / seed attention (Meta's kernels: 1/tau)
    pooling: Literal["hsp", "pma", "mean"] = "hsp"
    compression: Literal["sumkron", "dense"] = "sumkron"
    rote: bool = True  # rotary temporal encoding on Q/K of the sequence self-attention
    rote_t_scale: float = 3600.0  # seconds: angle driven by log(1 + dt / t_scale)
    rote_gap: Literal["request", "previous"] = (
        "request"  # dt to the request, or to the previous event
    )
    rote_position: bool = False  # also rotate by the event's position (0 = newest), as RoPE
    # ROTE on the keys of the HSP / PMA seed attention: events rotated by their time before the
    # request, seeds at the request (angle 0), so a seed's scores see each event's recency
    seed_rote: bool = False
    compskip: bool = True  # alternate GDPA+fresh HSP / SWA+cached HSP layers
    event_personalization: bool = True  # per-stream tower sizes from `streams`
    num_experts: int = 2  # Wukong experts in the global interaction
    # How the experts split their input tokens [X_sum ; summaries] (n = n_sum + sum_e n_tok_e,
    # the streams' summaries in stream order): "contiguous" cuts that sequence by count alone
    # into M blocks whose sizes differ by at most one, the larger first (np.array_split);
    # "interleaved" gives expert m tokens m, m + M, m + 2M, ... With 2 contiguous experts,
    # one sees exactly X_sum and the other the summaries only when n_sum = n / 2 (`movielens`:
    # 4 | 2 + 2); in `tiny` (4 + 3 x 2 tokens) expert 0 sees X_sum and the first stream's
    # first summary token, expert 1 the rest; in `small`, `base` and `paper` expert 0 sees
    # X_sum and the first stream's whole summary.
    expert_partition: Literal["contiguous", "interleaved"] = "contiguous"
    wukong_fm_rank: int = 4  # k_fm: low-rank FM projection
    wukong_fm_tokens: int = 0  # n_F tokens out of the FM block; 0 = half the tokens
    mlp_ratio: int = 2  # hidden width of token MLPs = mlp_ratio * d
    head_hidden: tuple[int, ...] = (64, 32)
    # With several tasks (data.tasks): one head MLP with an output per task ("shared"), a
    # head MLP (tower) per task on the shared features ("per_task"), "mmoe": task_experts
    # expert layers (width head_hidden[0]) mixed by a softmax gate per task, each mixture
    # through its task's tower (the rest of head_hidden), "ple": PLE's ple_levels extraction
    # levels (level l's experts head_hidden[l] wide), each with task_experts shared experts and
    # task_own_experts of each task's own, towers on the rest of head_hidden, or "esmm": the
    # shared head, where a task whose parent (TASK_PARENTS) is also trained predicts
    # P(child | parent), so that P(child) = P(parent) · P(child | parent) <= P(parent).
    # One task: one head.
    task_heads: Literal["shared", "per_task", "mmoe", "ple", "esmm"] = "shared"
    task_experts: int = 4
    task_own_experts: int = 1
    ple_levels: int = 1
    dropout: float = 0.0
    kernels: Literal["reference", "pallas", "auto"] = "reference"
    vocab_multiple: int = 64  # embedding tables get rows rounded up to this (even row shards)
    dtype: Literal["float32", "bfloat16"] = "float32"  # compute dtype; params stay float32
    remat: Literal["none", "full", "dots"] = "none"
    streams: Mapping[str, StreamTower] = dataclasses.field(default_factory=dict)

    def expert_levels(self) -> tuple[int, int]:
        """(expert levels, experts of each task's own per level) of an "mmoe" (1, 0) or "ple"
        (ple_levels, task_own_experts) head."""
        if self.task_heads == "ple":
            return self.ple_levels, self.task_own_experts
        return 1, 0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 256
    steps: int = 1000
    learning_rate: float = 3e-3  # dense params (AdamW)
    embedding_learning_rate: float = 5e-2  # embedding tables (Adagrad)
    # Adagrad's starting sum of squared gradients. 0.1 is far above the rows' squared gradients
    # on `tiny`, so the tables barely leave their initialization; ~1e-6 lets them learn, which
    # helps a little with fresh data and overfits data seen several times (README, "Where tiny
    # stops").
    embedding_initial_accumulator: float = 0.1
    warmup_steps: int = 50
    # Length of the warmup + cosine schedule in steps (after it, the final rate); 0 =
    # train.steps. A resume that changes train.steps keeps the run's own length.
    decay_steps: int = 0
    weight_decay: float = 1e-4
    clip_norm: float = 1.0
    eval_every: int = 0  # 0 = only at the end
    log_every: int = 50
    checkpoint_every: int = 0  # 0 = only at the end
    keep_checkpoints: int = 2
    seed: int = 0
    # Generator of the initial parameters: "rbg" (XLA's bit generator, the fastest to compile;
    # XLA does not partition it, so a sharded table's init briefly holds the whole table's
    # bits on each device) or "threefry" (partitioned: each device generates only its shard,
    # the same values on any mesh; for tables too large for that). The two give other values.
    init_rng: Literal["rbg", "threefry"] = "rbg"
    nan_policy: Literal["stop", "skip"] = "stop"
    grad_accum_steps: int = 1  # micro-batches per step; batch_size is the global batch
    # Multi-task loss: sum_k w_k BCE_k / sum_k w_k over the data.tasks; () = equal weights.
    task_weights: tuple[float, ...] = ()
    embedding_optimizer: Literal["adagrad", "rowwise_adagrad"] = "adagrad"
    keep_best: int = 0  # also keep this many checkpoints with the lowest eval NE
    async_checkpoints: bool = True  # save in a background thread (still atomic)
    # Steps [start, stop) traced by jax.profiler into the run's tb/ (xprof, TensorBoard's
    # profile plugin), e.g. [10, 13]; () = no trace. Step 0 (and a resume's first) compiles.
    profile_steps: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh and logical-axis rules. Axis sizes multiply to the device count used;
    one axis may be -1 (all remaining devices). Changing the parallelism is a config change."""

    data: int = -1  # data parallelism: the batch is split, parameters replicated
    fsdp: int = 1  # fully sharded data parallelism: batch and dense weights split
    model: int = 1  # tensor/expert parallelism: heads, MLP width and experts split
    # Logical axis -> mesh axes, overriding kunlun_jax.parallel.sharding.DEFAULT_RULES entries,
    # e.g. {vocab = ["model"]} keeps embedding rows within a model-parallel group.
    rules: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    # Embedding lookup from row-sharded tables (kunlun_jax/parallel/lookup.py): "all_to_all"
    # routes ids to their rows' owners (traffic independent of the table group's size) with
    # `lookup_capacity` x ids / group slots per destination; a step where some destination
    # gets more ids runs extra exchange rounds in a loop (exact, nothing dropped).
    lookup: Literal["reduce_scatter", "all_to_all"] = "reduce_scatter"
    lookup_capacity: float = 2.0


@dataclasses.dataclass(frozen=True)
class Config:
    name: str = "default"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    mesh: MeshConfig = MeshConfig()


# GDPA activations: pallas_kernels.common.activations.ACTIVATIONS' names (config loading
# imports no jax; tests/test_config.py checks the two agree).
ACTIVATIONS = (
    "silu",
    "gelu",
    "gelu_tanh",
    "relu",
    "relu2",
    "sigmoid",
    "identity",
    "leaky_relu",
    "hardswish",
)


# ---------------------------------------------------------------------------------------------
# Building dataclasses from plain dicts, with type checks that name the field.


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where} = {value!r} is not valid; choose one of {list(allowed)}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a table of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, where)
    if origin in (Mapping, dict):
        _, val_tp = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a table, got {value!r}")
        return types.MappingProxyType(
            {str(k): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
        )
    if origin is tuple:
        (elem_tp, _ellipsis) = typing.get_args(tp)
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise ConfigError(f"{where} must be a list of {_type_name(elem_tp)}, got {value!r}")
        return tuple(_coerce(v, elem_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config field type {tp!r} at {where}")


def _build(cls: type, values: Mapping[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(_unknown_key_message(f"{where}.{key}".lstrip("."), key, fields))
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}".lstrip("."))
    return cls(**kwargs)


def _unknown_key_message(path: str, key: str, valid: set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(valid), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown config key {path!r}{hint}; valid keys here: {', '.join(sorted(valid))}"


def to_dict(obj: Any) -> Any:
    """Plain-python view of a config (dicts, lists, scalars), e.g. for JSON or TOML output."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return [to_dict(v) for v in obj]
    return obj


def from_dict(values: Mapping[str, Any]) -> Config:
    """Builds and validates a `Config` from a (possibly partial) nested dict."""
    config = _build(Config, values, "")
    validate(config)
    return config


# ---------------------------------------------------------------------------------------------
# Named configs and overrides.


def available_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def _load_named(name_or_path: str) -> dict[str, Any]:
    """The values of a named config, a .toml file, or a run's config.json."""
    path = Path(name_or_path)
    if path.suffix not in (".toml", ".json"):
        path = CONFIG_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise ConfigError(
            f"config {name_or_path!r} not found; named configs: {', '.join(available_configs())} "
            "(or pass a path to a .toml file or a run's config.json)"
        )
    try:
        if path.suffix == ".json":
            values = json.loads(path.read_text())
        else:
            values = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid {path.suffix[1:].upper()}: {e}") from e
    if not isinstance(values, dict):
        raise ConfigError(
            f"config file {path} must hold a table of sections (data, model, train, ...), "
            f"got a {type(values).__name__}"
        )
    values.setdefault("name", path.stem)
    if path.suffix == ".json":
        _restore_former_defaults(values)
    return values


def _restore_former_defaults(values: dict[str, Any]) -> None:
    """A run's config.json written before a field existed ran with that field's behaviour of
    the time; where the default has changed since, reads it back with the old value, so that a
    resume, `kunlun-jax eval` or a study's read-back rebuilds the model that run trained.
    model.weight_gen_norm (default false since it was added) was always on before."""
    model = values.get("model")
    if not isinstance(model, dict) or "weight_gen_norm" in model:
        return
    if model.get("arch", "kunlun") in WEIGHT_GEN_ARCHS:
        model["weight_gen_norm"] = True


def parse_override(text: str) -> tuple[list[str], Any]:
    """`'model.num_layers=4'` -> (['model', 'num_layers'], 4). Values are TOML literals;
    a bare word that is not one (e.g. `silu`) is taken as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like section.key=value")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.strip().split("."), value


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {'.'.join(path)}: {part} is not a table")
        node = child
    node[path[-1]] = value


def load_config(name_or_path: str = "tiny", overrides: Sequence[str] = ()) -> Config:
    """Loads a named config (or a .toml path) and applies `section.key=value` overrides."""
    values = _load_named(name_or_path)
    for text in overrides:
        path, value = parse_override(text)
        _set_path(values, path, value)
    return from_dict(values)


def replace(config: Config, **overrides: Any) -> Config:
    """`replace(cfg, **{"model.num_layers": 4})`: a validated copy with dotted-path overrides."""
    values = to_dict(config)
    for dotted, value in overrides.items():
        _set_path(values, dotted.split("."), to_dict(value))
    return from_dict(values)


# ---------------------------------------------------------------------------------------------
# Cross-field validation.


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def validate(config: Config) -> None:
    """Checks value ranges and cross-field invariants; raises ConfigError naming the field."""
    m, t, d = config.model, config.train, config.data
    _require(m.arch in ARCHS, f"model.arch = {m.arch!r} is not valid; choose one of {list(ARCHS)}")
    positive = ("d_model", "num_heads", "num_layers", "n_sum", "n_seed", "n_tok", "skl_rank")
    for name in (*positive, "mlp_ratio", "wukong_fm_rank"):
        _require(getattr(m, name) > 0, f"model.{name} must be > 0, got {getattr(m, name)}")
    _require(
        m.wukong_fm_tokens >= 0,
        f"model.wukong_fm_tokens must be >= 0 (0 = half the tokens), got {m.wukong_fm_tokens}",
    )
    _require(
        m.d_model % m.num_heads == 0,
        f"model.d_model ({m.d_model}) must be divisible by model.num_heads ({m.num_heads})",
    )
    _require(
        (m.d_model // m.num_heads) % 2 == 0,
        f"head dim model.d_model/model.num_heads = {m.d_model // m.num_heads} must be even (ROTE)",
    )
    _require(m.window >= 0, f"model.window must be >= 0 (0 = full attention), got {m.window}")
    _require(
        m.gdpa_activation in ACTIVATIONS,
        f"model.gdpa_activation = {m.gdpa_activation!r} is not valid; choose one of "
        f"{list(ACTIVATIONS)}",
    )
    _require(m.num_experts >= 1, f"model.num_experts must be >= 1, got {m.num_experts}")
    _require(m.rote_t_scale > 0, f"model.rote_t_scale must be > 0, got {m.rote_t_scale}")
    _require(
        not (m.seed_rote and m.arch != "kunlun"),
        f"model.seed_rote applies to model.arch = 'kunlun' (got {m.arch!r}); set it false",
    )
    _require(
        not m.weight_gen_norm or m.arch in WEIGHT_GEN_ARCHS,
        f"model.weight_gen_norm applies to the archs with a WeightGen, {list(WEIGHT_GEN_ARCHS)} "
        f"(got {m.arch!r}); leave it false",
    )
    _require(
        not (m.seed_rote and m.pooling == "mean"),
        "model.seed_rote rotates the keys of a seed attention, which model.pooling = 'mean' "
        "does not have; use pooling 'hsp' or 'pma', or seed_rote = false",
    )
    _require(0.0 <= m.dropout < 1.0, f"model.dropout must be in [0, 1), got {m.dropout}")
    _require(all(h > 0 for h in m.head_hidden), "model.head_hidden entries must be > 0")
    for sname, tower in m.streams.items():
        where = f"model.streams.{sname}"
        for field in ("max_len", "d_model", "num_heads", "num_layers", "n_tok"):
            _require(getattr(tower, field) >= 0, f"{where}.{field} must be >= 0 (0 = inherit)")
        _require(tower.window >= -1, f"{where}.window must be >= -1 (-1 inherit, 0 full)")
        _require(
            tower.num_layers <= m.num_layers,
            f"{where}.num_layers ({tower.num_layers}) must be <= model.num_layers ({m.num_layers})",
        )
        dm = tower.d_model or m.d_model
        heads = tower.num_heads or m.num_heads
        _require(
            dm % heads == 0 and (dm // heads) % 2 == 0,
            f"{where}: d_model {dm} / num_heads {heads} must give an even head dim",
        )
    for name in ("batch_size", "steps"):
        _require(getattr(t, name) > 0, f"train.{name} must be > 0, got {getattr(t, name)}")
    for name in ("learning_rate", "embedding_learning_rate", "embedding_initial_accumulator"):
        _require(getattr(t, name) > 0, f"train.{name} must be > 0, got {getattr(t, name)}")
    for name in (
        "warmup_steps",
        "decay_steps",
        "eval_every",
        "checkpoint_every",
        "weight_decay",
        "clip_norm",
    ):
        _require(getattr(t, name) >= 0, f"train.{name} must be >= 0, got {getattr(t, name)}")
    _require(t.log_every > 0, f"train.log_every must be > 0, got {t.log_every}")
    _require(t.keep_checkpoints >= 1, "train.keep_checkpoints must be >= 1")
    _require(t.keep_best >= 0, f"train.keep_best must be >= 0, got {t.keep_best}")
    _require(t.grad_accum_steps >= 1, "train.grad_accum_steps must be >= 1")
    _require(
        not t.profile_steps
        or (len(t.profile_steps) == 2 and 0 <= t.profile_steps[0] < t.profile_steps[1] <= t.steps),
        f"train.profile_steps must be [] (no trace) or [start, stop] with 0 <= start < stop <= "
        f"train.steps ({t.steps}), got {list(t.profile_steps)}",
    )
    _require(
        t.batch_size % t.grad_accum_steps == 0,
        f"train.batch_size ({t.batch_size}) must be divisible by train.grad_accum_steps "
        f"({t.grad_accum_steps})",
    )
    _require(m.vocab_multiple >= 1, f"model.vocab_multiple must be >= 1, got {m.vocab_multiple}")
    _validate_mesh(config.mesh)
    _require(d.num_train > 0 and d.num_eval > 0, "data.num_train and data.num_eval must be > 0")
    _require(d.max_len > 0, f"data.max_len must be > 0, got {d.max_len}")
    _require(
        list(d.length_buckets) == sorted(set(d.length_buckets)),
        f"data.length_buckets must be strictly increasing, got {list(d.length_buckets)}",
    )
    n_tok = max([m.n_tok, *(t.n_tok for t in m.streams.values())])
    _require(
        all(b >= n_tok for b in d.length_buckets),
        f"data.length_buckets must all be >= the HSP/recent-token count n_tok ({n_tok}), got "
        f"{list(d.length_buckets)}",
    )

    _validate_tasks(d, t, m)
    for where, seed in (("data.seed", d.seed), ("train.seed", t.seed)):
        _require(0 <= seed < 2**31, f"{where} must be in [0, 2**31), got {seed}")
    if d.source == "synthetic":
        _require(
            t.batch_size <= d.num_train,
            f"train.batch_size ({t.batch_size}) exceeds the synthetic training set "
            f"(data.num_train = {d.num_train}); lower one or raise the other",
        )

    s = d.synthetic
    counts = ("num_users", "num_items", "num_categories", "num_contexts", "num_devices")
    for name in (*counts, "latent_dim", "max_history", "teacher_depth", "teacher_width"):
        _require(getattr(s, name) > 0, f"data.synthetic.{name} must be > 0")
    _require(s.num_dense >= 0, f"data.synthetic.num_dense must be >= 0, got {s.num_dense}")
    _require(
        0 < s.mean_history <= s.max_history,
        f"data.synthetic.mean_history must be in (0, max_history={s.max_history}]",
    )
    _require(0.0 <= s.label_noise <= 1.0, "data.synthetic.label_noise must be in [0, 1]")


def _validate_tasks(d: DataConfig, t: TrainConfig, m: ModelConfig) -> None:
    known = SOURCE_TASKS[d.source]
    unknown = [name for name in d.tasks if name not in known]
    _require(
        not unknown,
        f"data.tasks {unknown} are not labels of {d.source}; choose from {list(known)}",
    )
    _require(len(set(d.tasks)) == len(d.tasks), f"data.tasks lists a task twice: {list(d.tasks)}")
    tasks = task_names(d)
    _require(
        not t.task_weights or len(t.task_weights) == len(tasks),
        f"train.task_weights has {len(t.task_weights)} weights for the {len(tasks)} tasks "
        f"{list(tasks)}; give one per task or none (equal weights)",
    )
    _require(
        all(math.isfinite(w) and w > 0 for w in t.task_weights),
        f"train.task_weights must be finite and > 0, got {list(t.task_weights)}",
    )
    _require(
        m.task_heads == "shared" or len(tasks) > 1,
        f"model.task_heads = {m.task_heads!r} needs several data.tasks (got {list(tasks)}); "
        "with one task there is one head",
    )
    _require(m.task_experts >= 1, f"model.task_experts must be >= 1, got {m.task_experts}")
    _require(
        m.task_heads != "mmoe" or len(m.head_hidden) >= 1,
        "model.task_heads = 'mmoe' needs model.head_hidden to have a width (the experts'); got []",
    )
    _require(
        m.task_own_experts >= 0, f"model.task_own_experts must be >= 0, got {m.task_own_experts}"
    )
    _require(m.ple_levels >= 1, f"model.ple_levels must be >= 1, got {m.ple_levels}")
    _require(
        m.task_heads != "ple" or len(m.head_hidden) >= m.ple_levels,
        f"model.task_heads = 'ple' with model.ple_levels = {m.ple_levels} needs that many widths "
        f"in model.head_hidden (one per level's experts); got {list(m.head_hidden)}",
    )


MESH_AXES = ("data", "fsdp", "model")


def _validate_mesh(mesh: MeshConfig) -> None:
    sizes = {a: getattr(mesh, a) for a in MESH_AXES}
    for axis, n in sizes.items():
        _require(n == -1 or n >= 1, f"mesh.{axis} must be >= 1 or -1 (all remaining devices)")
    _require(
        sum(n == -1 for n in sizes.values()) <= 1, "at most one mesh axis may be -1 (the rest)"
    )
    _require(
        mesh.lookup_capacity > 0, f"mesh.lookup_capacity must be > 0, got {mesh.lookup_capacity}"
    )
    for logical, axes in mesh.rules.items():
        bad = [a for a in axes if a not in MESH_AXES]
        _require(
            not bad,
            f"mesh.rules.{logical} names unknown mesh axes {bad}; mesh axes are {list(MESH_AXES)}",
        )
