#!/usr/bin/env bash
# A GPU session in one device call, from the repo root on the device image (jax 0.11.2 + CUDA
# preinstalled): installs the carried wheels (.device/wheels, made here by
# benchmarks/device_wheels.sh) into /tmp/site, puts them and this checkout on PYTHONPATH (no
# build, nothing to download), stops at once if grain or tokamax does not import, and runs
# benchmarks/gpu_session.py, which runs its stages (preflight, tests, gdpa, swa, hsp, bench,
# tune, tune_mosaic) in that order under a wall-clock budget and writes OUT/session.json,
# OUT/<stage>.log and the JSON results.
#
#   benchmarks/gpu_session.sh OUT [--budget-s 480] [--stages gdpa swa ...]
#
# Copy the results into benchmarks/results/ and commit them with the tests stage's log.
set -euo pipefail
out=${1:?usage: benchmarks/gpu_session.sh OUT [gpu_session.py arguments]}
shift
mkdir -p "$out"
site=/tmp/site
if [ -d .device/wheels ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" .device/wheels/*.whl
fi
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
if ! python3 -c "import grain, tokamax" 2>"$out/imports.log"; then
  echo "grain / tokamax do not import (a wheel missing from .device/wheels?):" >&2
  tail -5 "$out/imports.log" >&2
  exit 3
fi
{
  nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv || true
  python3 -m pip list 2>/dev/null | grep -iE '^(jax|jaxlib|jax-cuda[0-9]+-(plugin|pjrt)|flax|optax|orbax-checkpoint|tokamax|triton|jax-triton|grain|nvidia-cudnn-cu[0-9]+) ' || true
} >"$out/device.txt"
python3 -m benchmarks.gpu_session --out "$out" "$@"
