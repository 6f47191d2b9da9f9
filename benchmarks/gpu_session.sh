#!/usr/bin/env bash
# A GPU session in one device call, from the repo root on the device image (jax 0.11.2 + CUDA
# preinstalled): installs the carried wheels (.device/wheels, made here by
# benchmarks/device_wheels.sh; GPU_SESSION_WHEELS names another folder) into /tmp/site, puts them and this checkout on PYTHONPATH (no
# build, nothing to download), stops at once if grain or tokamax does not import, and runs
# benchmarks/gpu_session.py, which runs its stages (preflight, tests, gdpa, swa, hsp, bench,
# tune, tune_mosaic) in that order under a wall-clock budget and writes session.json,
# <stage>.log and the JSON results into a work directory (GPU_SESSION_WORK, default
# /tmp/gpu_session).
#
#   benchmarks/gpu_session.sh OUT [--budget-s 540] [--stages gdpa swa ...]
#
# The device tool returns at most 8 files from its $OUT, so OUT gets two: gpu_session.tar.gz
# (the whole work directory, repacked after every stage) and session.json. Unpack the archive
# here (`tar xzf gpu_session.tar.gz -C DIR`), copy the results into benchmarks/results/ and
# commit them with the tests stage's log.
set -euo pipefail
out=${1:?usage: benchmarks/gpu_session.sh OUT [gpu_session.py arguments]}
shift
work=${GPU_SESSION_WORK:-/tmp/gpu_session}
mkdir -p "$out" "$work"
# install SITE WHEEL...: into SITE, put first on PYTHONPATH; a failure returns its log in OUT
install() {
  local site=$1
  shift
  if ! python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "$@" >>"$work/install.log" 2>&1; then
    echo "installing the carried wheels failed:" >&2
    tail -5 "$work/install.log" >&2
    cp "$work/install.log" "$out/"
    exit 3
  fi
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
}
wheels=${GPU_SESSION_WHEELS:-.device/wheels}
if [ -d "$wheels" ]; then
  install /tmp/site "$wheels"/*.whl
fi
# jax-triton for the image's triton (device_wheels.sh carries two, in jax-triton/ beside the
# wheels): 0.4 needs triton >= 3.7, 0.3.1 takes 3.6. Without a match the jax_triton rows fail
# one by one, recorded (preflight).
newer='import sys, triton; sys.exit(tuple(map(int, triton.__version__.split(".")[:2])) < (3, 7))'
series=$(python3 -c "$newer" 2>/dev/null && echo 0.4 || echo 0.3)
jax_triton_wheels=$(dirname "$wheels")/jax-triton
jax_triton=$(ls "$jax_triton_wheels"/jax_triton-"$series".*.whl 2>/dev/null | head -1 || true)
if [ -n "$jax_triton" ]; then
  install /tmp/site-jax-triton "$jax_triton"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# The commit the results name (kunlun_jax/provenance.py), as device_wheels.sh recorded it.
if [ -z "${KUNLUN_JAX_COMMIT:-}" ] && [ -f .device/commit ]; then
  export KUNLUN_JAX_COMMIT="$(cat .device/commit)"
fi
if ! python3 -c "import grain, tokamax" 2>"$work/imports.log"; then
  echo "grain / tokamax do not import (a wheel missing from .device/wheels?):" >&2
  tail -5 "$work/imports.log" >&2
  cp "$work/imports.log" "$out/"
  exit 3
fi
{
  nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv || true
  python3 -m pip list 2>/dev/null | grep -iE '^(jax|jaxlib|jax-cuda[0-9]+-(plugin|pjrt)|flax|optax|orbax-checkpoint|tokamax|triton|jax-triton|grain|nvidia-cudnn-cu[0-9]+) ' || true
} >"$work/device.txt"
python3 -m benchmarks.gpu_session --out "$work" --archive "$out/gpu_session.tar.gz" "$@"
cp "$work/session.json" "$out/"
