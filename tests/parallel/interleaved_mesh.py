"""`python -m tests.parallel.interleaved_mesh <kunlun-jax CLI arguments>`: the CLI with the
mesh's devices interleaved across processes along its axes ([p0d0, p1d0, p0d1, p1d1]), as a
topology-ordered TPU mesh places them, so each process holds several separate spans of every
batch (`distributed.host_rows`). Prints the mesh's process order. For test_multiprocess.py."""

from __future__ import annotations

import sys

import jax

import kunlun_jax.parallel.sharding as sharding
import kunlun_jax.train.experiment as experiment
from kunlun_jax.cli import main

_make_mesh = sharding.make_mesh


def interleaved_mesh(cfg, devices=None):
    devices = list(jax.devices() if devices is None else devices)
    rank = {d: [e for e in devices if e.process_index == d.process_index].index(d) for d in devices}
    devices.sort(key=lambda d: (rank[d], d.process_index))
    mesh = _make_mesh(cfg, devices)
    print(f"mesh processes: {[d.process_index for d in mesh.devices.flat]}", flush=True)
    return mesh


if __name__ == "__main__":
    experiment.make_mesh = interleaved_mesh  # what build_experiment calls
    sys.exit(main(sys.argv[1:]))
