"""Synthetic ranking traffic with a planted click model: the embedded default dataset.

Every example is one ad request: a user, a candidate item, a context (hour, device), dense
features and three event histories ("purchase": rare, strong; "click": medium; "impression":
frequent, weak) in the batch format of `kunlun_jax.data.spec`. Its label is drawn from a known
click probability p_true, stored as "oracle_p", so the Bayes-optimal normalized entropy

    NE* = E[H(p_true)] / H(p̄),   H(p) = -p log p - (1 - p) log(1 - p),   p̄ = E[p_true],

comes exactly from the generator (`bayes_optimal_ne`), to report beside a model's
NE = mean log loss / entropy of the base rate (spec, "Quality metric").

The world (user tastes, item vectors and categories, context biases, teacher weights) depends
only on the seed; an example depends only on (seed, split, index), so any access order gives the
same data and the "train" and "eval" splits are disjoint streams over one world. Random numbers
come from a counter-based hash of (seed, split, index, event slot), so `SyntheticSource.batch`
generates a whole batch vectorized (tens of µs per example) and gives the same examples as
`source[i]` one by one (which pays numpy's per-call overhead, ~1 ms each): feed loaders with
`batch`, e.g. `grain.MapDataset.range(n).shuffle(seed).batch(b, batch_fn=source.batch)`.

Generative process of one request:

* user k uniform; hour from a daily traffic profile; device from a skewed distribution;
* stream s has n_s = min(floor(mean_history · STREAM_RATES[s] · activity_k · Exp(1)),
  max_history) events: long-tailed, often 0 for purchases, 0 everywhere for cold-start users;
* gaps between consecutive events (newest first; the first from the request) mix in-session
  gaps (minutes) and pauses (days), log-normal in both regimes;
* the user's taste drifts slowly: dt seconds before the request it is u_k + drift(dt), a smooth
  Gaussian-process path (random Fourier features, weeks) pinned to 0 at the request;
* an event of stream s picks among EVENT_CHOICES popularity-sampled items (Zipf-like) with
  probability ∝ exp(STREAM_TASTE[s] · <taste, v_item>): purchases follow the taste closely,
  impressions hardly; item vectors are 0.8 · category vector + 0.6 · own, |v| ≈ 1;
* the candidate is a popular item, a taste-driven item, or (retargeting) an item of the
  category of a recent event;
* dense features: the user's propensity and activity (noisy), a noisy <u, v_cand> "legacy
  score", the candidate's popularity (DENSE_NAMES), then pure noise.

Planted click model (`SyntheticSource.logit_terms`). With raw terms

    affinity = <u_user, v_cand>
    sequence = Σ_s STREAM_WEIGHTS[s] · log(1 + SIMILARITY_GAIN · Σ_{j < n_s} r(dt_j) · sim_j)
    context  = hour_bias[hour] + device_bias[device]
    dense    = <DENSE_COEF, dense features>

where r(dt) = exp(-RECENCY_POWER · log(1 + dt / 1 h)), sim_j = max(cos(v_item_j, v_cand), 0) and
STREAM_WEIGHTS are ordered purchase > click > impression (so each event raises the logit, the
more the more recent, similar and strong it is), the logit is

    bias + Σ_term weight_term · (raw_term - mean_term) / std_term,

each raw term standardized over the traffic (mean and std from CALIBRATION_EXAMPLES requests
drawn when the world is built), so a term's `*_weight` is its logit standard deviation and
`bias` is the logit of an average request. Every term is a function of the example's observed
features and the world's tables, so p_true is also the best prediction a model can make.

Teacher mode (`cfg.teacher`): the logit comes instead from a fixed random tanh MLP
(`teacher_depth` x `teacher_width`) over embeddings of the same features (sparse embeddings,
dense, and per stream a recency-weighted embedding bag of the history and its product with the
candidate embedding), rescaled on the calibration requests to logit std TEACHER_LOGIT_STD and
mean click probability TEACHER_BASE_RATE.

In both modes p_true = (1 - label_noise) · sigmoid(logit) + label_noise / 2 and
label ~ Bernoulli(p_true).

A second task, "conversion" (`data.tasks`), follows a click: conversion = click · Bernoulli(q)
with its own planted logit over the same standardized terms (CONVERSION_WEIGHTS: mostly the
user-candidate affinity and the dense features, little of the histories, and the context
against its sign in the click),

    q = sigmoid(CONVERSION_BIAS + Σ_term CONVERSION_WEIGHTS_term · standardized term),

drawn from the request's own random stream. P(conversion) = p_true · q is also a function of
the observed features, so its Bayes-optimal NE is exact. Adding the task changes no click.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from kunlun_jax.config import SyntheticConfig
from kunlun_jax.data.spec import Batch, FeatureSpec, StreamSpec, task_columns
from kunlun_jax.metrics import binary_entropy

SPLITS = {"train": 0, "eval": 1}
_CALIBRATION_SPLIT = 2  # requests that calibrate the logit scale; never served
_WORLD_TAG = 0x6B756E6C  # the world's tables come from np.random.default_rng([seed, _WORLD_TAG])
CALIBRATION_EXAMPLES = 2048
MAX_BATCH = 4096  # requests generated at once by `SyntheticSource.batch` (bounds its memory)

SPARSE_NAMES = ("user_id", "item_id", "item_category", "hour", "device")
STREAMS = ("purchase", "click", "impression")
TERMS = ("affinity", "sequence", "context", "dense")  # the planted logit's standardized terms
STREAM_WEIGHTS = np.array([1.0, 0.5, 0.2])  # how much a past event of each type drives clicks
STREAM_RATES = np.array([0.3, 1.25, 2.0])  # mean history length / mean_history, per stream
STREAM_TASTE = np.array([3.0, 1.5, 0.4])  # how strongly each stream's items follow the taste
SESSION_PROB = np.array([0.4, 0.6, 0.8])  # P(a gap is in-session rather than a pause)
SESSION_GAP_S = 120.0  # median in-session gap (seconds)
PAUSE_GAP_S = 86_400.0  # median pause between sessions (seconds)
COLD_START_PROB = 0.03  # requests whose user has no history at all
ACTIVITY_SIGMA = 0.8  # log-normal spread of user activity (history length multiplier)
DRIFT_SCALE = 0.5  # taste drift std per dimension, long before the request: DRIFT_SCALE·√2
DRIFT_TIME_S = 14 * 86_400.0  # time scale of the taste drift (seconds)
DRIFT_FEATURES = 8  # random Fourier features of the drift path
EVENT_CHOICES = 16  # popularity-sampled items an event picks among
POPULARITY_POWER = 2  # popularity rank = floor(count · U^power): a long tail (Zipf-like)
CANDIDATE_MIX = (0.35, 0.4)  # P(popular candidate), P(taste-driven); the rest retargets
CANDIDATE_TASTE = 1.0  # taste-driven candidates: like an event with this STREAM_TASTE
RECENCY_POWER = 0.5  # r(dt) = (1 + dt / 1 h)^-RECENCY_POWER
SIMILARITY_GAIN = 2.0  # sequence evidence of a stream: log(1 + gain · Σ_j r_j · sim_j)
DENSE_NAMES = ("propensity", "activity", "score", "popularity")  # later dense: pure noise
DENSE_COEF = np.array([1.0, 0.4, 0.6, 0.5])  # their weights in the raw dense term
TEACHER_EMBED_DIM = 8
TEACHER_GAIN = 1.5  # tanh layers, weights N(0, gain² / fan_in): a nonlinear random function
TEACHER_LOGIT_STD = 2.0
TEACHER_BASE_RATE = 0.3
TASKS = ("click", "conversion")  # the labels (`data.tasks`); a conversion needs a click
CONVERSION_WEIGHTS = np.array([1.0, 0.3, -0.4, 0.8])  # per standardized term of TERMS
CONVERSION_BIAS = -1.5  # q = sigmoid(-1.5) = 0.18 for an average request
_CONVERSION_SLOT = 1 << 32  # the random slot of the conversion draw (past every event slot)

Example = dict[str, Any]


def feature_spec(cfg: SyntheticConfig, tasks: Sequence[str] = TASKS[:1]) -> FeatureSpec:
    """The synthetic data's FeatureSpec: 5 sparse features, `num_dense` dense, 3 streams whose
    item and side (category) ids share the candidate's "item_id" and "item_category" tables,
    and the labels of `tasks` (of TASKS)."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks or len(set(tasks)) != len(tasks):
        raise ValueError(f"synthetic tasks must be distinct names of {list(TASKS)}, got {tasks}")
    return FeatureSpec(
        tasks=tuple(tasks),
        sparse_names=SPARSE_NAMES,
        sparse_vocab_sizes=(
            cfg.num_users,
            cfg.num_items + 1,
            cfg.num_categories + 1,
            cfg.num_contexts,
            cfg.num_devices,
        ),
        num_dense=cfg.num_dense,
        streams=tuple(
            StreamSpec(
                name,
                item_vocab_size=cfg.num_items + 1,
                side_vocab_size=cfg.num_categories + 1,
                max_len=cfg.max_history,
                item_feature="item_id",
                side_feature="item_category",
            )
            for name in STREAMS
        ),
    )


# ---------------------------------------------------------------------------------------------
# Random streams and sampling helpers.

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijective, avalanching hash of uint64 values."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _request_keys(seed: int, stream: int, indices: np.ndarray) -> np.ndarray:
    """The random key [B] uint64 of requests `indices` of random stream `stream` of `seed`."""
    base = _mix(_mix(np.array([seed], np.uint64)) ^ np.array([stream + 1], np.uint64))
    return _mix(base + np.asarray(indices, np.uint64) * _GOLDEN)


def _uniforms(keys: np.ndarray, slot: np.ndarray | int, n: int) -> np.ndarray:
    """n uniforms in [0, 1) per key: [..., n] for keys [...] (uint64) and slot ids [...].

    A counter-based generator: number j of (key, slot) is a hash of key + (slot·2^16 + j)·φ,
    so each request (and each of its event slots) has its own stream, fixed by the key alone
    and independent of the batch it is drawn in. Two 32-bit uniforms per hash.
    """
    slot = np.asarray(slot, np.uint64)[..., None] << np.uint64(16)
    counter = slot | np.arange((n + 1) // 2, dtype=np.uint64)
    bits = _mix(keys[..., None] + counter * _GOLDEN)
    return bits.view(np.uint32)[..., :n] * 2.0**-32


def _normals(u: np.ndarray) -> np.ndarray:
    """Box-Muller: standard normals [..., n] from uniforms [..., 2n]."""
    n = u.shape[-1] // 2
    return np.sqrt(-2.0 * np.log1p(-u[..., :n])) * np.cos(2 * np.pi * u[..., n:])


def _pick(weights: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling along the last axis: weights [..., n] >= 0, u [...] in [0, 1)."""
    cdf = np.cumsum(weights, axis=-1)
    idx = (cdf < u[..., None] * cdf[..., -1:]).sum(axis=-1)
    return np.minimum(idx, weights.shape[-1] - 1)


def _softmax_pick(logits: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Samples index i ∝ exp(logits[..., i]); logits [..., n], u [...] in [0, 1)."""
    return _pick(np.exp(logits - logits.max(axis=-1, keepdims=True)), u)


def _recency(dt: np.ndarray) -> np.ndarray:
    """r(dt) = (1 + dt / 3600)^-RECENCY_POWER: decays linearly in log(1 + dt / 1 h)."""
    return np.exp(-RECENCY_POWER * np.log1p(np.asarray(dt, np.float64) / 3600.0))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


# ---------------------------------------------------------------------------------------------
# The world: everything that depends on the seed but not on the request.


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A fixed random tanh MLP from embedded features to a click logit. E = TEACHER_EMBED_DIM."""

    user_emb: np.ndarray  # [num_users, E]
    item_emb: np.ndarray  # [num_items + 1, E], row 0 (padding) = 0
    category_emb: np.ndarray  # [num_categories + 1, E]
    hour_emb: np.ndarray  # [num_contexts, E]
    device_emb: np.ndarray  # [num_devices, E]
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]  # (W [fan_in, width], b [width])
    out: np.ndarray  # [width]
    scale: float = 1.0  # logit = scale · raw output + shift
    shift: float = 0.0


@dataclasses.dataclass(frozen=True)
class World:
    """Latent tables shared by all splits of one seed. D = latent_dim, N = num_items,
    C = num_categories; item and category id 0 are padding."""

    user_taste: np.ndarray  # [num_users, D] ~ N(0, I)
    user_activity: np.ndarray  # [num_users] history-length multiplier, mean 1
    user_propensity: np.ndarray  # [num_users] ~ N(0, 1), seen noisily as a dense feature
    user_log_activity: np.ndarray  # [num_users] standardized log activity (dense feature)
    item_vec: np.ndarray  # float32 [N + 1, D] 0.8·category vector + 0.6·own, |v| ≈ 1; row 0 = 0
    item_unit: np.ndarray  # float32 [N + 1, D] item_vec / |item_vec|; row 0 = 0
    item_category: np.ndarray  # [N + 1] int32 in [1, C]; 0 for padding
    item_popularity: np.ndarray  # [N + 1] standardized log-popularity (dense feature)
    popularity_table: np.ndarray  # [N] item ids, most popular first
    category_items: np.ndarray  # [N] item ids by category, most popular first within one
    category_start: np.ndarray  # [C + 2] offsets of each category in category_items
    hour_cdf: np.ndarray  # [num_contexts] cumulative traffic share per hour
    device_cdf: np.ndarray  # [num_devices]
    hour_bias: np.ndarray  # [num_contexts]
    device_bias: np.ndarray  # [num_devices]
    term_mean: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(len(TERMS)))
    term_std: np.ndarray = dataclasses.field(default_factory=lambda: np.ones(len(TERMS)))
    teacher: Teacher | None = None


def _make_world(cfg: SyntheticConfig, seed: int) -> World:
    """Draws the tables, then calibrates the logit scale on CALIBRATION_EXAMPLES requests."""
    rng = np.random.default_rng([seed, _WORLD_TAG])
    n, d, c = cfg.num_items, cfg.latent_dim, cfg.num_categories
    category_vec = rng.standard_normal((c + 1, d)) / np.sqrt(d)
    category = np.concatenate([[0], rng.integers(1, c + 1, size=n)]).astype(np.int32)
    item_vec = (0.8 * category_vec[category] + 0.6 * rng.standard_normal((n + 1, d))) / np.sqrt(d)
    item_vec[0] = 0.0
    norm = np.linalg.norm(item_vec, axis=1, keepdims=True)
    by_rank = (rng.permutation(n) + 1).astype(np.int32)
    rank = np.zeros(n + 1, np.int64)
    rank[by_rank] = np.arange(n)
    log_rank = np.log1p(rank[1:])
    popularity = np.concatenate([[0.0], (log_rank.mean() - log_rank) / log_rank.std()])
    size = np.bincount(category, minlength=c + 1)
    size[0] = 0
    activity = np.exp(ACTIVITY_SIGMA * rng.standard_normal(cfg.num_users))
    hours = np.arange(cfg.num_contexts) / cfg.num_contexts
    traffic = 1.0 + 0.6 * np.sin(2 * np.pi * (hours - 0.4))
    world = World(
        user_taste=rng.standard_normal((cfg.num_users, d)),
        user_activity=activity / activity.mean(),
        user_propensity=rng.standard_normal(cfg.num_users),
        user_log_activity=(np.log(activity) - np.log(activity).mean()) / ACTIVITY_SIGMA,
        item_vec=item_vec.astype(np.float32),
        item_unit=np.divide(item_vec, norm, out=np.zeros_like(item_vec), where=norm > 0).astype(
            np.float32
        ),
        item_category=category,
        item_popularity=popularity,
        popularity_table=by_rank,
        category_items=by_rank[np.argsort(category[by_rank], kind="stable")],
        category_start=np.concatenate([[0], np.cumsum(size)]),
        hour_cdf=np.cumsum(traffic) / traffic.sum(),
        device_cdf=np.cumsum(rng.dirichlet(np.full(cfg.num_devices, 2.0))),
        hour_bias=0.6 * np.sin(2 * np.pi * (hours + rng.random()))
        + 0.3 * rng.standard_normal(cfg.num_contexts),
        device_bias=0.5 * rng.standard_normal(cfg.num_devices),
        teacher=_make_teacher(cfg, rng) if cfg.teacher else None,
    )
    keys = _request_keys(seed, _CALIBRATION_SPLIT, np.arange(CALIBRATION_EXAMPLES))
    calibration = _sample_requests(cfg, world, keys)[1]
    raw = _raw_terms(cfg, world, calibration)  # [n_cal, len(TERMS)]
    std = raw.std(axis=0)
    world = dataclasses.replace(
        world, term_mean=raw.mean(axis=0), term_std=np.where(std > 1e-9, std, 1.0)
    )
    if world.teacher is None:
        return world
    out = _teacher_raw(world.teacher, calibration)
    scale = TEACHER_LOGIT_STD / max(float(out.std()), 1e-9)
    centered = scale * (out - out.mean())
    lo, hi = -30.0, 30.0  # bisect for the offset giving mean click probability TEACHER_BASE_RATE
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _sigmoid(centered + mid).mean() < TEACHER_BASE_RATE else (lo, mid)
    shift = (lo + hi) / 2 - scale * float(out.mean())
    return dataclasses.replace(
        world, teacher=dataclasses.replace(world.teacher, scale=scale, shift=shift)
    )


def _make_teacher(cfg: SyntheticConfig, rng: np.random.Generator) -> Teacher:
    e = TEACHER_EMBED_DIM
    item_emb = rng.standard_normal((cfg.num_items + 1, e))
    item_emb[0] = 0.0
    fan_in = 5 * e + cfg.num_dense + 2 * e * len(STREAMS)
    layers = []
    for _ in range(cfg.teacher_depth):
        w = rng.standard_normal((fan_in, cfg.teacher_width)) * TEACHER_GAIN / np.sqrt(fan_in)
        layers.append((w, 0.1 * rng.standard_normal(cfg.teacher_width)))
        fan_in = cfg.teacher_width
    return Teacher(
        user_emb=rng.standard_normal((cfg.num_users, e)),
        item_emb=item_emb,
        category_emb=rng.standard_normal((cfg.num_categories + 1, e)),
        hour_emb=rng.standard_normal((cfg.num_contexts, e)),
        device_emb=rng.standard_normal((cfg.num_devices, e)),
        layers=tuple(layers),
        out=rng.standard_normal(fan_in) / np.sqrt(fan_in),
    )


# ---------------------------------------------------------------------------------------------
# One request's features.


class _Inputs(NamedTuple):
    """What the click models read, with any leading batch shape [...]. S streams, T steps."""

    sparse: np.ndarray  # int [..., 5]
    dense: np.ndarray  # float [..., num_dense]
    item: np.ndarray  # int [..., S, T]
    recency: np.ndarray  # float [..., S, T] r(dt), 0 on padding
    length: np.ndarray  # int [..., S]


def _inputs(example: Mapping[str, Any]) -> _Inputs:
    """Reads the click models' inputs from a spec-format example or batch."""
    seqs = example["seqs"]
    item = np.stack([np.asarray(seqs[s]["item"]) for s in STREAMS], axis=-2)
    dt = np.stack([np.asarray(seqs[s]["dt"], np.float32) for s in STREAMS], axis=-2)
    length = np.stack([np.asarray(seqs[s]["length"]) for s in STREAMS], axis=-1)
    real = np.arange(item.shape[-1]) < length[..., None]
    return _Inputs(
        sparse=np.asarray(example["sparse"]),
        dense=np.asarray(example["dense"], np.float32),
        item=item,
        recency=np.where(real, _recency(dt), 0.0),
        length=length,
    )


def _pick_items(world: World, taste: np.ndarray, strength: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Taste-driven choice among EVENT_CHOICES popularity-sampled items:
    item ∝ exp(strength · <taste, v_item>).

    taste [E, D], strength [E], u [E, EVENT_CHOICES + 1] uniforms -> item ids [E].
    """
    rank = (len(world.popularity_table) * u[:, 1:] ** POPULARITY_POWER).astype(np.int64)
    options = world.popularity_table[rank]  # [E, EVENT_CHOICES]
    taste = taste.astype(np.float32)[:, :, None]
    affinity = (np.take(world.item_vec, options, axis=0) @ taste)[..., 0]  # [E, EVENT_CHOICES]
    return options[np.arange(len(options)), _softmax_pick(strength[:, None] * affinity, u[:, 0])]


def _head_uniforms(keys: np.ndarray) -> np.ndarray:
    """Request-level uniforms [B, C] (their slots are listed in `_sample_requests`)."""
    return _uniforms(keys, 0, 12 + EVENT_CHOICES + 1)


def _users(cfg: SyntheticConfig, head: np.ndarray) -> np.ndarray:
    """User ids [B] drawn from the request uniforms."""
    return np.minimum((head[:, 0] * cfg.num_users).astype(np.int64), cfg.num_users - 1)


def _history_lengths(
    cfg: SyntheticConfig, world: World, head: np.ndarray, user: np.ndarray
) -> np.ndarray:
    """Long-tailed history lengths [B, S] in [0, max_history]; 0 for cold-start requests."""
    mean = cfg.mean_history * world.user_activity[user][:, None] * STREAM_RATES  # [B, S]
    lengths = np.minimum((mean * -np.log1p(-head[:, 3:6])).astype(np.int64), cfg.max_history)
    return lengths * (head[:, 6:7] >= COLD_START_PROB)


def _sample_requests(
    cfg: SyntheticConfig, world: World, keys: np.ndarray
) -> tuple[Batch, _Inputs, np.ndarray]:
    """Samples the features of the B requests with random keys `keys` [B] (`_request_keys`).

    Request b's random numbers depend only on keys[b] (event slot (s, t) has its own stream, so
    events do not depend on the history lengths), and every step works request by request, so
    a request is the same in any batch. Returns the spec-format batch without labels, the same
    features as _Inputs, and the uniforms [B] that draw the labels.
    """
    b_size, n_streams, t_max = len(keys), len(STREAMS), cfg.max_history
    n_dense = max(cfg.num_dense, len(DENSE_COEF))
    n_drift = DRIFT_FEATURES * (cfg.latent_dim + 1)
    # Request-level uniforms: 0 user, 1 hour, 2 device, 3:6 lengths, 6 cold start, 7 drift phase,
    # 8 candidate kind, 9 popular candidate or retargeted event, 10 retargeted item, 11 label,
    # 12: taste-driven candidate.
    head = _head_uniforms(keys)
    z = _normals(_uniforms(keys, 1, 2 * (n_drift + n_dense)))  # request-level normals

    user = _users(cfg, head)
    hour = np.searchsorted(world.hour_cdf, head[:, 1] * world.hour_cdf[-1], side="right")
    hour = np.minimum(hour, cfg.num_contexts - 1)
    device = np.searchsorted(world.device_cdf, head[:, 2] * world.device_cdf[-1], side="right")
    device = np.minimum(device, cfg.num_devices - 1)
    taste = world.user_taste[user]  # [B, D]

    # Long-tailed lengths, then the real events of all requests as one flat array [E], ordered
    # by (request, stream, position); position 0 is the newest event.
    lengths = _history_lengths(cfg, world, head, user)
    real = np.arange(t_max) < lengths[..., None]  # [B, S, T]
    eb, es, et = np.nonzero(real)
    ue = _uniforms(keys[eb], 2 + es * t_max + et, EVENT_CHOICES + 4)  # [E, C + 4]
    z_gap = _normals(ue[:, -2:])[:, 0]
    gap = np.zeros((b_size, n_streams, t_max))  # [B, S, T] from the previous (newer) event
    gap[eb, es, et] = np.exp(
        np.where(
            ue[:, -3] < SESSION_PROB[es],
            np.log(SESSION_GAP_S) + z_gap,
            np.log(PAUSE_GAP_S) + 1.2 * z_gap,
        )
    )
    dt = np.where(real, np.cumsum(gap, axis=-1), 0.0).astype(np.float32)  # [B, S, T] seconds ago
    dt_e = dt[eb, es, et]

    # The user's taste drifts along a smooth random path, 0 at the request.
    freq = (z[:, :DRIFT_FEATURES] / DRIFT_TIME_S).astype(np.float32)  # [B, K]
    coef = z[:, DRIFT_FEATURES:n_drift].reshape(b_size, DRIFT_FEATURES, cfg.latent_dim)
    coef = coef.astype(np.float32)
    coef *= DRIFT_SCALE * np.sqrt(2 / DRIFT_FEATURES)
    phase = (2 * np.pi * head[:, 7:8]).astype(np.float32)  # [B, 1]
    path = np.cos(dt_e[:, None] * freq[eb] + phase[eb]) - np.cos(phase[eb])  # [E, K]
    drifted = taste[eb] + np.einsum("ek,ekd->ed", path, coef[eb])  # [E, D]

    item = np.zeros((b_size, n_streams, t_max), np.int32)
    item[eb, es, et] = _pick_items(world, drifted, STREAM_TASTE[es], ue[:, : EVENT_CHOICES + 1])
    recency = np.where(real, _recency(dt), 0.0)  # [B, S, T]

    # The candidate: popular, taste-driven, or retargeting the category of a recent event.
    popular = world.popularity_table[
        (cfg.num_items * head[:, 9] ** POPULARITY_POWER).astype(np.int64)
    ]
    liked = _pick_items(world, taste, np.full(b_size, CANDIDATE_TASTE), head[:, 12:])
    event = _pick(
        (STREAM_WEIGHTS[:, None] * recency).reshape(b_size, n_streams * t_max), head[:, 9]
    )
    category = world.item_category[
        item.reshape(b_size, n_streams * t_max)[np.arange(b_size), event]
    ]
    start, stop = world.category_start[category], world.category_start[category + 1]
    retarget = world.category_items[
        start + ((stop - start) * head[:, 10] ** POPULARITY_POWER).astype(np.int64)
    ]
    mode = head[:, 8]
    no_history = lengths.sum(axis=1) == 0
    cand = np.where(
        mode < CANDIDATE_MIX[0],
        popular,
        np.where((mode < CANDIDATE_MIX[0] + CANDIDATE_MIX[1]) | no_history, liked, retarget),
    )

    dense = z[:, n_drift:].copy()  # features past DENSE_NAMES stay pure noise
    dense[:, 0] = world.user_propensity[user] + 0.5 * dense[:, 0]
    dense[:, 1] = world.user_log_activity[user] + 0.3 * dense[:, 1]
    dense[:, 2] += np.einsum("bd,bd->b", world.item_vec[cand], taste)
    dense[:, 3] = world.item_popularity[cand]
    dense = dense[:, : cfg.num_dense].astype(np.float32)
    sparse = np.stack([user, cand, world.item_category[cand], hour, device], -1).astype(np.int32)
    batch = {
        "sparse": sparse,
        "dense": dense,
        "seqs": {
            name: {
                "item": np.ascontiguousarray(item[:, s]),
                "side": world.item_category[item[:, s]],
                "dt": np.ascontiguousarray(dt[:, s]),
                "length": lengths[:, s].astype(np.int32),
            }
            for s, name in enumerate(STREAMS)
        },
    }
    return batch, _Inputs(sparse, dense, item, recency, lengths), head[:, 11]


# ---------------------------------------------------------------------------------------------
# Click models over _Inputs with any leading batch shape [...]. Products use einsum or
# elementwise sums, never BLAS, so that a request's probability does not depend on its batch.


def _raw_terms(cfg: SyntheticConfig, world: World, x: _Inputs) -> np.ndarray:
    """The planted model's unstandardized terms [..., len(TERMS)] (module docstring)."""
    user, cand = x.sparse[..., 0], x.sparse[..., 1]
    cos = np.einsum("...std,...d->...st", world.item_unit[x.item], world.item_unit[cand])
    evidence = np.log1p(SIMILARITY_GAIN * (x.recency * np.maximum(cos, 0.0)).sum(-1))  # [..., S]
    k = min(cfg.num_dense, len(DENSE_COEF))
    return np.stack(
        [
            np.einsum("...d,...d->...", world.user_taste[user], world.item_vec[cand]),
            np.einsum("...s,s->...", evidence, STREAM_WEIGHTS),
            world.hour_bias[x.sparse[..., 3]] + world.device_bias[x.sparse[..., 4]],
            np.einsum("...k,k->...", x.dense[..., :k], DENSE_COEF[:k]),
        ],
        axis=-1,
    )


def _teacher_raw(teacher: Teacher, x: _Inputs) -> np.ndarray:
    """The teacher network's output [...] before its calibrated affine rescaling."""
    cand = teacher.item_emb[x.sparse[..., 1]]  # [..., E]
    bags = np.einsum("...st,...ste->...se", x.recency, teacher.item_emb[x.item])  # [..., S, E]
    bags = bags / np.sqrt(1.0 + x.length)[..., None]
    flat = (*bags.shape[:-2], bags.shape[-2] * bags.shape[-1])
    h = np.concatenate(
        [
            teacher.user_emb[x.sparse[..., 0]],
            cand,
            teacher.category_emb[x.sparse[..., 2]],
            teacher.hour_emb[x.sparse[..., 3]],
            teacher.device_emb[x.sparse[..., 4]],
            x.dense,
            bags.reshape(flat),
            (bags * cand[..., None, :]).reshape(flat),
        ],
        axis=-1,
    )
    for w, b in teacher.layers:
        h = np.tanh(np.einsum("...i,io->...o", h, w) + b)
    return np.einsum("...i,i->...", h, teacher.out)


# ---------------------------------------------------------------------------------------------
# The data source.


class SyntheticSource:
    """Random-access synthetic requests, a grain data source: `len(src)`, `src[i]`.

    `src[i]` is one unbatched example in the `kunlun_jax.data.spec` format plus "oracle_p",
    the probability its label was drawn from: float32 [] with one task, [K] (the labels'
    columns) with K `tasks`. Deterministic in (seed, split, i), whatever the access order and
    the tasks; thread-safe; the world depends only on `seed`. `src.batch(indices)` returns the
    same examples stacked, ~10x faster per example.
    """

    def __init__(
        self,
        cfg: SyntheticConfig,
        *,
        num_examples: int,
        seed: int,
        split: str,
        tasks: Sequence[str] = TASKS[:1],
    ):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        if num_examples < 0:
            raise ValueError(f"num_examples must be >= 0, got {num_examples}")
        if not 0 <= seed < 2**64:
            raise ValueError(f"seed must be in [0, 2**64), got {seed}")
        self.cfg = cfg
        self.num_examples = num_examples
        self.seed = seed
        self.split = split
        self.spec = feature_spec(cfg, tasks)
        self.world = _make_world(cfg, seed)

    def __len__(self) -> int:
        return self.num_examples

    def __repr__(self) -> str:
        return (
            f"SyntheticSource(num_examples={self.num_examples}, seed={self.seed}, "
            f"split={self.split!r}, teacher={self.cfg.teacher}, tasks={list(self.spec.tasks)})"
        )

    def __getitem__(self, index: int) -> Example:
        """Example `index` (negative counts from the end): the spec format without batch axis."""
        return _unbatch(self.batch([index]))

    def batch(self, indices: Sequence[int]) -> Batch:
        """The examples at `indices`, stacked along a leading batch axis [B, ...]; identical to
        stacking `self[i]`, and much faster per example (vectorized over the batch)."""
        index = np.array([self._check_index(i) for i in indices], np.int64)
        if len(index) > MAX_BATCH:
            parts = [self.batch(index[i : i + MAX_BATCH]) for i in range(0, len(index), MAX_BATCH)]
            return _concatenate(parts)
        keys = _request_keys(self.seed, SPLITS[self.split], index)
        batch, inputs, u_label = _sample_requests(self.cfg, self.world, keys)
        p_click = self._probability(inputs)
        click = u_label < p_click
        drawn = {"click": (click, p_click)}
        if "conversion" in self.spec.tasks:
            q = self._conversion_given_click(inputs)
            converts = _uniforms(keys, _CONVERSION_SLOT, 1)[:, 0] < q
            drawn["conversion"] = (click & converts, p_click * q)
        for key, part in (("label", 0), ("oracle_p", 1)):
            columns = np.stack([drawn[t][part] for t in self.spec.tasks], -1)
            batch[key] = task_columns(columns.astype(np.float32))
        return batch

    def lengths(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        """{stream: int32 [B]} the history lengths of `batch(indices)`, without building it."""
        index = np.array([self._check_index(i) for i in indices], np.int64)
        head = _head_uniforms(_request_keys(self.seed, SPLITS[self.split], index))
        lengths = _history_lengths(self.cfg, self.world, head, _users(self.cfg, head))
        return {name: lengths[:, s].astype(np.int32) for s, name in enumerate(STREAMS)}

    def _check_index(self, index: int) -> int:
        i = int(index)
        if i < 0:
            i += self.num_examples
        if not 0 <= i < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} examples")
        return i

    def logit_terms(self, example: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The planted model's logit as named terms, each [...] for an example (or batch) with
        leading shape [...]: "bias" and the weighted, standardized TERMS. They sum to the planted
        logit (the label's logit unless in teacher mode). Computed from the example's features
        alone, so edited examples show each term's effect."""
        return self._terms(_inputs(example))

    def event_recency(self, example: Mapping[str, Any]) -> np.ndarray:
        """r(dt) [..., len(STREAMS), T] of every history event, 0 at padded positions: the
        weights of the planted sequence term, streams in STREAMS order."""
        return _inputs(example).recency

    def logit(self, example: Mapping[str, Any]) -> np.ndarray:
        """The click logit [...] of the active model (the teacher in teacher mode)."""
        return self._logit(_inputs(example))

    def click_probability(self, example: Mapping[str, Any]) -> np.ndarray:
        """p_true [...] = (1 - label_noise) · sigmoid(logit) + label_noise / 2."""
        return self._probability(_inputs(example))

    def conversion_probability(self, example: Mapping[str, Any]) -> np.ndarray:
        """P(conversion) [...] = p_true · q, q the planted P(conversion | click)."""
        x = _inputs(example)
        return self._probability(x) * self._conversion_given_click(x)

    def _terms(self, x: _Inputs) -> dict[str, np.ndarray]:
        cfg, world = self.cfg, self.world
        weights = np.array(
            [cfg.affinity_weight, cfg.sequence_weight, cfg.context_weight, cfg.dense_weight]
        )
        terms = weights * (_raw_terms(cfg, world, x) - world.term_mean) / world.term_std
        return {"bias": np.full(x.length.shape[:-1], cfg.bias)} | {
            name: terms[..., j] for j, name in enumerate(TERMS)
        }

    def _logit(self, x: _Inputs) -> np.ndarray:
        teacher = self.world.teacher
        if teacher is not None:
            return teacher.scale * _teacher_raw(teacher, x) + teacher.shift
        return sum(self._terms(x).values())

    def _probability(self, x: _Inputs) -> np.ndarray:
        noise = self.cfg.label_noise
        return (1.0 - noise) * _sigmoid(self._logit(x)) + 0.5 * noise

    def _conversion_given_click(self, x: _Inputs) -> np.ndarray:
        world = self.world
        standardized = (_raw_terms(self.cfg, world, x) - world.term_mean) / world.term_std
        return _sigmoid(
            CONVERSION_BIAS + np.einsum("...j,j->...", standardized, CONVERSION_WEIGHTS)
        )


def _unbatch(batch: Mapping[str, Any]) -> Example:
    """The first example of a batch: every array without its leading axis."""
    return {k: _unbatch(v) if isinstance(v, Mapping) else v[0] for k, v in batch.items()}


def _concatenate(batches: Sequence[Mapping[str, Any]]) -> Batch:
    """Joins batches (nested dicts of arrays) along their batch axis."""
    first = batches[0]
    return {
        k: _concatenate([b[k] for b in batches])
        if isinstance(first[k], Mapping)
        else np.concatenate([b[k] for b in batches])
        for k in first
    }


def stack_examples(examples: Sequence[Mapping[str, Any]]) -> Batch:
    """Stacks unbatched examples (nested dicts of arrays) into one batch with a leading B axis."""
    first = examples[0]
    return {
        k: stack_examples([e[k] for e in examples])
        if isinstance(first[k], Mapping)
        else np.stack([e[k] for e in examples])
        for k in first
    }


# ---------------------------------------------------------------------------------------------
# The optimum.


def oracle_probabilities(source: SyntheticSource, num: int = 10_000) -> np.ndarray:
    """The probabilities [n] (one task) or [n, K] the labels of the first
    n = min(num, len(source)) examples were drawn from."""
    return source.batch(range(min(num, len(source))))["oracle_p"].astype(np.float64)


def _first_task(p: np.ndarray) -> np.ndarray:
    return p if p.ndim == 1 else p[:, 0]


def base_rate(source: SyntheticSource, num: int = 10_000) -> float:
    """The expected rate p̄ of the first task's label (the click, by default): mean p_true over
    the first `num` examples."""
    return float(_first_task(oracle_probabilities(source, num)).mean())


def bayes_optimal_ne(source: SyntheticSource, num: int = 10_000) -> float:
    """NE of the Bayes-optimal predictor of the first task (p_true, by default) over the first
    `num` examples: mean H(p_true) / H(mean p_true).

    NE = mean log loss / entropy of the base rate (spec, "Quality metric"); predicting p_true
    has expected log loss E[H(p_true)], the lowest any model can reach on this data.
    """
    p = _first_task(oracle_probabilities(source, num))
    return float(binary_entropy(p).mean() / binary_entropy(p.mean()))
