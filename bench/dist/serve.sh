#!/usr/bin/env bash
# nvlm serve under mpirun against one process: one process with 2 threads, then 2 ranks x 1
# thread (tensor parallel, the KV cache split by heads), on a Qwen2-0.5B-sized random NVLM-D
# with a tiny ViT, BF16. For each: bench/batch/serve_bench.py's aggregate generated tok/s at 1, 4
# and 8 concurrent greedy requests, and rank 0's KV bytes allocated from /metrics; the load
# average beside them (docs/distributed.md).
# usage: bench/dist/serve.sh [MODEL_DIR] [PORT] [TOKENS]   (MODEL_DIR is made when absent)
set -eu
cd "$(dirname "$0")/../.."
model=${1:-/tmp/nvlm-bench-serve-q05} port=${2:-18517} tokens=${3:-32}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
if [ ! -f "$model/config.json" ]; then
  build/nvlm mkmodel --out "$model" --tokenizer "${NVLM_SHARED:-tests/data}/reference/tokenizer" --dtype bf16 \
    --llm-hidden 896 --llm-layers 24 --llm-heads 14 --llm-kv-heads 2 --llm-intermediate 4864 \
    --vit-hidden 64 --vit-layers 1 --vit-heads 4 --vit-dummy-heads 0 --vit-intermediate 128 >/dev/null
fi
run() { # $1: what, $2: threads per rank, then the launch
  what=$1 threads=$2; shift 2
  "$@" serve -m "$model" --threads "$threads" --parallel 8 --port "$port" -q --no-mmap &
  pid=$!
  for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
    kill -0 "$pid" 2>/dev/null || { echo "the server ($what) did not start" >&2; exit 1; }
    sleep 1
  done
  echo "== $what; load average $(cut -d' ' -f1-3 /proc/loadavg)"
  python3 bench/batch/serve_bench.py --port "$port" --tokens "$tokens" --streams 1,4,8 --no-orders
  m=$(curl -sf "http://127.0.0.1:$port/metrics")
  echo "$m" | awk '/^nvlm_kv_bytes_allocated /{b=$2} /^nvlm_kv_pages_used /{p=$2} END{printf "rank 0: KV pages allocated %.1f MB (%d pages in use)\n", b/1e6, p}'
  echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
  kill -TERM "$pid"; wait "$pid" || true
}
run "one process, 2 threads" 2 build/nvlm
run "2 ranks x 1 thread" 1 mpirun -np 2 ${NVLM_MPIRUN_FLAGS:---bind-to none} build/nvlm
