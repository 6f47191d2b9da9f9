"""The TPU schedule reader (`common/llo.py`) and what it shows of the Mosaic-TPU GDPA kernels.

The parser is checked on a hand-written listing. With libtpu, a subprocess (LIBTPU_INIT_ARGS
is read when libtpu loads) compiles the GDPA forward for deviceless v5e and v6e chips with the
schedule dumps on: before v6 the 16-bit silu tile evaluates σ through vtanh, with no
reciprocal; on v6e through the one-push sigmoid. The benchmark's guard against programs whose
large arrays XLA placed in VMEM is checked on an HLO snippet.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from benchmarks.kernels.tpu_bundles import vmem_arrays
from pallas_kernels.common import llo
from pallas_kernels.common.tpu import sigmoid_via_tanh

LISTING = """\
= control target key start
LB: loop body
= control target key end

     0   :  { %s1_s0 = smov 0 }
   0x1 LB: > { %v2_v0 = vld [vmem:[%s1_s0] sm:$0xff]  ;;  %3 = vmatmul.bf16.gmra.mxu0 %v2_v0 }
   0x2   : > { %4 = vmatmul.bf16.gmra.mxu1 %v2_v0 /* a comment
over two lines */ }
   0x3   : > { %5 = vmatmul.bf16.gmra.mxu0 %v2_v0  ;;  %v6_v1 = vpop.f32.mrf.mxu0 }
   0x4   : > { %7 = sbr.rel (%p1_p0) target = $region2 }
   0x5 PF:  { %v8_v2 = vadd.f32 %v6_v1, %v6_v1 }
"""
UTILIZATION = """\
== CAPACTIY:
MXU, VALU, VPOP, VLOAD
    4     4     2     3
== UTILIZATION:
0 0 0 0
1 0 0 3
1 0 0 1
1 0 1 0
0 0 0 0
0 1 0 0
"""


def test_mxu_blocks_of_a_listing():
    (block,) = llo.mxu_blocks(llo.parse_bundles(LISTING), UTILIZATION)
    assert (block.first, block.bundles) == (1, 4)  # bundles 0x1..0x4: the loop body to its branch
    assert block.pushes == {0: 2, 1: 1}
    assert block.load == {"MXU": 3, "VALU": 0, "VPOP": 1, "VLOAD": 4}
    assert block.opcodes["vmatmul.bf16.gmra.mxu0"] == 2
    assert block.opcodes["sbr.rel"] == 1
    assert [block.unit_bundles(u) for u in ("MXU", "VALU", "VPOP", "VLOAD")] == [1, 0, 1, 2]
    assert block.busiest_unit() == "VLOAD"


def test_a_utilization_of_another_listing_is_refused():
    with pytest.raises(ValueError, match="6 bundles but 5 utilization rows"):
        llo.mxu_blocks(llo.parse_bundles(LISTING), UTILIZATION.rsplit("0 1 0 0", 1)[0])


# A grid loop: a step's bookkeeping (0x1-0x2), a region it may skip (0x3: say, the first
# step's init), two tile variants each behind its own branch (0x5-0x6, 0x8), and the
# backward branch (0x9).
LOOP = """\
     0   :  { %s1_s0 = smov 0 } /* Start region 1 */
   0x1 LB: > { %s2_s1 = sadd.s32 1, %s1_s0 } /* Start region 5 */
   0x2   : > { %3 = sbr.rel (%p1_p0) target = $region3 }
   0x3   : > { %4 = vst [vmem:[%s2_s1] sm:$0xff] %v0_v0 }
   0x4 PF: > { %5 = sbr.rel (%p2_p1) target = $region7 } /* Start region 3 */
   0x5   : > { %6 = vmatmul.bf16.gmra.mxu0 %v0_v0 }
   0x6   : > { %7 = vmatmul.bf16.gmra.mxu1 %v0_v0 }
   0x7 PF: > { %8 = sbr.rel (%p3_p2) target = $region9 } /* Start region 7 */
   0x8   : > { %9 = vmatmul.bf16.gmra.mxu0 %v0_v0  ;;  %10 = vsel %vm0_vm0, %v0_v0, %v1_v1 }
   0x9 PF: > { %11 = sbr.rel (%p4_p3) target = $region5 } /* Start region 9 */
   0xa   :  { %s12_s2 = smov 1 }
"""


def test_fewest_bundles_of_a_grid_step():
    bundles = llo.parse_bundles(LOOP)
    first, second = 5, 8  # the two tile variants
    # Every trip: 0x1-0x2, 0x4, 0x7, 0x9 (5 bundles); the skippable 0x3 is left out.
    assert llo.fewest_step_bundles(bundles, first, via=first, avoid=(second,)) == 7
    assert llo.fewest_step_bundles(bundles, first, via=second, avoid=(first,)) == 6
    assert llo.fewest_step_bundles(bundles, first, via=None, avoid=(first, second)) == 5
    with pytest.raises(ValueError, match="in no loop"):
        llo.fewest_step_bundles(bundles, 0)


def test_arrays_placed_in_vmem_are_found():
    """The benchmark refuses programs whose large arrays XLA put in VMEM (memory space S(1)):
    there the kernels' block DMAs are vector copies the step path would skip."""
    hlo = (
        "%fwd = (bf16[4,4096,512]{2,1,0:T(8,128)(2,1)S(1)}, f32[4,4,1,4096]{3,2,1,0:T(1,128)"
        "S(1)}) custom-call(s32[4]{0:S(1)} %a, bf16[32,4096,512]{2,1,0:T(8,128)(2,1)} %q)"
    )
    assert vmem_arrays(hlo) == ["bf16[4,4096,512]"]  # 16 MiB; the 256 KiB lse row is allowed
    assert vmem_arrays("f32[64,4,1,4096]{3,2,1,0:T(1,128)S(1)}") == []  # 4 MiB of lse rows
    assert vmem_arrays(hlo.replace("S(1)", "")) == []


def test_which_tpus_take_the_tanh_sigmoid():
    assert all(map(sigmoid_via_tanh, ["TPU v4", "TPU v5 lite", "TPU v5", "TPU v5p"]))
    assert not any(map(sigmoid_via_tanh, ["TPU v6 lite", "TPU7x", "cpu", "NVIDIA H100"]))


_COMPILE = textwrap.dedent(
    """
    import json, os, sys, tempfile
    from pathlib import Path
    dump = Path(tempfile.mkdtemp())
    os.environ["LIBTPU_INIT_ARGS"] = f"--xla_jf_dump_to={dump} --xla_jf_dump_llo_text=true"
    import jax, jax.numpy as jnp, numpy as np
    from jax.experimental import topologies
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    from pallas_kernels.common import llo
    from pallas_kernels.common.target import compile_target
    from pallas_kernels.gdpa import gdpa
    out = {}
    for name in ("v5e:2x2", "v6e:2x2"):
        for stale in dump.iterdir():
            stale.unlink()
        tpu = topologies.get_topology_desc(topology_name=name, platform="tpu").devices[0]
        rep = NamedSharding(Mesh(np.array([tpu]), ("x",)), PartitionSpec())
        x = jax.ShapeDtypeStruct((1, 512, 1, 128), jnp.bfloat16, sharding=rep)
        with compile_target(tpu):
            f = jax.jit(lambda q: gdpa(q, q, q, activation="silu", backend="pallas"))
            f.lower(x).compile()
        ((listing, utilization),) = llo.kernel_dumps(dump, "gdpa_fwd_tpu")
        blocks = llo.mxu_blocks(llo.parse_bundles(listing), utilization)
        out[name] = [sorted(b.opcodes) for b in blocks]
    print(json.dumps(out))
    """
)


@pytest.mark.tpu
def test_the_silu_tile_takes_the_cheap_sigmoid_of_each_tpu():
    pytest.importorskip("libtpu", reason="libtpu not installed (pip install libtpu==0.0.48.1)")
    env = dict(os.environ, ALLOW_MULTIPLE_LIBTPU_LOAD="1", JAX_PLATFORMS="")
    run = subprocess.run(
        [sys.executable, "-c", _COMPILE], capture_output=True, text=True, env=env, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    blocks = json.loads(run.stdout.splitlines()[-1])
    for chip, has, lacks in [("v5e:2x2", "vtanh", "vrcp"), ("v6e:2x2", "vsigshft", "vtanh")]:
        assert blocks[chip], f"no MXU block in the {chip} schedule"
        for opcodes in blocks[chip]:
            names = " ".join(opcodes)
            assert has in names, (chip, opcodes)
            assert lacks not in names, (chip, opcodes)
