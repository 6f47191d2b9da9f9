"""Per-generation CUDA hardware limits (CUDA programming guide, compute capabilities table),
keyed by compute capability as Triton names it (90: sm_90), and the occupancy they allow: what
the static checks of compiled GPU kernels hold them to (benchmarks/kernels/
triton_cuda_resources.py, mosaic_gpu_resources.py)."""

from __future__ import annotations

# Opt-in shared memory per thread block.
SHARED_LIMIT_BYTES = {80: 163 * 1024, 90: 227 * 1024, 100: 227 * 1024}
# Per SM: shared memory, 32-bit registers, threads, resident blocks.
SM_SHARED_BYTES = {80: 164 * 1024, 90: 228 * 1024, 100: 228 * 1024}
SM_REGISTERS, SM_THREADS, SM_BLOCKS = 65536, 2048, 32
SM_TMEM_COLUMNS = 512  # sm_100 tensor memory: 128 lanes x 512 fp32 columns


def sm_occupancy(
    capability: int, threads: int, registers: int, shared_bytes: int, tensor_memory_columns=0
) -> int:
    """Blocks one SM holds at once, as the CUDA occupancy calculator counts them: shared
    memory (1 KiB reserved per block), registers (allocated per warp, 8-register granules),
    threads, the block limit, and Blackwell's 512 tensor-memory columns (allocated in powers
    of two, at least 32)."""
    limits = [
        SM_SHARED_BYTES[capability] // (shared_bytes + 1024),
        SM_REGISTERS // (-(-registers // 8) * 8 * threads),
        SM_THREADS // threads,
        SM_BLOCKS,
    ]
    if tensor_memory_columns:
        limits.append(SM_TMEM_COLUMNS // max(32, 1 << (tensor_memory_columns - 1).bit_length()))
    return min(limits)
