#!/usr/bin/env bash
# Tensor parallel on one machine: one process with 2 threads against 2 MPI ranks with 1 thread
# each, on a Qwen2-0.5B-sized random NVLM-D (InternViT-300M-sized encoder), BF16 and Q8_0.
# Prints nvlm bench's figures (ViT ms/tile, prompt and generation tok/s, each rank's exchanges
# per token and peak RSS) with the load average beside them (docs/distributed.md).
# usage: bench/dist/run.sh [MODEL_DIR] [extra nvlm bench flags]   (MODEL_DIR is made when absent)
set -eu
cd "$(dirname "$0")/../.."
model=${1:-/tmp/nvlm-bench-q05}
shift || true
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
if [ ! -f "$model/config.json" ]; then
  build/nvlm mkmodel --out "$model" --tokenizer ../shared/reference/tokenizer --vit-hidden 1024 --vit-layers 24 \
    --vit-heads 16 --vit-dummy-heads 0 --vit-intermediate 4096 --llm-hidden 896 --llm-layers 24 --llm-heads 14 \
    --llm-kv-heads 2 --llm-intermediate 4864 --dtype bf16
fi
flags="--model $model --no-kernels --tiles 1 --prompt 128 --gen 32 --no-mmap $*"
for w in "" "--weights q8_0"; do
  echo "== weights ${w:-as stored (BF16)}; load average $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "-- one process, 1 and 2 threads"
  build/nvlm bench $flags $w --threads 2
  echo "-- 2 ranks x 1 thread (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  mpirun -np 2 ${NVLM_MPIRUN_FLAGS:---bind-to none} build/nvlm bench $flags $w --threads 1
  echo "   load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
done
