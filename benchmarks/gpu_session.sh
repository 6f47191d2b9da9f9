#!/usr/bin/env bash
# A GPU session in one device call, from the repo root on the device image (jax 0.11.2 + CUDA
# preinstalled): installs the carried wheels (.device/wheels, see ../shared/notes/gpu-runs.md),
# puts this checkout on PYTHONPATH (no build, nothing to download) and runs
# benchmarks/gpu_session.py, which runs the stages tests, gdpa, swa, hsp, bench, tune in that order
# under a wall-clock budget and writes OUT/session.json, OUT/<stage>.log and the JSON results.
#
#   benchmarks/gpu_session.sh OUT [--budget-s 480] [--stages gdpa swa ...]
#
# Copy the results into benchmarks/results/ and commit them with the tests stage's log.
set -euo pipefail
out=${1:?usage: benchmarks/gpu_session.sh OUT [gpu_session.py arguments]}
shift
mkdir -p "$out"
if [ -d .device/wheels ]; then
  python3 -m pip install -q --no-deps .device/wheels/*.whl
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{
  nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv || true
  python3 -m pip list 2>/dev/null | grep -iE '^(jax|jaxlib|jax-cuda[0-9]+-(plugin|pjrt)|flax|optax|orbax-checkpoint|tokamax|triton|jax-triton|grain|nvidia-cudnn-cu[0-9]+) ' || true
} >"$out/device.txt"
python3 -m benchmarks.gpu_session --out "$out" "$@"
