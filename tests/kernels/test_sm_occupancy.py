"""`sm_occupancy`: the CUDA occupancy calculator's count of blocks an SM holds, each limit
binding in turn."""

from __future__ import annotations

import pytest

from pallas_kernels.common.cuda_limits import sm_occupancy

KIB = 1024


@pytest.mark.parametrize(
    ("args", "blocks", "limit"),
    [
        ((90, 384, 168, 224 * KIB), 1, "shared memory and registers: a 3-warpgroup Hopper kernel"),
        ((90, 128, 64, 100 * KIB), 2, "shared memory: 228 KiB over 100 + 1 KiB"),
        ((80, 128, 64, 100 * KIB), 1, "shared memory: sm_80 has 164 KiB"),
        ((90, 256, 250, 0), 1, "registers: 250 rounds up to 256, x 256 threads"),
        ((90, 128, 1, 0), 16, "threads: 2048 a SM"),
        ((90, 32, 1, 0), 32, "the 32-block limit"),
        ((100, 128, 114, 112 * KIB, 192), 2, "TMEM: 192 columns take 256 of 512"),
        ((100, 128, 32, 16 * KIB, 300), 1, "TMEM: 300 columns take all 512"),
        ((100, 64, 32, 0, 16), 16, "TMEM: 16 columns take 32 (without that minimum: 32)"),
    ],
)
def test_each_limit_binds(args, blocks, limit):
    assert sm_occupancy(*args) == blocks, limit
