#!/usr/bin/env bash
# Continuous batching benchmarks (issue 17, docs/engine.md):
#   bench/batch/run.sh kernels [THREADS]     the batch GEMV kernel against one token (CPU time)
#   bench/batch/run.sh serve MODEL_DIR [PORT] nvlm serve --parallel 8 --threads 2 on MODEL_DIR
#       (made with nvlm mkmodel as docs/engine.md says if it has no config.json), then
#       serve_bench.py: 8 x 64 tokens one after another vs at once (both orders), 1..16 streams,
#       time to first token during a 7-tile image prefill
# BUILD (environment, default build) must hold libnvlm.a and nvlm.
set -eu
cd "$(dirname "$0")/../.."
build=${BUILD:-build}
case "${1:-}" in
  kernels)
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    cc -std=c11 -D_GNU_SOURCE -O2 -Iinclude -Isrc bench/batch/gemv_batch.c "$build/libnvlm.a" \
       $(pkg-config --libs libpng libdeflate libjpeg libwebp libwebpdemux libgif libutf8proc libcjson oniguruma libcrypto libmicrohttpd) \
       -lm -lpthread -o "$tmp/gemv_batch"
    "$tmp/gemv_batch" "${2:-1}";;
  serve)
    md=$2 port=${3:-18417}
    if [ ! -f "$md/config.json" ]; then
      "$build/nvlm" mkmodel --out "$md" --tokenizer "${NVLM_SHARED:-tests/data}/reference/tokenizer" --dtype bf16 \
          --llm-hidden 896 --llm-layers 24 --llm-heads 14 --llm-kv-heads 2 --llm-intermediate 4864 \
          --vit-hidden 64 --vit-layers 1 --vit-heads 4 --vit-dummy-heads 0 --vit-intermediate 128 >/dev/null
    fi
    "$build/nvlm" serve -m "$md" --threads 2 --parallel 8 --port "$port" -q &
    pid=$!
    trap 'kill $pid' EXIT
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 1; done
    echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
    python3 bench/batch/serve_bench.py --port "$port" --pid "$pid" --tokens 64 --streams 1,2,4,8,16 \
        --image "${NVLM_SHARED:-tests/data}/reference/images/skimage_coffee.png"
    echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)";;
  *) sed -n '2,8p' "$0"; exit 2;;
esac
