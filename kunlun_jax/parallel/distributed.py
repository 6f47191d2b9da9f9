"""Multi-host setup: process initialization and which rows of a global batch a host reads.

One process per host (GPU cluster node or TPU VM). Every process runs the same command;
`jax.distributed.initialize` connects them (on Cloud TPU and under SLURM / Open MPI the
coordinator is detected from the environment). Each host then reads only its rows of every
global batch and `jax.make_array_from_process_local_data` assembles the global array.
"""

from __future__ import annotations

import time

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Sharding


def initialize(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
    """Joins this process to the job (must run before any other jax call); arguments left
    None are detected from the environment (TPU pods, SLURM, Open MPI)."""
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )


def host_rows(sharding: Sharding, global_rows: int) -> np.ndarray:
    """The rows (int64 indices, ascending) of a [global_rows, ...] array whose shards live on
    this process's devices under `sharding`: all of them when the batch is not split across
    processes. A topology-ordered TPU mesh can give a process several separate spans; this
    process's data is their rows in this order, which is how
    `jax.make_array_from_process_local_data` maps it onto the shards."""
    spans = sorted(
        {
            idx[0].indices(global_rows)[:2]
            for idx in sharding.addressable_devices_indices_map((global_rows,)).values()
        }
    )
    if not spans:
        raise ValueError(
            f"process {jax.process_index()} has no device in the mesh: with several processes "
            "the mesh must use every device (mesh axes multiplying to jax.device_count())"
        )
    return np.concatenate([np.arange(start, stop) for start, stop in spans])


def to_host(x: jax.Array) -> np.ndarray:
    """A global array as one numpy array on every host (gathered across processes)."""
    if jax.process_count() == 1:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def processes_where(flag: bool) -> list[int]:
    """The processes whose `flag` is true, the same list on every host (a collective call
    when multi-process: every process must make it)."""
    if jax.process_count() == 1:
        return [0] if flag else []
    flags = multihost_utils.process_allgather(np.asarray(flag))
    return [int(i) for i in np.flatnonzero(flags)]


def any_process(flag: bool) -> bool:
    """True on every host if `flag` is true on any host (e.g. a preemption signal)."""
    return bool(processes_where(flag))


def run_stamp() -> str:
    """Process 0's clock as "YYYYmmdd-HHMMSS" (UTC), the same string on every process: the
    default run and study names (each host's own clock or time zone could name another)."""
    now = np.int64(time.time())
    if jax.process_count() > 1:
        now = multihost_utils.broadcast_one_to_all(now)
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(int(now)))
