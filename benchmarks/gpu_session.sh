#!/usr/bin/env bash
# One stage of a GPU session on a machine with jax 0.11.2 + CUDA preinstalled (the device
# image), run from the repo root: installs the carried wheels (.device/wheels, see
# ../shared/notes/gpu-runs.md) and this checkout, then runs STAGE and writes under OUT.
#
#   benchmarks/gpu_session.sh STAGE OUT
#
# Stages (each fits one 10-minute device call; run them in this order):
#   tests   the GPU kernel tests (tests/kernels/test_on_gpu.py) -> OUT/test_on_gpu.txt
#   gdpa    GDPA kernels vs XLA, tokamax and the same-run ceilings -> OUT/gdpa_<device>.json
#   swa     SWA vs full attention over T at w=128                  -> OUT/swa_<device>.json/.png
#   hsp     seed pooling and the HSP block vs XLA                  -> OUT/hsp_<device>.json
#   bench   train-step MFU ablation of `base`                      -> OUT/bench_base_ablate_<device>.json
# Copy the results into benchmarks/results/ and commit them with the output of the tests stage.
set -euo pipefail
stage=${1:?usage: benchmarks/gpu_session.sh STAGE OUT}
out=${2:?usage: benchmarks/gpu_session.sh STAGE OUT}
mkdir -p "$out"
if [ -d .device/wheels ]; then
  python3 -m pip install -q --no-deps .device/wheels/*.whl
fi
python3 -m pip install -q --no-deps -e .
device=$(python3 -c "import jax; print(jax.devices()[0].device_kind.replace(' ', '_'))")
echo "device: $device" | tee "$out/device.txt"
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv >>"$out/device.txt" || true

case "$stage" in
  tests)
    KUNLUN_TEST_PLATFORMS=cuda python3 -m pytest -m gpu -q -rA tests/kernels/test_on_gpu.py \
      2>&1 | tee "$out/test_on_gpu.txt"
    ;;
  gdpa)
    python3 -m benchmarks.kernels.gdpa --out "$out/gdpa_$device.json" --heads 4 8
    ;;
  swa)
    python3 -m benchmarks.kernels.swa --out "$out/swa_$device.json" --window 128 \
      --plot "$out/swa_$device.png"
    ;;
  hsp)
    python3 -m benchmarks.kernels.hsp --out "$out/hsp_$device.json"
    ;;
  bench)
    kunlun-jax bench --config base --ablate --out "$out/bench_base_ablate_$device.json"
    ;;
  *)
    echo "unknown stage $stage (tests, gdpa, swa, hsp, bench)" >&2
    exit 2
    ;;
esac
