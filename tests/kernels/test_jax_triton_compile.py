"""Our Triton kernels (GDPA, SWA) compiled to cubin for Ampere, Hopper and Blackwell on CPU.

Triton's compiler and its bundled ptxas need no GPU: `benchmarks.kernels.triton_cuda_resources`
builds the forward, dK/dV and dQ kernels for every GPU row of the GDPA and SWA tile tables at
the row's largest head dim, for the generations the row serves, and reads registers and spills
from ptxas. Two implementations: the Triton-language kernels (jax_triton) and the Pallas
Triton GDPA kernels (the GPU "auto" path), whose TTIR is taken from a lowering for a GPU of
the row's generation. A row fits when no MMA loop spills (no local-memory instruction in it)
and shared memory is within the generation's limit; this test found that the generic GDPA
rows spilled with 4 warps (now 8).
It runs in a subprocess: the suite's conftest sets TRITON_INTERPRET=1, under which
`@triton.jit` defines interpreter functions, which cannot be compiled.
"""

from __future__ import annotations

import json
import os

import pytest

from benchmarks.kernels.triton_cuda_resources import IMPLS, ROW_CAPABILITIES, gpu_rows
from pallas_kernels.common.cuda_limits import SHARED_LIMIT_BYTES
from tests.conftest import run_python

KERNELS = ("fwd", "dkdv", "dq")


def _compile_run(tmp_path, *argv: str) -> str:
    """stdout of `python *argv` with Triton compiling (TRITON_INTERPRET unset), on CPU."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env |= {"JAX_PLATFORMS": "cpu", "TRITON_CACHE_DIR": str(tmp_path / "triton-cache")}
    return run_python(*argv, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("impl", IMPLS)  # one compile run each: the test workers share them
def test_every_gpu_tile_row_compiles_within_shared_memory_and_without_loop_spills(tmp_path, impl):
    out = tmp_path / "resources.json"
    command = ["-m", "benchmarks.kernels.triton_cuda_resources", "--out", str(out)]
    _compile_run(tmp_path, *command, "--activations", "silu", "--impls", impl)
    results = json.loads(out.read_text())["results"]
    expected = {
        (impl, row.op, row.prefix, row.head_dim, row.regime, capability, kernel)
        for row in gpu_rows()
        if row.op == "gdpa" or impl == "jax_triton"  # SWA on GPU: tokamax, or ours by name
        for capability in ROW_CAPABILITIES[row.prefix]
        for kernel in KERNELS
    }
    keys = ("impl", "op", "device_prefix", "head_dim", "regime", "capability", "kernel")
    got = {tuple(r[key] for key in keys) for r in results}
    assert got == expected
    assert {r["op"] for r in results} == ({"gdpa", "swa"} if impl == "jax_triton" else {"gdpa"})
    assert {r["capability"] for r in results} == {80, 90, 100}
    for r in results:
        row = f"{r['impl']} {r['op']} {r['device_prefix'] or 'any GPU'} D={r['head_dim']}"
        row += f" {r['regime']}"
        what = f"{row} sm_{r['capability']} {r['kernel']}"
        assert r["cubin_bytes"] > 0, what
        assert 0 < r["registers"] <= 255, what
        loop_spills = [loop["local_memory"] for loop in r["loops_per_score"]]
        assert not any(loop_spills), f"{what}: spill instructions in its MMA loops {loop_spills}"
        assert r["shared_bytes"] <= SHARED_LIMIT_BYTES[r["capability"]], f"{what}: shared memory"
        assert r["fits"], what
    # On Blackwell Triton keeps the forward's MMA accumulators in tensor memory (tcgen05).
    assert all(
        r["tensor_memory_columns"] > 0
        for r in results
        if r["capability"] == 100 and r["kernel"] == "fwd"
    )
    for r in results:
        what = f"{r['impl']} {r['op']} D={r['head_dim']} {r['regime']} sm_{r['capability']}"
        what += f" {r['kernel']}"
        for loop in r["loops_per_score"]:
            useful = loop["mma_useful_fraction"]
            assert useful is None or 0 < useful <= 1.0, what  # no loop beats its tile's MMAs
            if r["capability"] != 90 or r["head_dim"] > 128:
                continue
            # Hopper rows up to D=128: no warpgroup repeats another's MMAs or activations (the
            # D=256 backward does, see gdpa.tuning), one MUFU per score: tanh.approx for GDPA's
            # silu (σ shared by Act and Act'), ex2 for SWA's softmax (+ per-row rescales).
            assert useful == 1.0, what
            mufu = loop["mufu"]
            assert mufu == 1.0 if r["op"] == "gdpa" else 1.0 <= mufu <= 1.1, f"{what}: {mufu}"


# Compiles GDPA kernels of one row with and without FAST_TANH and prints the MUFU instructions of
# their main loops: silu's three kernels, and the dK/dV kernel (which evaluates both Act and
# Act') of sigmoid and gelu_tanh.
_MUFU_SCRIPT = """
import dataclasses, json
from benchmarks.kernels.triton_cuda_resources import gpu_rows, row_launches
from pallas_kernels.common.triton_compile import compile_for_cuda
row = next(r for r in gpu_rows() if (r.op, r.prefix, r.head_dim, r.regime)
           == ("gdpa", "NVIDIA H", 128, "long"))
mufu = {}
for act, kernels in (("silu", ("fwd", "dkdv", "dq")), ("sigmoid", ("dkdv",)),
                     ("gelu_tanh", ("dkdv",))):  # FAST_TANH must leave gelu_tanh exact
    launches = row_launches(row, act)
    for kernel in kernels:
        for fast in (True, False):
            c = {**launches[kernel].constexprs, "FAST_TANH": fast}
            binary = compile_for_cuda(dataclasses.replace(launches[kernel], constexprs=c), 90)
            mufu[f"{act} {kernel} {fast}"] = [loop.mufu for loop in binary.loops]
print(json.dumps(mufu))
"""


@pytest.mark.slow
def test_the_hardware_tanh_halves_the_special_function_instructions(tmp_path):
    """σ as 1 / (1 + e^-x) is two MUFU instructions (ex2, rcp), through tanh.approx one: every
    silu kernel of the Hopper D=128 row, and sigmoid's dK/dV (Act and Act'). gelu_tanh keeps its
    exact tanh."""
    mufu = json.loads(_compile_run(tmp_path, "-c", _MUFU_SCRIPT).splitlines()[-1])
    for act, kernel in [("silu", k) for k in KERNELS] + [("sigmoid", "dkdv")]:
        fast, exact = mufu[f"{act} {kernel} True"], mufu[f"{act} {kernel} False"]
        assert all(fast), (act, kernel)
        assert exact == [2 * n for n in fast], (act, kernel, fast, exact)
    gelu_tanh = mufu["gelu_tanh dkdv True"]
    assert all(gelu_tanh)
    assert gelu_tanh == mufu["gelu_tanh dkdv False"]
