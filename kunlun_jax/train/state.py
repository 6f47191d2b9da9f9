"""Train state, optimizer (separate embedding / dense optimizers) and the jitted steps."""

from __future__ import annotations

from typing import Any

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


def make_optimizer(cfg: TrainConfig, labels: Any) -> optax.GradientTransformation:
    """AdamW with warmup + cosine decay for dense params, Adagrad for embedding tables,
    global-norm clipping over all gradients first."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        decay_steps=max(cfg.steps, cfg.warmup_steps + 1),
        end_value=cfg.learning_rate * 0.1,
    )
    dense = optax.adamw(schedule, weight_decay=cfg.weight_decay)
    embedding = optax.adagrad(
        cfg.embedding_learning_rate, initial_accumulator_value=cfg.embedding_initial_accumulator
    )
    chain = [optax.multi_transform({"dense": dense, "embedding": embedding}, labels)]
    if cfg.clip_norm > 0:
        chain.insert(0, optax.clip_by_global_norm(cfg.clip_norm))
    return optax.chain(*chain)


def bce_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean binary cross-entropy with logits [B] and labels [B] in {0, 1}."""
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels))


def make_train_step(model: nn.Module, tx: optax.GradientTransformation):
    """(state, batch, rng) -> (state, metrics). A non-finite loss or gradient leaves the state
    unchanged and reports, per parameter, which gradients were non-finite."""

    def loss_fn(params, batch: Batch, rng):
        logits = model.apply({"params": params}, batch, train=True, rngs={"dropout": rng})
        return bce_loss(logits, batch["label"])

    def step(state: TrainState, batch: Batch, rng: jax.Array):
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, rng)
        grad_finite = jax.tree.map(lambda g: jnp.all(jnp.isfinite(g)), grads)
        finite = jnp.isfinite(loss) & jnp.all(jnp.stack(jax.tree.leaves(grad_finite)))
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
        kept = TrainState(step=state.step + 1, params=state.params, opt_state=state.opt_state)
        state = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, kept)
        metrics = {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "finite": finite,
            "grad_finite": grad_finite,
        }
        return state, metrics

    return step


def make_predict_step(model: nn.Module):
    """(params, batch) -> click probabilities [B]."""

    def predict(params, batch: Batch) -> jax.Array:
        return jax.nn.sigmoid(model.apply({"params": params}, batch, train=False))

    return predict
