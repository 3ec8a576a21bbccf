#!/usr/bin/env bash
# GPU check, prepared to run in one go on a machine with an NVIDIA GPU (e.g. the lent H100):
#   bash benchmarks/gpu_check.sh [OUT_DIR]
# 1. installs the GPU build (tensorflow[and-cuda]==2.21.0, the `gpu` extra) into .venv-gpu; where the
#    machine cannot reach PyPI, set WHEEL_DIR to a folder of wheels (pip --no-index --find-links);
# 2. runs the strategy, mixed-precision and XLA tests;
# 3. prints training img/s at 1024 px, batch 4, mixed float16 with and without XLA, and inference img/s
#    (reference: NVIDIA's TF2 Mask R-CNN trains at 28.6 img/s on one A100 with AMP at batch 4).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu_check_out}
mkdir -p "$OUT"
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
if [ ! -x .venv-gpu/bin/python ]; then
  "$PY" -m venv .venv-gpu
  if [ -n "${WHEEL_DIR:-}" ]; then
    .venv-gpu/bin/pip install --no-index --find-links "$WHEEL_DIR" -e '.[gpu,test]'
  else
    .venv-gpu/bin/pip install -e '.[gpu,test]'
  fi
fi
VPY=.venv-gpu/bin/python
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$VPY -c "import tensorflow as tf; print('TF', tf.__version__, 'GPUs:', tf.config.list_physical_devices('GPU'))" \
  | tee -a "$OUT/gpu.txt"
# Strategy / precision / XLA tests (the two-replica tests use two logical CPU devices by design).
timeout 1200 $VPY -m pytest -q -x tests/test_distribute.py tests/test_model.py 2>&1 | tail -5 | tee "$OUT/tests.txt"
for jit in "" "--jit"; do
  timeout 900 $VPY benchmarks/train_step.py --size 1024 --batch 4 --mixed_precision float16 $jit --warmup 3 --runs 10 \
    --out "$OUT/train_1024_b4_fp16${jit/--/_}.json" | grep -E '"(median_s|images_per_sec|peak_gpu_mib)"'
done
timeout 600 $VPY benchmarks/train_step.py --size 1024 --batch 4 --warmup 3 --runs 10 --out "$OUT/train_1024_b4_fp32.json" \
  | grep -E '"(median_s|images_per_sec|peak_gpu_mib)"'
timeout 600 $VPY benchmarks/inference.py --size 1024 --warmup 3 --runs 20 --out "$OUT/infer_1024.json" \
  | grep -E '"(median_s|min_s)"'
echo "results in $OUT/"
