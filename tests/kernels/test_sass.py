"""`common/sass.py` on hand-written SASS listings in nvdisasm's format: which loops are MMA
loops and what their instruction mixes and MMA FLOPs are. (Compiled kernels:
test_jax_triton_compile.py.)
"""

from __future__ import annotations

import pytest

from pallas_kernels.common.sass import mma_loops


def _listing(*body: str) -> str:
    """An nvdisasm-style listing: one instruction per line with its address, labels alone."""
    lines, address = [], 0
    for item in body:
        if item.startswith(".L_x_"):
            lines.append(f"{item}:")
        else:
            lines.append(f"        /*{address:04x}*/                   {item} ;")
            address += 16
    return "\n".join(lines)


PROLOGUE = ("S2R R0, SR_TID.X", "@!P0 BRA `(.L_x_9)")
MMA_LOOP = (
    ".L_x_1",
    "HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], RZ, !UPT, gsb0",
    "HGMMA.64x128x16.F32.BF16 R88, R56, gdesc[UR8], R88, gsb0",
    "MUFU.TANH R3, R2",
    "@P1 MUFU.EX2 R4, R3",
    "FMUL R5, R4, 0.5",
    "@P0 BRA `(.L_x_1)",
)
COPY_LOOP = tuple(
    [".L_x_2", *("LDG.E R6, desc[UR4][R2.64]" for _ in range(12)), "@P2 BRA `(.L_x_2)"]
)


def test_only_loops_with_mma_instructions_count():
    """A longer loop without MMAs (an epilogue copy) is not an MMA loop; forward branches and
    instructions outside the loop do not count."""
    (mix,) = mma_loops(_listing(*PROLOGUE, *MMA_LOOP, *COPY_LOOP, ".L_x_9", "EXIT"), 8)
    assert mix.instructions == 6  # the loop's label line is not an instruction
    assert mix.mufu == 2  # predicated instructions count
    # Each of the 2 warpgroups of 8 warps issues both HGMMAs: 2·(64·64·16 + 64·128·16)·2.
    assert mix.mma_flops == 2 * (2 * 64 * 64 * 16 + 2 * 64 * 128 * 16)


def test_every_mma_loop_in_program_order():
    """An unmasked loop over wholly visible blocks, then a masked one (two more instructions)."""
    masked = (".L_x_3", *MMA_LOOP[1:-1], "FSEL R5, R5, RZ, P3", "FSEL R6, R6, RZ, P3")
    listing = _listing(*MMA_LOOP, *masked, "@P0 BRA `(.L_x_3)")
    assert [mix.instructions for mix in mma_loops(listing, 4)] == [6, 8]


def test_mma_sync_is_issued_per_warp():
    loop = (".L_x_1", "HMMA.16816.F32.BF16 R4, R8, R12, R4", "@P0 BRA `(.L_x_1)")
    assert mma_loops(_listing(*loop), 4)[0].mma_flops == 4 * 2 * 16 * 8 * 16


def test_without_a_loop_the_whole_kernel_is_one_iteration():
    """A kernel whose only stream block was unrolled away (one K/V block)."""
    body = ("HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], RZ", "MUFU.RCP R1, R0", "EXIT")
    (mix,) = mma_loops(_listing(*body, *COPY_LOOP), 4)
    assert (mix.instructions, mix.mufu, mix.mma_flops) == (16, 1, 2 * 64 * 64 * 16)


def test_spill_traffic_counts_only_inside_the_loop():
    """A register spilled before the loop and reloaded after it (STL / LDL outside) costs no
    loop instruction; one reloaded every iteration does."""
    spill_around = ("STL [R1], R212", *MMA_LOOP, "LDL.LU R210, [R1]")
    assert mma_loops(_listing(*spill_around), 8)[0].local_memory == 0
    inside = (*MMA_LOOP[:-1], "LDL R7, [R1+0x8]", "STL [R1+0x8], R7", MMA_LOOP[-1])
    (mix,) = mma_loops(_listing(*inside), 8)
    assert (mix.local_memory, mix.instructions) == (2, 8)


@pytest.mark.parametrize("opcode", ["UTCHMMA gdesc[UR4], gdesc[UR6], tmem[UR8]", "UTCQMMA x"])
def test_tcgen05_mma_flops_are_unknown(opcode):
    """Blackwell MMAs keep their shape in a descriptor, so their FLOPs are not counted."""
    loop = (".L_x_1", opcode, "MUFU.TANH R3, R2", "@P0 BRA `(.L_x_1)")
    (mix,) = mma_loops(_listing(*loop), 4)
    assert (mix.mufu, mix.mma_flops) == (1, None)
