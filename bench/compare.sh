#!/usr/bin/env bash
# nvlm vs PyTorch on the same GEMM/GEMV shapes, and the engine on a model folder.
# usage: bench/compare.sh [BUILD] [MODEL_DIR]   (BUILD default build; extra env: THREADS, CPU_TIME=1)
set -eu
cd "$(dirname "$0")/.."
build=${1:-build}; model=${2:-}
threads=${THREADS:-$(nproc)}
ct=${CPU_TIME:+--cpu-time}
echo "== nvlm kernels (level: ${NVLM_CPU:-best}) =="
"$build/nvlm" bench --threads "$threads" $ct
echo "== PyTorch =="
/usr/bin/python3 bench/torch_gemm.py --threads "$threads" $ct || echo "(python3-torch not available)"
if [ -n "$model" ]; then
  for w in stored q8_0 q4; do
    echo "== nvlm model $model, weights $w =="
    if [ "$w" = stored ]; then "$build/nvlm" bench --no-kernels --threads "$threads" $ct --model "$model"
    else "$build/nvlm" bench --no-kernels --threads "$threads" $ct --model "$model" --weights "$w"; fi
  done
fi
