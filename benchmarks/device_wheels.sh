#!/usr/bin/env bash
# The wheels a GPU session carries: what the device image lacks (its package list: the device
# library's KINDS.md) at the versions requirements.lock pins, for CPython 3.12 on manylinux
# x86_64, into .device/wheels (git-ignored; about 42 MB of the 64 MiB a call may carry), and
# the checkout's commit into .device/commit ("<sha>" or "<sha>-dirty": the device's copy of the
# tree has no .git, and the results name the code that made them). Run it right before the call.
#
#   benchmarks/device_wheels.sh
#   then one device call with carry [".device"]: bash benchmarks/gpu_session.sh $OUT
#
# grain and tokamax, and what they import that the image lacks: xprof (tokamax's benchmarking
# module imports xprof.cli, which imports fire and termcolor), pydantic, immutabledict,
# portpicker (grain). jax-triton into .device/jax-triton twice: at the `gpu` extra's pin, which
# needs triton >= 3.7, and 0.3.1 for an image with triton 3.6 (KINDS.md, 2026-11; that pairing
# lowers our GDPA and SWA kernels for an H100, checked on CPU): gpu_session.sh installs the one
# that matches the image's triton.
set -euo pipefail
cd "$(dirname "$0")/.."
NAMES=(grain tokamax array_record qwix einshape xprof fire termcolor pydantic pydantic_core annotated-types typing-inspection immutabledict portpicker)
pins=()
for name in "${NAMES[@]}"; do
  pins+=("$(grep -E "^${name}==" requirements.lock)") || {
    echo "error: $name is not pinned in requirements.lock" >&2
    exit 1
  }
done
download() {  # download DIR PIN...: CPython 3.12 manylinux x86_64 wheels, no dependencies
  local dir=$1
  shift
  mkdir -p "$dir"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$dir" "$@"
}
download .device/wheels "${pins[@]}"
for pin in "$(grep -m1 -oE 'jax-triton==[0-9.]+' pyproject.toml)" jax-triton==0.3.1; do
  download .device/jax-triton "$pin"  # one version per call: pip resolves a call's pins together
done
du -sh .device/wheels .device/jax-triton
changes=$(git status --porcelain --untracked-files=no)
echo "$(git rev-parse HEAD)${changes:+-dirty}" >.device/commit
echo "code: $(cat .device/commit)"
