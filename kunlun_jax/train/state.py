"""Train state, optimizer (separate embedding / dense optimizers) and the jitted steps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from kunlun_jax.config import TrainConfig
from kunlun_jax.data.spec import Batch


@struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def param_labels(boxed_params: Any) -> Any:
    """'embedding' for tables (first logical axis 'vocab'), else 'dense', per parameter."""

    def label(p: Any) -> str:
        names = p.names if isinstance(p, nn.Partitioned) else ()
        return "embedding" if names and names[0] == "vocab" else "dense"

    return jax.tree.map(label, boxed_params, is_leaf=lambda x: isinstance(x, nn.Partitioned))


class RowwiseAdagradState(NamedTuple):
    sum_of_squares: Any  # per table [V, 1]: running sum of the row's mean squared gradient


def rowwise_adagrad(
    learning_rate: float, initial_accumulator_value: float = 0.1, eps: float = 1e-10
) -> optax.GradientTransformation:
    """Adagrad with one accumulator per embedding row (mean of the row's squared gradient), as
    in DLRM/TorchRec: optimizer memory V instead of V x D per table [V, D]. Rows absent from a
    batch get a zero gradient and keep their accumulator and value."""

    def init(params):
        return RowwiseAdagradState(
            jax.tree.map(
                lambda p: jnp.full((*p.shape[:-1], 1), initial_accumulator_value, p.dtype), params
            )
        )

    def update(updates, state, params=None):
        del params
        sos = jax.tree.map(
            lambda g, n: n + jnp.mean(jnp.square(g), axis=-1, keepdims=True),
            updates,
            state.sum_of_squares,
        )
        updates = jax.tree.map(
            lambda g, n: -learning_rate * g * jax.lax.rsqrt(n + eps), updates, sos
        )
        return updates, RowwiseAdagradState(sos)

    return optax.GradientTransformation(init, update)


def make_optimizer(cfg: TrainConfig, labels: Any) -> optax.GradientTransformation:
    """AdamW with warmup + cosine decay for dense params, (row-wise) Adagrad for embedding
    tables per `train.embedding_optimizer`, global-norm clipping over all gradients first."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        decay_steps=max(cfg.decay_steps or cfg.steps, cfg.warmup_steps + 1),
        end_value=cfg.learning_rate * 0.1,
    )
    dense = optax.adamw(schedule, weight_decay=cfg.weight_decay)
    adagrad = rowwise_adagrad if cfg.embedding_optimizer == "rowwise_adagrad" else optax.adagrad
    embedding = adagrad(
        cfg.embedding_learning_rate, initial_accumulator_value=cfg.embedding_initial_accumulator
    )
    chain = [optax.multi_transform({"dense": dense, "embedding": embedding}, labels)]
    if cfg.clip_norm > 0:
        chain.insert(0, optax.clip_by_global_norm(cfg.clip_norm))
    return optax.chain(*chain)


def bce_loss(logits: jax.Array, labels: jax.Array, task_weights: Sequence[float] = ()) -> jax.Array:
    """Mean binary cross-entropy of logits and labels in {0, 1}, both [B] (one task) or [B, K]:
    sum_k w_k mean_b BCE_bk / sum_k w_k, with equal weights where `task_weights` is ()."""
    per_task = jnp.mean(
        optax.sigmoid_binary_cross_entropy(logits, labels).reshape(len(labels), -1), axis=0
    )
    if not task_weights:
        return jnp.mean(per_task)
    w = jnp.asarray(task_weights, jnp.float32)
    return jnp.sum(per_task * w) / jnp.sum(w)


def micro_batches(batch: Batch, n: int) -> Batch:
    """[B, ...] -> [n, B / n, ...], micro-batch k = rows k, k + n, k + 2n, ...: each batch
    shard keeps an equal share of every micro-batch, so no data moves between devices."""
    return jax.tree.map(lambda x: x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1), batch)


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    accum_steps: int = 1,
    task_weights: Sequence[float] = (),
):
    """(state, batch, rng) -> (state, metrics). With accum_steps > 1 the batch is split into
    micro-batches whose gradients are averaged (same result as one big batch, less memory).
    task_weights: the multi-task loss's weights (`bce_loss`).
    A non-finite loss, gradient, gradient norm or updated parameter leaves the state unchanged
    and reports, per parameter, which gradients were non-finite."""

    def loss_fn(params, batch: Batch, rng):
        logits = model.apply({"params": params}, batch, train=True, rngs={"dropout": rng})
        return bce_loss(logits, batch["label"], task_weights)

    grad_fn = jax.value_and_grad(loss_fn)

    def accumulated(params, batch: Batch, rng):
        def body(carry, xs):
            mb, k = xs
            mb = nn.with_logical_constraint(
                mb, jax.tree.map(lambda x: ("batch",) + (None,) * (x.ndim - 1), mb)
            )
            loss, grads = grad_fn(params, mb, jax.random.fold_in(rng, k))
            return jax.tree.map(jnp.add, carry, (loss, grads)), None

        zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
        xs = (micro_batches(batch, accum_steps), jnp.arange(accum_steps))
        total, _ = jax.lax.scan(body, zeros, xs)
        return jax.tree.map(lambda x: x / accum_steps, total)

    def step(state: TrainState, batch: Batch, rng: jax.Array):
        if accum_steps == 1:
            loss, grads = grad_fn(state.params, batch, rng)
        else:
            loss, grads = accumulated(state.params, batch, rng)
        grad_finite = jax.tree.map(lambda g: jnp.all(jnp.isfinite(g)), grads)
        grad_norm = optax.tree.norm(grads)
        # A finite gradient whose squares overflow fp32 (norm inf) would put inf into Adam's
        # second moment or Adagrad's sums, silently freezing those parameters.
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        finite &= jnp.all(jnp.stack(jax.tree.leaves(grad_finite)))
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # Finite gradients can still step to non-finite parameters (e.g. a learning rate too
        # large): such an update is dropped too.
        update_finite = jnp.all(
            jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)])
        )
        finite = finite & update_finite
        new = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
        kept = TrainState(step=state.step + 1, params=state.params, opt_state=state.opt_state)
        state = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, kept)
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "finite": finite,
            "grad_finite": grad_finite,
            "update_finite": update_finite,
        }
        return state, metrics

    return step


def make_predict_step(model: nn.Module):
    """(params, batch) -> click probabilities [B]."""

    def predict(params, batch: Batch) -> jax.Array:
        return jax.nn.sigmoid(model.apply({"params": params}, batch, train=False))

    return predict
