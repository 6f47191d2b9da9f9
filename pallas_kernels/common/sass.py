"""The MMA loops of a compiled CUDA kernel read from its SASS: instruction mix and MMA work.

`nvdisasm` (bundled with Triton, no GPU needed) disassembles a cubin. An MMA loop is a loop
(backward branch) with MMA instructions in it: an attention kernel's loops over the streamed
blocks (e.g. one over wholly visible blocks, one over masked ones), or the whole kernel where
the compiler removed them (one streamed block, e.g. the short-K/V forward). Per iteration each
reports the instructions one thread issues, how many of them are special-function (MUFU: ex2,
rcp, tanh, ...) instructions, which share 16 results per clock per SM on Hopper, how many are
local-memory loads and stores (LDL / STL: register spills inside the loop), and the
tensor-core FLOPs the program's MMA instructions execute: HGMMA.MxNxK (sm_90 wgmma, one per
warpgroup) and HMMA.MNK (mma.sync, one per warp).
Comparing those FLOPs with the tile's own exposes MMAs that several warpgroups repeat.
Blackwell's tcgen05 MMAs carry their shape in a descriptor, not the opcode: counted as None.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import tempfile
from pathlib import Path

_INSTRUCTION = re.compile(r"\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T\d]+\s+)?([A-Z][A-Za-z0-9_.]*)")
_LABEL = re.compile(r"\s*(\.L_x_\d+):")
_BRANCH = re.compile(r"\bBRA\b.*`\((\.L_x_\d+)\)")
_HGMMA = re.compile(r"^HGMMA\.(\d+)x(\d+)x(\d+)")
_HMMA = re.compile(r"^HMMA\.(\d\d)(\d)(\d+)")  # HMMA.16816: m16 n8 k16
_TCGEN05_MMA = re.compile(r"^UTC\w*MMA")


@dataclasses.dataclass(frozen=True)
class LoopMix:
    """One iteration of a kernel's main loop."""

    instructions: int  # SASS instructions a thread issues
    mufu: int  # of which special-function (MUFU.*) instructions
    mma_flops: int | None  # tensor-core FLOPs of the program's MMAs (None: tcgen05)
    local_memory: int = 0  # of which local-memory loads/stores (LDL/STL: register spills)


def disassemble(cubin: bytes, nvdisasm: str) -> str:
    """The SASS listing of `cubin` (`nvdisasm -c`: code sections only)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        return subprocess.run(
            [nvdisasm, "-c", str(path)], capture_output=True, text=True, check=True
        ).stdout


def mma_loops(sass: str, num_warps: int) -> tuple[LoopMix, ...]:
    """The instruction mix of each MMA loop of a SASS listing in program order, or of the
    whole listing if no loop has MMAs (see the module docstring)."""
    lines = sass.splitlines()
    labels = {m[1]: i for i, line in enumerate(lines) if (m := _LABEL.match(line))}
    loops = [
        _opcodes(lines[labels[m[1]] : i + 1])
        for i, line in enumerate(lines)
        if (m := _BRANCH.search(line)) and labels.get(m[1], i) < i
    ]
    loops = [loop for loop in loops if any(map(is_mma, loop))] or [_opcodes(lines)]
    return tuple(
        LoopMix(
            instructions=len(opcodes),
            mufu=sum(op.startswith("MUFU.") for op in opcodes),
            mma_flops=_mma_flops(opcodes, num_warps),
            local_memory=sum(op.startswith(("LDL", "STL")) for op in opcodes),
        )
        for opcodes in loops
    )


def opcodes(listing: str) -> list[str]:
    """The opcodes of a SASS listing's instructions, in order (predicates dropped)."""
    return _opcodes(listing.splitlines())


def _opcodes(lines: list[str]) -> list[str]:
    return [m[1] for line in lines if (m := _INSTRUCTION.match(line))]


def is_mma(opcode: str) -> bool:
    """Whether an opcode is a tensor-core MMA: HGMMA, HMMA or a tcgen05 UTC*MMA."""
    return any(p.match(opcode) for p in (_HGMMA, _HMMA, _TCGEN05_MMA))


def _mma_flops(opcodes: list[str], num_warps: int) -> int | None:
    if any(_TCGEN05_MMA.match(op) for op in opcodes):
        return None
    flops = 0
    for op in opcodes:
        if m := _HGMMA.match(op):  # issued by each warpgroup
            flops += 2 * int(m[1]) * int(m[2]) * int(m[3]) * (num_warps // 4)
        elif m := _HMMA.match(op):  # issued by each warp
            flops += 2 * int(m[1]) * int(m[2]) * int(m[3]) * num_warps
    return flops
