"""The train step's NaN/Inf guard and the checkpoints' integrity checks, on small trees (no
model or data pipeline)."""

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from kunlun_jax.train.checkpoint import Checkpointer, CheckpointError, checksums
from kunlun_jax.train.state import TrainState, make_train_step


class _Linear(nn.Module):
    """logits [B] = x [B, 2] @ w [2]."""

    @nn.compact
    def __call__(self, batch, train: bool = False):
        return batch["x"] @ self.param("w", nn.initializers.ones, (2,))


def _step_once(x: np.ndarray) -> tuple[TrainState, TrainState, dict]:
    model, tx = _Linear(), optax.adam(1e-3)
    batch = {"x": jnp.asarray(x, jnp.float32), "label": jnp.zeros(len(x), jnp.float32)}
    params = model.init(jax.random.key(0), batch)["params"]
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
    new, metrics = jax.jit(make_train_step(model, tx))(state, batch, jax.random.key(1))
    return state, new, metrics


def test_a_gradient_whose_squares_overflow_is_dropped_like_a_non_finite_one():
    """loss 1e21 and gradient 1e21 are finite, but g² overflows fp32: Adam's second moment
    would hold inf and freeze the parameter. The step is dropped (params and optimizer state
    kept, the step counted) and reported as non-finite with an inf gradient norm."""
    state, new, metrics = _step_once(np.array([[1e21, 0.0]]))
    assert np.isfinite(float(metrics["loss"]))
    assert all(bool(ok) for ok in jax.tree.leaves(metrics["grad_finite"]))
    assert not np.isfinite(float(metrics["grad_norm"]))
    assert not bool(metrics["finite"])
    assert int(new.step) == 1
    for kept, before in zip(
        jax.tree.leaves((new.params, new.opt_state)),
        jax.tree.leaves((state.params, state.opt_state)),
        strict=True,
    ):
        np.testing.assert_array_equal(kept, before)


def test_an_ordinary_step_updates_the_parameters():
    _, new, metrics = _step_once(np.array([[1.0, 2.0]]))
    assert bool(metrics["finite"])
    assert np.all(np.isfinite(jax.tree.leaves(new.opt_state)[1]))
    assert not np.array_equal(new.params["w"], np.ones(2))


def _data_iter():
    return iter(grain.MapDataset.range(100).to_iter_dataset())


def test_checksums_are_the_same_on_every_mesh_and_catch_changed_values():
    """Rows summing to 0 made fp32 per-leaf sums mesh-dependent; integer checksums are exact.
    Zeroing, truncating or swapping values changes them."""
    x = np.random.default_rng(0).normal(size=(64, 16)).astype(np.float32)
    x -= x.mean(axis=1, keepdims=True)
    tree = {"w": x, "bf16": x.astype(jnp.bfloat16), "step": np.int32(7), "ok": np.bool_(True)}
    expected = checksums(tree)
    for n in (1, 2, 4, 8):
        mesh = Mesh(np.array(jax.devices()[:n]), ("d",))
        sharded = jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))
        sharded["w"] = jax.device_put(x, NamedSharding(mesh, PartitionSpec("d")))
        assert checksums(sharded) == expected, n
    for changed in (np.where(np.arange(64)[:, None] < 32, x, 0), x[::-1], np.zeros_like(x)):
        assert checksums({**tree, "w": changed}) != expected


def test_a_failure_every_checkpoint_shares_moves_none_of_them(tmp_path):
    """Restoring into a state of another structure (a changed model or optimizer) fails for
    every checkpoint: a clear error, and all of them stay where they are."""
    ckpt = Checkpointer(tmp_path / "checkpoints", keep=3, async_save=False)
    state = {"w": jnp.ones(3), "step": jnp.int32(0)}
    for step in (1, 2):
        ckpt.save(step, state, _data_iter(), {"step": step})
    with pytest.raises(CheckpointError, match="none was moved"):
        ckpt.restore_latest_good({**state, "extra": jnp.zeros(2)}, _data_iter())
    assert ckpt.all_steps() == [1, 2]
    assert not (tmp_path / "corrupt_checkpoints").exists()
    restored, meta = ckpt.restore_latest_good(state, _data_iter())
    assert meta["step"] == 2
    np.testing.assert_array_equal(restored["w"], np.ones(3))
    ckpt.close()
