"""An experiment built from a config: data, model, optimizer and a train state laid out on a
device mesh, with the sharded (pjit) train and predict steps.

The state is created directly in its sharded layout (a jitted init with out_shardings), so a
large embedding table never exists whole on one device. Every step runs inside
`exp.activate()`: the mesh plus the logical-axis rules that model code and kernels read.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from kunlun_jax.config import Config, ConfigError, TrainConfig
from kunlun_jax.data.pipeline import first_batch, make_source, train_iterator
from kunlun_jax.data.spec import Batch, BatchError, FeatureSpec, validate_batch
from kunlun_jax.model.factory import build_model
from kunlun_jax.parallel.distributed import host_rows, processes_where
from kunlun_jax.parallel.lookup import lookup_method
from kunlun_jax.parallel.sharding import (
    ShardingPlan,
    axis_rules,
    make_mesh,
    param_specs,
    state_shardings,
)
from kunlun_jax.train.state import (
    TrainState,
    make_optimizer,
    make_predict_step,
    make_train_step,
    param_labels,
)


def init_key(train: TrainConfig) -> jax.Array:
    """The key the parameters are initialized from (`train.seed`, `train.init_rng`). "rbg",
    XLA's native bit generator, compiles several times faster than threefry for the hundreds
    of initializers; threefry is partitioned (`jax_threefry_partitionable`), so a sharded
    table's values are generated shard by shard, never whole on one device."""
    impl = {"rbg": "rbg", "threefry": "threefry2x32"}[train.init_rng]
    return jax.random.key(train.seed, impl=impl)


@dataclasses.dataclass
class Layout:
    """A model's train state laid out on a mesh, without allocating it: what both training
    and ahead-of-time compiles (for devices that are not attached) need."""

    config: Config
    spec: FeatureSpec
    model: nn.Module
    tx: Any
    plan: ShardingPlan
    abstract_state: TrainState  # ShapeDtypeStructs
    state_shardings: Any

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        """The mesh, logical-axis rules and lookup method every traced step (and kernel)
        must see."""
        mesh = self.config.mesh
        with (
            jax.set_mesh(self.plan.mesh),
            nn.logical_axis_rules(self.plan.rules),
            lookup_method(mesh.lookup, mesh.lookup_capacity),
        ):
            yield

    def sharded_abstract_state(self) -> TrainState:
        """The train state as ShapeDtypeStructs carrying their shardings: what a checkpoint
        restores into, or a step lowers for, without allocating anything."""
        return jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            self.abstract_state,
            self.state_shardings,
        )

    def initial_state(self, example: Batch) -> TrainState:
        """A fresh train state (`init_key`), created directly in its sharded layout;
        `example`: a batch (shapes only)."""
        with self.activate():
            try:
                return self.state_init()(init_key(self.config.train), example)
            except jax.errors.JaxRuntimeError as error:
                hint = self._rbg_memory_hint(error)
                if hint is None:
                    raise
                raise ConfigError(hint) from error

    def _rbg_memory_hint(self, error: Exception) -> str | None:
        """The fix for an init that ran out of device memory, where the "rbg" generator may
        have produced a sharded parameter whole on every device (`init_key`); None where that
        cannot be the cause (another error, threefry, nothing sharded)."""
        if "RESOURCE_EXHAUSTED" not in str(error) or self.config.train.init_rng != "rbg":
            return None
        sharded = [
            x.size * x.dtype.itemsize
            for x, s in zip(
                jax.tree.leaves(self.abstract_state.params),
                jax.tree.leaves(self.state_shardings.params),
                strict=True,
            )
            if not s.is_fully_replicated
        ]
        if not sharded:
            return None
        return (
            f"out of device memory initializing the parameters: with train.init_rng = 'rbg' "
            f"XLA can generate a sharded parameter whole on each device before keeping its "
            f"shard (the largest here is {max(sharded) / 2**20:,.1f} MiB); set "
            f"train.init_rng = 'threefry' (each device generates only its shard; other initial "
            f"values). XLA said: {str(error).splitlines()[0][:200]}"
        )

    def state_init(self) -> Any:
        """jit(key, batch) -> a fresh train state in its sharded layout (`initial_state`)."""
        return jax.jit(_state_init(self.model, self.tx), out_shardings=self.state_shardings)

    def train_step(self) -> Any:
        """jit(state, batch, rng) -> (state, metrics): state donated, batch split over the
        batch axes, metrics replicated."""
        replicated = NamedSharding(self.plan.mesh, PartitionSpec())
        train = self.config.train
        step = make_train_step(self.model, self.tx, train.grad_accum_steps, train.task_weights)
        return jax.jit(
            step,
            in_shardings=(self.state_shardings, self.plan.batch_sharding(), replicated),
            out_shardings=(self.state_shardings, replicated),
            donate_argnums=0,
        )

    def predict_step(self) -> Any:
        """jit(params, batch) -> probabilities [B], split like the batch."""
        return jax.jit(
            make_predict_step(self.model),
            in_shardings=(self.state_shardings.params, self.plan.batch_sharding()),
            out_shardings=self.plan.batch_sharding(),
        )


def plan_training(
    config: Config, spec: FeatureSpec, example: Batch, devices: list[Any] | None = None
) -> Layout:
    """Model, optimizer and the sharded layout of the train state on a mesh of `devices`
    (default: all attached) shaped by `config.mesh`. `example`: a batch (shapes only)."""
    mesh = make_mesh(config.mesh, devices)
    rules = axis_rules(config.mesh)
    _check_batch_split(config, ShardingPlan(mesh, rules, ()))
    model = build_model(config.model, spec)
    key = jax.eval_shape(lambda: init_key(config.train))  # abstract: no device needed
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        boxed = jax.eval_shape(model.init, key, example)["params"]
        tx = make_optimizer(config.train, param_labels(boxed))
        specs, unsharded = param_specs(boxed, mesh, rules)
        plan = ShardingPlan(mesh, rules, tuple(unsharded))
        params = jax.eval_shape(nn.unbox, boxed)  # from the one model trace above
        step = jax.ShapeDtypeStruct((), jnp.int32)
        abstract = TrainState(step, params, jax.eval_shape(tx.init, params))
    return Layout(config, spec, model, tx, plan, abstract, state_shardings(abstract, specs, mesh))


def plan_config(config: Config, devices: list[Any] | None = None) -> tuple[Layout, Batch]:
    """`config`'s Layout on a mesh of `devices` (nothing allocated), planned from its first
    eval batch of `train.batch_size` examples (validated), and that batch."""
    eval_source, spec = make_source(config.data, "eval")
    return _plan_from_eval(config, eval_source, spec, devices)


def _plan_from_eval(
    config: Config, eval_source: Any, spec: FeatureSpec, devices: list[Any] | None
) -> tuple[Layout, Batch]:
    """The Layout planned from `eval_source`'s first batch (validated), and that batch."""
    example = first_batch(eval_source, config.train.batch_size)
    validate_batch(example, spec)
    return plan_training(config, spec, example, devices), example


def _state_init(model: nn.Module, tx: Any) -> Any:
    def init(key: jax.Array, example: Batch) -> TrainState:
        params = nn.unbox(model.init(key, example)["params"])
        return TrainState(jnp.array(0, jnp.int32), params, tx.init(params))

    return init


@dataclasses.dataclass
class Experiment(Layout):
    """A Layout plus its data and the materialized, sharded train state (None when built with
    `init_state=False`, for a checkpoint to be restored into `sharded_abstract_state()`)."""

    train_source: Any = None
    eval_source: Any = None
    example: Batch | None = None  # the first eval batch, which the layout was planned from
    data_iter: Any = None  # this host's rows of every global batch
    state: TrainState | None = None

    def device_batch(self, local: Batch, what: str = "a batch") -> Batch:
        """This host's rows of a global batch, checked by `validate_batch` -> global arrays
        split over the batch axes. Every process learns whether any host's rows failed: that
        host raises a BatchError naming the field, the others one naming that process, so that
        no host is left waiting in the step's collectives for one that stopped.
        what: the batch, as errors name it."""
        error = None
        try:
            validate_batch(local, self.spec)
        except BatchError as e:
            error = e
        failed = processes_where(error is not None)  # one collective call on every process
        if error is not None:
            raise BatchError(f"{what}: {error}") from error
        if failed:
            raise BatchError(
                f"{what} failed validation on process {', '.join(map(str, failed))} (that "
                "process's error names the field)"
            )
        sharding = self.plan.batch_sharding()
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local
        )

    def global_batch(self, batch: Batch, what: str = "an eval batch") -> Batch:
        """A global batch that every host holds whole (eval) -> sharded global arrays; each
        host checks only its own rows (`device_batch`)."""
        rows = host_rows(self.plan.batch_sharding(), len(batch["label"]))
        return self.device_batch(jax.tree.map(lambda x: x[rows], batch), what)


def build_experiment(
    config: Config, devices: list[Any] | None = None, *, init_state: bool = True
) -> Experiment:
    """Data, model, optimizer and the train state, created directly in its sharded layout on
    a mesh of `devices` (default: all) shaped by `config.mesh`. init_state=False leaves the
    state None: a run restored from a checkpoint never holds a second, fresh copy."""
    tc = config.train
    train_source, spec = make_source(config.data, "train")
    eval_source, _ = make_source(config.data, "eval")
    layout, example = _plan_from_eval(config, eval_source, spec, devices)
    state = layout.initial_state(example) if init_state else None
    rows = host_rows(layout.plan.batch_sharding(), tc.batch_size)
    data_iter = train_iterator(
        train_source,
        tc.batch_size,
        seed=config.data.seed,
        rows=rows,
        buckets=config.data.length_buckets,
    )
    return Experiment(
        **{f.name: getattr(layout, f.name) for f in dataclasses.fields(Layout)},
        train_source=train_source,
        eval_source=eval_source,
        example=example,
        data_iter=data_iter,
        state=state,
    )


def _check_batch_split(config: Config, plan: ShardingPlan) -> None:
    tc, shards = config.train, plan.num_batch_shards()
    micro = tc.batch_size // tc.grad_accum_steps
    if micro % shards:
        raise ConfigError(
            f"train.batch_size / train.grad_accum_steps = {micro} rows per micro-batch cannot be "
            f"split evenly over {shards} batch shards (mesh axes {plan.batch_axes}); use a "
            f"multiple of {shards}"
        )
