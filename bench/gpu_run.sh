#!/usr/bin/env bash
# The GPU numbers of bench/RESULTS.md in one run on a CUDA machine (python3 with torch, timm, transformers;
# plotly as a wheel in .whl/ when the machine lacks it). Each step's output lands in $OUT (default ./gpu-out).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
  | tee -a "$OUT/gpu.txt"
# 1. the LM main pass vs a raw teacher + student forward (bf16 autocast both), GPT-2-small-sized teacher
timeout 120 python3 bench/lm_throughput.py --device cuda --shapes 768,12,384,6 --vocab 32768 \
  --batches 16 --batch 32 --seq 512 --repeats 3 2>&1 | tee "$OUT/lm_throughput.txt"
# 2. a full LM diagnose as the train split grows 4x beyond the default sample (4,096 sequences of 256: 1M tokens)
timeout 200 python3 bench/lm_scaling.py --device cuda --sizes 4096 16384 --seq 256 --vocab 32768 \
  --teacher 768 12 --student 384 6 --n-val 512 --threads 8 2>&1 | tee "$OUT/lm_scaling.txt"
# 3. the pass, probe, metric and loss tests with CUDA present (device auto picks it)
timeout 200 python3 -m pytest -q -m "not slow" -p no:cacheprovider tests/test_engine.py tests/test_lm_engine.py \
  tests/test_lm_probes.py tests/test_lm_checks.py tests/test_lm_pipeline.py tests/test_objectives.py \
  tests/test_fingerprint.py tests/metrics tests/test_losses.py tests/test_scale.py 2>&1 | tail -40 | tee "$OUT/pytest.txt"
