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


class MultiGateExperts(nn.Module):
    """Multi-gate mixture of experts (MMoE, Ma et al., KDD 2018): x [B, F] -> [B, K, W], one
    mixture of the same `num_experts` expert layers (Dense F -> W, SiLU) per task, weighted by
    that task's softmax gate over the experts (a linear map of x; zero-initialized, so every
    mixture starts as the experts' mean)."""

    num_experts: int
    width: int
    num_tasks: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        e, f = self.num_experts, x.shape[-1]
        kernel_init = nn.initializers.lecun_normal(batch_axis=(0,))  # fan-in F per expert
        w = self.param(
            "experts", param_with_axes(kernel_init, (None, "embed", "mlp")), (e, f, self.width)
        )
        b = self.param(
            "experts_bias", param_with_axes(nn.initializers.zeros, (None, "mlp")), (e, self.width)
        )
        gate = self.param(
            "gates",
            param_with_axes(nn.initializers.zeros, ("embed", None, None)),
            (f, self.num_tasks, e),
        )
        x = x.astype(self.dtype)
        experts = jax.nn.silu(
            jnp.einsum("bf,efw->bew", x, w.astype(self.dtype)) + b.astype(self.dtype)
        )
        weights = jax.nn.softmax(
            jnp.einsum("bf,fke->bke", x, gate.astype(self.dtype)).astype(jnp.float32), axis=-1
        )
        return jnp.einsum("bke,bew->bkw", weights.astype(self.dtype), experts)


def task_logits(
    features: jax.Array, cfg: ModelConfig, spec: FeatureSpec, *, train: bool, name: str = "head"
) -> jax.Array:
    """The ranking head (call inside a compact method): dropout (cfg.dropout), then MLPs
    (cfg.head_hidden) with one output per task of `spec.tasks`. cfg.task_heads: "shared", one
    MLP `name` whose hidden layers the tasks share; with several tasks "per_task", one MLP
    `name`_<task> each; or "mmoe", cfg.task_experts expert layers of width head_hidden[0]
    (`name`_experts, `MultiGateExperts`) mixed per task, each mixture through its task's tower
    `name`_<task> (the rest of head_hidden); or "esmm", the shared MLP read as
    `entire_space_logits`. features [B, F] -> float32 logits [B] for one task, [B, K] for K
    tasks (the label's shape, `kunlun_jax.data.spec`)."""
    n_tasks, dtype = len(spec.tasks), jnp.dtype(cfg.dtype)
    h = nn.Dropout(cfg.dropout, deterministic=not train)(features)
    if n_tasks > 1 and cfg.task_heads in ("per_task", "mmoe"):
        hidden, inputs = cfg.head_hidden, [h] * n_tasks
        if cfg.task_heads == "mmoe":
            width, *hidden = cfg.head_hidden
            mixed = MultiGateExperts(
                cfg.task_experts, width, n_tasks, dtype, name=f"{name}_experts"
            )(h)
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


def batch_constraint(x: jax.Array) -> jax.Array:
    """Pins an activation [B, ...] to the mesh axes of logical `batch` (a no-op without a mesh
    and axis rules), so sharding propagation never gathers a batch onto one device."""
    return nn.with_logical_constraint(x, ("batch",) + (None,) * (x.ndim - 1))
