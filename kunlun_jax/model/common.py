"""Small shared pieces: partitioned initializers, dense layers with logical axes, norms, MLP."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kunlun_jax.config import TASK_PARENTS, ModelConfig
from kunlun_jax.data.spec import FeatureSpec, task_columns

Dtype = jnp.dtype

default_kernel_init = nn.initializers.lecun_normal()


@dataclasses.dataclass(frozen=True)
class GdpaScoring:
    """GDPA in place of softmax in an attention module: O = β·Act(α·Q Kᵀ) V (masked positions
    contribute 0; `pallas_kernels.ops.gdpa`, whose keywords the fields are). activation: a
    GDPA activation name; qk_scale = α, out_scale = β."""

    activation: str
    qk_scale: float
    out_scale: float


def param_with_axes(init, axes: tuple[str | None, ...]):
    """An initializer annotated with logical axis names (mapped to mesh axes by rules)."""
    return nn.with_logical_partitioning(init, axes)


class Dense(nn.Module):
    """y = x W (+ b) on the last axis; W carries logical axes (in_axis, out_axis)."""

    features: int
    axes: tuple[str | None, str | None] = ("embed", "mlp")
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    kernel_init: nn.initializers.Initializer = default_kernel_init

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.param(
            "kernel", param_with_axes(self.kernel_init, self.axes), (x.shape[-1], self.features)
        )
        y = jnp.einsum("...i,io->...o", x.astype(self.dtype), w.astype(self.dtype))
        if self.use_bias:
            b = self.param(
                "bias", param_with_axes(nn.initializers.zeros, (self.axes[1],)), (self.features,)
            )
            y = y + b.astype(self.dtype)
        return y


class LayerNorm(nn.Module):
    """LayerNorm over the last axis, computed in fp32, scale/bias on the 'embed' axis."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.LayerNorm(
            dtype=self.dtype,
            param_dtype=jnp.float32,
            scale_init=param_with_axes(nn.initializers.ones, ("embed",)),
            bias_init=param_with_axes(nn.initializers.zeros, ("embed",)),
        )(x)


class MLP(nn.Module):
    """Dense -> SiLU -> ... -> Dense over the last axis; widths = hidden + (out,)."""

    hidden: Sequence[int]
    out: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.hidden:
            x = jax.nn.silu(Dense(width, ("embed", "mlp"), dtype=self.dtype)(x))
        return Dense(self.out, ("mlp", "embed"), dtype=self.dtype)(x)


class GatedExperts(nn.Module):
    """One extraction level of PLE (Tang et al., RecSys 2020): `num_shared` shared expert
    layers and `num_own` of each task's own (Dense F -> W, SiLU each). Task k's output mixes
    its own experts and the shared ones by its softmax gate over them, a linear map of its
    input; with `emit_shared`, a shared gate over every expert gives the shared output that
    feeds the next level's shared experts. Gates start at zero: every mixture starts as the
    mean of the experts it sees. With num_own = 0, one level is MMoE (Ma et al., KDD 2018).

    (tasks_in [B, K, F], shared_in [B, F]) -> (tasks_out [B, K, W], shared_out [B, W] or None).
    """

    num_shared: int
    num_own: int
    width: int
    num_tasks: int
    emit_shared: bool = False
    dtype: Dtype = jnp.float32

    def _experts(self, name: str, x: jax.Array, lead: tuple[int, ...], spec: str) -> jax.Array:
        """SiLU(x W_e + b_e) of experts with leading parameter dims `lead`; spec: the einsum
        of x with the [*lead, F, W] kernel."""
        batch_axes = tuple(range(len(lead)))  # fan-in F per expert
        init = nn.initializers.lecun_normal(batch_axis=batch_axes)
        blank = (None,) * len(lead)
        shape = (*lead, x.shape[-1], self.width)
        w = self.param(name, param_with_axes(init, (*blank, "embed", "mlp")), shape)
        b = self.param(
            f"{name}_bias",
            param_with_axes(nn.initializers.zeros, (*blank, "mlp")),
            (*lead, self.width),
        )
        y = jnp.einsum(spec, x.astype(self.dtype), w.astype(self.dtype))
        return jax.nn.silu(y + b.astype(self.dtype))

    def _gate(self, name: str, x: jax.Array, shape: tuple[int, ...], spec: str) -> jax.Array:
        """float32 softmax over the last axis of the zero-initialized linear scores of x."""
        axes = ("embed",) + (None,) * (len(shape) - 1)
        g = self.param(name, param_with_axes(nn.initializers.zeros, axes), shape)
        scores = jnp.einsum(spec, x.astype(self.dtype), g.astype(self.dtype))
        return jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(self.dtype)

    @nn.compact
    def __call__(
        self, tasks_in: jax.Array, shared_in: jax.Array
    ) -> tuple[jax.Array, jax.Array | None]:
        k, s, o = self.num_tasks, self.num_shared, self.num_own
        f_task, f_shared = tasks_in.shape[-1], shared_in.shape[-1]
        shared = self._experts("experts", shared_in, (s,), "bf,efw->bew")  # [B, S, W]
        gates = self._gate("gates", tasks_in, (f_task, k, o + s), "bkf,fke->bke")
        tasks_out = jnp.einsum("bke,bew->bkw", gates[..., o:], shared)
        own = None
        if o:
            own = self._experts("task_experts", tasks_in, (k, o), "bkf,kefw->bkew")
            tasks_out += jnp.einsum("bke,bkew->bkw", gates[..., :o], own)
        if not self.emit_shared:
            return tasks_out, None
        weights = self._gate("shared_gate", shared_in, (f_shared, k * o + s), "bf,fe->be")
        shared_out = jnp.einsum("be,bew->bw", weights[:, k * o :], shared)
        if own is not None:
            flat = own.reshape(own.shape[0], k * o, self.width)
            shared_out += jnp.einsum("be,bew->bw", weights[:, : k * o], flat)
        return tasks_out, shared_out


def extracted_task_features(
    h: jax.Array, cfg: ModelConfig, num_tasks: int, name: str
) -> tuple[jax.Array, tuple[int, ...]]:
    """The expert levels of an "mmoe" (one level, no task experts) or "ple" head
    (cfg.ple_levels, cfg.task_own_experts per task): level l's experts are head_hidden[l]
    wide. h [B, F] -> (per-task features [B, K, W], the widths left for the towers)."""
    levels, own = cfg.expert_levels()
    tasks_in = jnp.broadcast_to(h[:, None], (h.shape[0], num_tasks, h.shape[-1]))
    shared_in: jax.Array | None = h
    for level, width in enumerate(cfg.head_hidden[:levels]):
        assert shared_in is not None  # every level but the last emits it
        tasks_in, shared_in = GatedExperts(
            cfg.task_experts,
            own,
            width,
            num_tasks,
            emit_shared=level < levels - 1,
            dtype=jnp.dtype(cfg.dtype),
            name=f"{name}_experts" + (f"_{level}" if level else ""),
        )(tasks_in, shared_in)
    return tasks_in, cfg.head_hidden[levels:]


def task_logits(
    features: jax.Array, cfg: ModelConfig, spec: FeatureSpec, *, train: bool, name: str = "head"
) -> jax.Array:
    """The ranking head (call inside a compact method): dropout (cfg.dropout), then MLPs
    (cfg.head_hidden) with one output per task of `spec.tasks`. cfg.task_heads: "shared", one
    MLP `name` whose hidden layers the tasks share; with several tasks "per_task", one MLP
    `name`_<task> each; "mmoe" / "ple", expert levels (`extracted_task_features`,
    `name`_experts...) whose per-task mixtures go through the task's tower `name`_<task> (the
    rest of head_hidden); or "esmm", the shared MLP read as
    `entire_space_logits`. features [B, F] -> float32 logits [B] for one task, [B, K] for K
    tasks (the label's shape, `kunlun_jax.data.spec`)."""
    n_tasks, dtype = len(spec.tasks), jnp.dtype(cfg.dtype)
    h = nn.Dropout(cfg.dropout, deterministic=not train)(features)
    if n_tasks > 1 and cfg.task_heads in ("per_task", "mmoe", "ple"):
        hidden, inputs = cfg.head_hidden, [h] * n_tasks
        if cfg.task_heads in ("mmoe", "ple"):
            mixed, hidden = extracted_task_features(h, cfg, n_tasks, name)
            inputs = [mixed[:, k] for k in range(n_tasks)]
        towers = [
            MLP(hidden, 1, dtype=dtype, name=f"{name}_{t}")(x)
            for t, x in zip(spec.tasks, inputs, strict=True)
        ]
        return jnp.concatenate(towers, axis=-1).astype(jnp.float32)
    logits = MLP(cfg.head_hidden, n_tasks, dtype=dtype, name=name)(h).astype(jnp.float32)
    if n_tasks > 1 and cfg.task_heads == "esmm":
        logits = entire_space_logits(logits, spec.tasks)
    return task_columns(logits)


def entire_space_logits(logits: jax.Array, tasks: Sequence[str]) -> jax.Array:
    """ESMM (Ma et al., SIGIR 2018) over logits [B, K] of `tasks`: a task whose parent
    (TASK_PARENTS, whose parents have none) is among the tasks reads its column as the logit of
    P(task | parent) and gets the logit of P(parent) · P(task | parent) (`and_logit`); the
    others keep theirs."""
    columns = [
        and_logit(logits[:, tasks.index(parent)], logits[:, k])
        if (parent := TASK_PARENTS.get(task)) in tasks
        else logits[:, k]
        for k, task in enumerate(tasks)
    ]
    return jnp.stack(columns, axis=-1)


def and_logit(a: jax.Array, b: jax.Array) -> jax.Array:
    """The logit of σ(a)·σ(b), computed in log space (finite for any finite a, b: the
    product's probability is capped at 1 - 1e-6)."""
    log_p = jnp.minimum(jax.nn.log_sigmoid(a) + jax.nn.log_sigmoid(b), -1e-6)
    return log_p - jnp.log(-jnp.expm1(log_p))


def length_mask(lengths: jax.Array, t: int) -> jax.Array:
    """[B] lengths -> bool [B, T], True at real (non-padded) positions."""
    return jnp.arange(t)[None, :] < lengths[:, None]


def real_times(dt: jax.Array, lengths: jax.Array) -> jax.Array:
    """Event times dt [B, T] with the padded positions (>= lengths [B]) zeroed.

    Padding may hold anything, NaN and Inf included (validate_batch checks real events only).
    Masks hide a padded time from the forward, but not from the backward: a masked-out row
    computed from it (ROTE'd Q / K) meets a zero cotangent there, and 0 · NaN = NaN."""
    return jnp.where(length_mask(lengths, dt.shape[1]), dt, 0.0)


def batch_constraint(x: jax.Array) -> jax.Array:
    """Pins an activation [B, ...] to the mesh axes of logical `batch` (a no-op without a mesh
    and axis rules), so sharding propagation never gathers a batch onto one device."""
    return nn.with_logical_constraint(x, ("batch",) + (None,) * (x.ndim - 1))
