#!/usr/bin/env bash
# The GPU benchmark of the backends issue, on a machine with JAX and CUDA but no TensorFlow:
# images/s of plain training, LsrKD, Pseudo-KD, MrKD-1 and MrKD-3 for ResNet-56 on CIFAR-sized
# batches as ratios to plain training, then a short real training run (if DATA_DIR is given).
#
#   pip install --no-deps -e .          # this package only; Keras, JAX[cuda], absl-py, numpy present
#   benchmarks/gpu_backends.sh OUT_DIR [DATA_DIR]
#
# MODEL, METHODS, STEPS, WARMUP, REPEATS (environment) override resnet56,
# ce,lsrkd,pseudo_kd,mrkd-1,mrkd-3, 50, 10, 3.
# TensorFlow is made unimportable in both runs (sys.modules), so they prove it is not needed.
set -euo pipefail
out="${1:?usage: benchmarks/gpu_backends.sh OUT_DIR [DATA_DIR]}"
data="${2:-}"
cd "$(dirname "$0")/.."
mkdir -p "$out"
export KERAS_BACKEND=jax PYTHONPATH="benchmarks${PYTHONPATH:+:$PYTHONPATH}"
without_tf() {  # python without TensorFlow: run a script with arguments
  python -c 'import runpy, sys; sys.modules["tensorflow"] = None; script = sys.argv[1]; sys.argv = sys.argv[1:]; runpy.run_path(script, run_name="__main__")' "$@"
}
python -c 'import jax; print("devices:", jax.devices())' | tee "$out/devices.txt"
model="${MODEL:-resnet56}"
without_tf benchmarks/method_throughput.py --model="$model" \
  --methods="${METHODS:-ce,lsrkd,pseudo_kd,mrkd-1,mrkd-3}" --steps="${STEPS:-50}" --warmup="${WARMUP:-10}" \
  --repeats="${REPEATS:-3}" --output="$out/method_throughput_jax_gpu.json" --markdown \
  | tee "$out/method_throughput.txt"
if [ -n "$data" ]; then
  without_tf train.py --flagfile=flags/quickstart.flags --method=mrkd --model=resnet56 \
    --data_dir="$data" --output_dir="$out/quickstart_resnet56_mrkd" | tee "$out/train.txt"
fi
