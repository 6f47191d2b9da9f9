"""Our Triton-language kernels (GDPA, SWA) compiled to cubin for Ampere, Hopper and Blackwell on
CPU.

Triton's compiler and its bundled ptxas need no GPU: `benchmarks.kernels.triton_cuda_resources`
builds the forward, dK/dV and dQ kernels for every GPU row of the GDPA and SWA tile tables at
the row's largest head dim, for the generations the row serves, and reads registers and spills
from ptxas. A row fits when nothing spills and shared memory is within the generation's limit;
this test found that the generic GDPA rows spilled with 4 warps (now 8). It runs in a
subprocess: the suite's conftest sets TRITON_INTERPRET=1, under which `@triton.jit` defines
interpreter functions, which cannot be compiled.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from benchmarks.kernels.triton_cuda_resources import (
    ROW_CAPABILITIES,
    SHARED_LIMIT_BYTES,
    gpu_rows,
)
from tests.kernels.helpers import REPO

KERNELS = ("fwd", "dkdv", "dq")


def test_every_gpu_tile_row_compiles_within_shared_memory_and_without_spills(tmp_path):
    out = tmp_path / "resources.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env |= {"JAX_PLATFORMS": "cpu", "TRITON_CACHE_DIR": str(tmp_path / "triton-cache")}
    command = ["-m", "benchmarks.kernels.triton_cuda_resources", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, *command, "--activations", "silu"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    expected = {
        (row.op, row.prefix, row.head_dim, row.regime, capability, kernel)
        for row in gpu_rows()
        for capability in ROW_CAPABILITIES[row.prefix]
        for kernel in KERNELS
    }
    got = {
        (r["op"], r["device_prefix"], r["head_dim"], r["regime"], r["capability"], r["kernel"])
        for r in results
    }
    assert got == expected
    assert {r["op"] for r in results} == {"gdpa", "swa"}
    assert {r["capability"] for r in results} == {80, 90, 100}
    for r in results:
        row = f"{r['op']} {r['device_prefix'] or 'any GPU'} D={r['head_dim']} {r['regime']}"
        what = f"{row} sm_{r['capability']} {r['kernel']}"
        assert r["cubin_bytes"] > 0, what
        assert 0 < r["registers"] <= 255, what
        assert r["spill_bytes"] == 0, f"{what}: {r['spill_bytes']} bytes of register spills"
        assert r["shared_bytes"] <= SHARED_LIMIT_BYTES[r["capability"]], f"{what}: shared memory"
        assert r["fits"], what
    # On Blackwell Triton keeps the forward's MMA accumulators in tensor memory (tcgen05).
    assert all(
        r["tensor_memory_columns"] > 0
        for r in results
        if r["capability"] == 100 and r["kernel"] == "fwd"
    )
