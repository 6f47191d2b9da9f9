"""Sharded training on 8 simulated CPU devices: layout, numerics, lookups, checkpoints.

The mesh here is data=2 x fsdp=2 x model=2, so every kind of axis is exercised at once.
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from kunlun_jax.config import ConfigError, MeshConfig, load_config
from kunlun_jax.parallel.aot import collectives, unconditional_collectives
from kunlun_jax.parallel.lookup import embedding_lookup, lookup_method
from kunlun_jax.parallel.sharding import (
    DEFAULT_RULES,
    ShardingPlan,
    make_mesh,
    mesh_shape,
    spec_for,
)
from kunlun_jax.train.checkpoint import Checkpointer
from kunlun_jax.train.experiment import Layout, build_experiment, plan_config, plan_training
from kunlun_jax.train.state import rowwise_adagrad

SMALL = [
    "data.num_train=1024",
    "data.num_eval=256",
    "data.synthetic.max_history=8",
    "data.synthetic.mean_history=4",
    "model.d_model=16",
    "model.num_heads=2",
    "model.n_seed=4",
    "model.head_hidden=[16]",
    "model.streams.impression.max_len=4",
    "model.streams.impression.d_model=16",
    "train.batch_size=32",
]
MESH_222 = ["mesh.data=2", "mesh.fsdp=2", "mesh.model=2"]

# Sharded and single-device programs sum in different orders: agreement to float32 rounding.
RTOL, ATOL = 2e-5, 2e-6


def test_eight_simulated_devices():
    assert len(jax.devices()) == 8, "tests/conftest.py forces 8 host devices"


def test_a_multi_process_mesh_must_use_every_device(monkeypatch):
    assert make_mesh(MeshConfig(data=4)).devices.size == 4  # one process: a subset is fine
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"uses 4 of the 8 devices; with 2 processes"):
        make_mesh(MeshConfig(data=4))
    assert make_mesh(MeshConfig(data=-1)).devices.size == 8


def test_mesh_shape_resolves_the_rest_axis_and_rejects_impossible_meshes():
    assert mesh_shape(MeshConfig(data=-1, model=2), 8) == {"data": 4, "fsdp": 1, "model": 2}
    assert mesh_shape(MeshConfig(data=1), 8) == {"data": 1, "fsdp": 1, "model": 1}
    with pytest.raises(ConfigError, match="needs 16 devices but 8"):
        mesh_shape(MeshConfig(data=4, model=4), 8)
    with pytest.raises(ConfigError, match="not divisible"):
        mesh_shape(MeshConfig(data=-1, model=3), 8)
    with pytest.raises(ConfigError, match="unknown mesh axes"):
        load_config("tiny", ["mesh.rules.vocab=['rows']"])
    with pytest.raises(ConfigError, match="split evenly over 8 batch shards"):
        plan_training(load_config("tiny", ["train.batch_size=20"]), None, None)


def test_rules_split_tables_over_every_device_and_dense_weights_by_role():
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, model=2))
    rules = list(DEFAULT_RULES)
    assert spec_for(("vocab", "embed"), (64, 16), mesh, rules) == PartitionSpec(
        ("data", "fsdp", "model"), None
    )
    assert spec_for(("embed", "mlp"), (16, 32), mesh, rules) == PartitionSpec("fsdp", "model")
    assert spec_for(("layers", "heads", "embed"), (2, 16, 16), mesh, rules) == PartitionSpec(
        None, "model", "fsdp"
    )
    notes: list[str] = []
    assert spec_for(("vocab", "embed"), (12, 16), mesh, rules, notes, "t") == PartitionSpec(
        ("data", "fsdp"), None
    )
    assert notes == [
        "t: dim 0 (12) not divisible by mesh axes ('data', 'fsdp', 'model'); an embedding "
        "table split over fewer devices: set model.vocab_multiple to a multiple of 8"
    ]
    spec_for(("embed", "mlp"), (16, 3), mesh, rules, notes, "w")  # a dense weight's note
    assert len(notes) == 2
    assert ShardingPlan(mesh, tuple(rules), tuple(notes)).unsplit_tables == (notes[0],)


def _lookup_case(vocab_axes, ids, method, capacity=2.0):
    """(got, want): value and table gradient of sum(lookup(table, ids) * w), sharded vs take."""
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, model=2))
    rules = [("batch", ("data", "fsdp")), ("vocab", vocab_axes)]
    table = jax.random.normal(jax.random.key(0), (64, 8))
    w = jax.random.normal(jax.random.key(2), (*ids.shape, 8))

    def loss(lookup, t):
        return jnp.sum(lookup(t, ids) * w)

    want = jax.value_and_grad(lambda t: loss(lambda a, i: jnp.take(a, i, axis=0), t))(table)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules), lookup_method(method, capacity):
        sharded = jax.device_put(table, NamedSharding(mesh, PartitionSpec(vocab_axes, None)))
        step = jax.jit(jax.value_and_grad(lambda t: loss(embedding_lookup, t)))
        got = step(sharded)
        hlo = step.lower(sharded).compile().as_text()
    return got, want, hlo


def _assert_lookup_close(got, want):
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["reduce_scatter", "all_to_all"])
@pytest.mark.parametrize("vocab_axes", [("data", "fsdp", "model"), ("model",), ("data",)])
def test_sharded_lookup_matches_take_in_values_and_gradients(vocab_axes, method):
    ids = jax.random.randint(jax.random.key(1), (16, 5), 0, 64)
    got, want, _ = _lookup_case(vocab_axes, ids, method)
    _assert_lookup_close(got, want)


def test_all_to_all_lookup_routes_ids_to_their_owners():
    ids = jax.random.randint(jax.random.key(1), (16, 5), 0, 64)
    got, want, hlo = _lookup_case(("data", "fsdp"), ids, "all_to_all")
    _assert_lookup_close(got, want)
    ops = collectives(hlo)
    assert "all-to-all" in ops, ops
    # No gathered ids, no reduce-scattered activations (the reduce_scatter method has both);
    # what all-reduce remains is the table gradient's sum over `model` and scalars.
    assert not {"all-gather", "reduce-scatter"} & set(ops), ops
    _, _, dense_hlo = _lookup_case(("data", "fsdp"), ids, "reduce_scatter")
    assert {"all-gather", "reduce-scatter"} <= set(collectives(dense_hlo))


def test_all_to_all_lookup_takes_extra_rounds_when_one_owner_gets_too_many_ids():
    """capacity 1: 5 slots per destination; hot ids (rows of owner 0 only, up to 16 unique
    per device) need up to 4 rounds, repeated ids included."""
    hot = jax.random.randint(jax.random.key(3), (16, 5), 0, 16)
    got, want, hlo = _lookup_case(("data", "fsdp"), hot, "all_to_all", capacity=1.0)
    _assert_lookup_close(got, want)
    # Round 1 is outside the conditionals: ids out and rows back (forward), cotangent rows out
    # (backward; the ids are shared). The further rounds (up to 4 here: 20 ids / 5 slots) are
    # one loop body each way, whatever the worst case: ids and rows, ids and cotangents.
    assert unconditional_collectives(hlo)["all-to-all"]["count"] == 3
    assert collectives(hlo)["all-to-all"]["count"] == 3 + 2 + 2


def test_lookup_method_rejects_unknown_methods_and_bad_capacities():
    with pytest.raises(ValueError, match="unknown lookup method 'gather'"), lookup_method("gather"):
        pass
    with pytest.raises(ValueError, match="capacity must be > 0"), lookup_method("all_to_all", 0):
        pass
    with pytest.raises(ConfigError, match=r"mesh\.lookup_capacity must be > 0"):
        load_config("tiny", ["mesh.lookup_capacity=0"])


def test_rowwise_adagrad_keeps_one_accumulator_per_row():
    tx = rowwise_adagrad(0.5, initial_accumulator_value=0.1)
    table = jnp.ones((4, 3))
    state = tx.init(table)
    assert state.sum_of_squares.shape == (4, 1)
    grad = jnp.zeros((4, 3)).at[1].set(jnp.array([1.0, 2.0, 2.0]))
    updates, state = tx.update(grad, state)
    acc = 0.1 + (1 + 4 + 4) / 3
    np.testing.assert_allclose(state.sum_of_squares[:, 0], [0.1, acc, 0.1, 0.1], rtol=1e-6)
    np.testing.assert_allclose(updates[1], -0.5 * grad[1] / np.sqrt(acc), rtol=1e-6)
    np.testing.assert_array_equal(
        np.asarray(updates)[[0, 2, 3]], 0.0
    )  # rows not in the batch stay put


@pytest.fixture(scope="module")
def single():
    return build_experiment(load_config("tiny", [*SMALL, "mesh.data=1"]), jax.devices()[:1])


@pytest.fixture(scope="module")
def sharded():
    cfg = load_config("tiny", [*SMALL, *MESH_222, "train.grad_accum_steps=2"])
    return build_experiment(cfg)


def _assert_trees_close(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=RTOL, atol=ATOL)


def test_state_is_created_sharded_with_the_same_values(single, sharded):
    _assert_trees_close(single.state.params, sharded.state.params)
    table = sharded.state.params["embedding"]["item_id"]
    assert table.sharding.spec == PartitionSpec(("data", "fsdp", "model"), None)
    assert table.addressable_shards[0].data.nbytes * 8 == table.nbytes
    # Adagrad's accumulator for the table is split like the table.
    acc = [
        x
        for x in jax.tree.leaves(sharded.state.opt_state)
        if getattr(x, "shape", None) == table.shape
    ]
    assert acc
    assert all(a.addressable_shards[0].data.nbytes * 8 == a.nbytes for a in acc)
    kernels = [
        x
        for path, x in jax.tree_util.tree_flatten_with_path(sharded.state.params)[0]
        if x.sharding.spec == PartitionSpec(None, "fsdp", "model")  # scanned [L, embed, mlp]
    ]
    assert kernels
    assert all(k.addressable_shards[0].data.nbytes * 4 == k.nbytes for k in kernels)


def test_threefry_init_gives_the_same_values_on_one_device_and_eight(single):
    """train.init_rng = "threefry": each device generates its shards (partitionable threefry),
    and the values equal one device's exactly; they are not rbg's (the default)."""
    states = []
    for mesh, devices in ((["mesh.data=1"], jax.devices()[:1]), (MESH_222, None)):
        config = load_config("tiny", [*SMALL, *mesh, "train.init_rng=threefry"])
        layout, example = plan_config(config, devices)
        states.append(layout.initial_state(example))
    one, eight = states
    assert eight.params["embedding"]["item_id"].sharding.spec[0] == ("data", "fsdp", "model")
    for x, y in zip(jax.tree.leaves(one.params), jax.tree.leaves(eight.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    table = np.asarray(one.params["embedding"]["item_id"])
    assert not np.allclose(table, np.asarray(single.state.params["embedding"]["item_id"]))


def test_an_init_out_of_memory_with_rbg_and_sharded_tables_names_the_fix(monkeypatch):
    def exhausted(self):
        def init(*args):
            raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Ran out of memory in hbm")

        return init

    monkeypatch.setattr(Layout, "state_init", exhausted)

    def initial_state(mesh: list[str], rng: str) -> None:
        config = load_config("tiny", [*SMALL, *mesh, f"train.init_rng={rng}"])
        layout, example = plan_config(config, jax.devices()[: 8 if mesh == MESH_222 else 1])
        layout.initial_state(example)

    hint = r"^out of device memory .* with train\.init_rng = 'rbg' XLA can generate a sharded "
    hint += r"parameter whole .* \(the largest here is [\d.]+ MiB\); set train\.init_rng = "
    hint += "'threefry'"
    with pytest.raises(ConfigError, match=hint):
        initial_state(MESH_222, "rbg")
    # Where rbg is not the cause, XLA's error as it was: threefry, or nothing sharded.
    for mesh, rng in ((MESH_222, "threefry"), (["mesh.data=1"], "rbg")):
        with pytest.raises(jax.errors.JaxRuntimeError, match=r"^RESOURCE_EXHAUSTED"):
            initial_state(mesh, rng)


def test_sharded_accumulated_step_matches_the_single_device_step(single, sharded):
    """The 8-device step, with 2 micro-batches of gradient accumulation, against one plain
    step on one device: same loss and update (dropout is off), no table ever all-gathered."""
    batch = next(single.data_iter)
    rng = jax.random.key(7)
    with single.activate():
        s1, m1 = single.train_step()(single.state, single.device_batch(batch), rng)
    with sharded.activate():
        args = (sharded.state, sharded.device_batch(batch), rng)
        compiled = sharded.train_step().lower(*args).compile()
        s8, m8 = compiled(*args)
    np.testing.assert_allclose(float(m1["loss"]), float(m8["loss"]), rtol=RTOL)
    _assert_trees_close(s1.params, s8.params)
    _assert_trees_close(s1.opt_state, s8.opt_state)
    single.state, sharded.state = s1, s8  # the old buffers were donated

    hlo = compiled.as_text()
    tables = {
        tuple(t.shape)
        for t in jax.tree.leaves(s8.params)
        if len(t.sharding.spec) and t.sharding.spec[0] == ("data", "fsdp", "model")
    }
    gathered = {
        tuple(int(n) for n in dims.split(","))
        for dims in re.findall(r"= \w+\[([\d,]+)\]\S* all-gather", hlo)
    }
    assert len(tables) >= 3
    assert "all-gather" in collectives(hlo)  # ids and activations do move
    assert not tables & gathered, f"whole tables all-gathered: {tables & gathered}"


@pytest.mark.slow
def test_all_to_all_lookup_step_matches_the_single_device_step():
    """A train step whose lookups route ids (mesh.lookup=all_to_all over a data=4 x fsdp=2
    mesh) gives a fresh single-device step's loss and update."""
    one = build_experiment(load_config("tiny", [*SMALL, "mesh.data=1"]), jax.devices()[:1])
    cfg = load_config("tiny", [*SMALL, "mesh.data=4", "mesh.fsdp=2", "mesh.lookup=all_to_all"])
    routed = build_experiment(cfg)
    batch = next(one.data_iter)
    rng = jax.random.key(7)
    with one.activate():
        s1, m1 = one.train_step()(one.state, one.device_batch(batch), rng)
    with routed.activate():
        args = (routed.state, routed.device_batch(batch), rng)
        compiled = routed.train_step().lower(*args).compile()
        s8, m8 = compiled(*args)
    np.testing.assert_allclose(float(m1["loss"]), float(m8["loss"]), rtol=RTOL)
    _assert_trees_close(s1.params, s8.params)
    assert "all-to-all" in unconditional_collectives(compiled.as_text())


def test_checkpoint_restores_onto_a_smaller_mesh(sharded, tmp_path):
    ckpt = Checkpointer(tmp_path / "checkpoints")
    ckpt.save(1, sharded.state, sharded.data_iter, {"step": 1})
    ckpt.wait()
    four = plan_training(
        load_config("tiny", [*SMALL, "mesh.data=2", "mesh.model=2"]),
        sharded.spec,
        next(sharded.data_iter),
        jax.devices()[:4],
    )
    target = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        four.abstract_state,
        four.state_shardings,
    )
    restored, meta = ckpt.restore(1, target, sharded.data_iter)
    ckpt.close()
    assert meta["step"] == 1
    table = restored.params["embedding"]["item_id"]
    assert isinstance(table.sharding.mesh, Mesh)
    assert table.sharding.mesh.size == 4
    assert table.addressable_shards[0].data.nbytes * 4 == table.nbytes
    _assert_trees_close(restored.params, sharded.state.params)


def test_truncated_checkpoint_is_detected_and_the_previous_one_used(single, tmp_path):
    ckpt = Checkpointer(tmp_path / "checkpoints", keep=3)
    state = single.state
    for step in (1, 2):
        state = state.replace(step=jnp.array(step, jnp.int32))
        ckpt.save(step, state, single.data_iter, {"step": step})
        ckpt.wait()
    files = [p for p in (tmp_path / "checkpoints" / "2" / "state").rglob("*") if p.is_file()]
    biggest = max(files, key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])  # a torn write
    state, meta = ckpt.restore_latest_good(single.state, single.data_iter)
    assert meta["step"] == 1
    assert int(state.step) == 1
    assert ckpt.all_steps() == [1]
    assert list((tmp_path / "corrupt_checkpoints").iterdir()), "the bad one is kept aside"
    ckpt.close()


def test_optimizer_state_leaves_follow_their_parameter():
    from kunlun_jax.parallel.sharding import like_param

    param = jax.ShapeDtypeStruct((64, 16), jnp.float32)
    spec = PartitionSpec(("data", "model"), "fsdp")
    assert like_param(jnp.zeros((64, 16)), param, spec) == spec
    assert like_param(jnp.zeros((64, 1)), param, spec) == PartitionSpec(("data", "model"), None)
    assert like_param(jnp.zeros(()), param, spec) == PartitionSpec()


def test_keep_best_keeps_the_lowest_ne_besides_the_newest(tmp_path):
    import grain

    data = iter(grain.MapDataset.range(8).to_iter_dataset())
    ckpt = Checkpointer(tmp_path / "checkpoints", keep=1, keep_best=1, async_save=False)
    state = {"w": jnp.zeros((4,))}
    for step, ne in ((1, 0.9), (2, 0.7), (3, 0.8), (4, None)):
        metrics = None if ne is None else {"ne": ne}
        ckpt.save(step, {"w": state["w"] + step}, data, {"step": step}, metrics)
    ckpt.wait()
    assert ckpt.all_steps() == [2, 4]  # the best NE (0.7) and the newest
    ckpt.close()


class _ProcessShards:
    """A batch sharding as one process of a multi-host job sees it: its devices' row slices."""

    def __init__(self, *spans: tuple[int, int]):
        self.spans = spans

    def addressable_devices_indices_map(self, shape):
        return {d: (slice(*span),) for d, span in enumerate(self.spans)}


def test_a_host_reads_every_span_its_devices_hold_in_row_order():
    from kunlun_jax.parallel.distributed import host_rows

    # a topology-ordered TPU mesh: this process's devices hold rows 0-23 and 40-47 of 64,
    # some twice (a replicated model axis), listed in device order
    sharding = _ProcessShards((16, 24), (0, 8), (16, 24), (8, 16), (40, 48), (0, 8))
    np.testing.assert_array_equal(host_rows(sharding, 64), np.r_[0:24, 40:48])
    with pytest.raises(ValueError, match="has no device in the mesh"):
        host_rows(_ProcessShards(), 64)


def test_every_process_names_a_run_by_process_0s_clock_in_utc(monkeypatch):
    from jax.experimental import multihost_utils

    from kunlun_jax.parallel.distributed import run_stamp

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "broadcast_one_to_all", lambda _: np.int64(86_400 * 365))
    assert run_stamp() == "19710101-000000"  # process 0's seconds, whatever this host's clock
