"""`kunlun-jax compile`: the sharded train step, Pallas kernels included, compiled for a TPU
topology that is not attached (deviceless, with libtpu), and its report."""

from __future__ import annotations

import json
import os

import jax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from kunlun_jax.bench.schema import BENCH_SCHEMA, load
from kunlun_jax.cli import main
from kunlun_jax.parallel.aot import collectives

pytest.importorskip(
    "libtpu", reason="libtpu not installed (pip install libtpu==0.0.48.1, as jax[tpu]==0.11.2)"
)
pytestmark = pytest.mark.tpu
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # parallel test workers load libtpu

# Head dim 32 (the Pallas kernels take 32-256), short histories, GDPA + SWA + HSP kernels.
SMALL_PALLAS = [
    "data.num_eval=256",
    "data.synthetic.max_history=16",
    "data.synthetic.mean_history=6",
    "model.d_model=64",
    "model.num_heads=2",
    "model.kernels=pallas",
    "model.head_hidden=[32]",
    "model.streams.impression.d_model=64",
    "model.streams.impression.max_len=8",
    "train.batch_size=32",
    "mesh.data=2",
    "mesh.fsdp=2",
]


def test_compile_for_a_v5e_slice_reports_memory_flops_collectives_and_kernels(tmp_path, capsys):
    out, record = tmp_path / "report.json", tmp_path / "record.json"
    args = ["compile", "--config", "tiny", "--topology", "v5e:2x2", "--out", str(out)]
    args += ["--record", str(record)]
    assert main(args + [a for o in SMALL_PALLAS for a in ("--set", o)]) == 0
    text = capsys.readouterr().out
    assert "compiled for v5e:2x2 (4 x TPU v5 lite)" in text
    assert "compiled estimate: nothing was run" in text
    report = json.loads(out.read_text())
    assert report["kind"] == "compiled_estimate"
    assert report["mesh"] == {"data": 2, "fsdp": 2, "model": 1}
    mem = report["per_device_memory_bytes"]
    assert mem["argument"] > 0
    assert mem["temp"] > 0
    # XLA's FLOPs (per device x 4) and the analytic count agree to within the model's slack
    # (elementwise ops, padded attention blocks, optimizer).
    assert 0.8 < report["xla_over_analytic"] < 2.0
    # fsdp needs weight all-gathers and gradient reductions.
    assert report["collectives_per_device"]["all-reduce"]["count"] > 0
    assert report["collectives_per_device"]["all-gather"]["count"] > 0
    (compare_record,) = load(record, BENCH_SCHEMA)["records"]  # what `kunlun-jax compare` reads
    assert compare_record["overrides"] == list(SMALL_PALLAS)  # the record says how it was made
    kernels = set(report["mosaic_kernels"])
    assert {"gdpa_fwd_tpu", "gdpa_dq_tpu"} <= kernels, kernels


def test_collective_parser_counts_ops_and_bytes():
    hlo = """
  %all-reduce.1 = f32[64,16]{1,0} all-reduce(%x), replica_groups={}
  %ag = bf16[8,4]{1,0} all-gather(%y), dimensions={0}
  %ags = (f32[2]{0}, f32[8]{0}) all-gather-start(%z), dimensions={0}
  %agd = f32[8]{0} all-gather-done(%ags)
  %add = f32[4]{0} add(%a, %b)
  %ar = (f32[1]{0}, f32[2]{0}, f32[3]{0}, f32[4]{0}, f32[5]{0}, /*index=5*/f32[6]{0}) all-reduce(%t)
"""
    assert collectives(hlo) == {
        "all-reduce": {"count": 2, "bytes": 64 * 16 * 4 + (1 + 2 + 3 + 4 + 5 + 6) * 4},
        "all-gather": {"count": 2, "bytes": 8 * 4 * 2 + (2 + 8) * 4},
    }


@pytest.mark.parametrize("rng", ["rbg", "threefry"])
def test_a_sharded_tables_init_holds_the_whole_table_only_with_rbg(rng):
    """train.init_rng: XLA does not partition the "rbg" generator, so initializing a table
    whose rows are split over a v5e:2x2 slice makes each chip generate the whole table's bits
    (for the 244 MiB item table here: 247 MiB of temporaries; a 24 MiB table needed none);
    threefry (partitionable) generates each chip's rows only (5.7 MiB)."""
    from kunlun_jax.config import load_config
    from kunlun_jax.parallel.aot import tpu_devices
    from kunlun_jax.train.experiment import init_key, plan_config
    from pallas_kernels.common.target import compile_target

    devices = tpu_devices("v5e:2x2")
    sets = ["data.num_eval=256", "data.synthetic.num_items=2000000", "mesh.data=4"]
    config = load_config("tiny", [*sets, f"train.init_rng={rng}"])
    layout, example = plan_config(config, devices)
    table = max(jax.tree.leaves(layout.abstract_state.params), key=lambda x: x.size)  # items
    table_bytes = table.size * table.dtype.itemsize
    replicated = NamedSharding(layout.plan.mesh, PartitionSpec())
    key = jax.eval_shape(lambda: init_key(config.train))
    args = (
        jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=replicated),
        jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), example
        ),
    )
    with compile_target(devices[0]), layout.activate():
        compiled = layout.state_init().lower(*args).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    if rng == "rbg":
        assert temp >= table_bytes
    else:
        assert temp < table_bytes / 4
