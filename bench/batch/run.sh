#!/usr/bin/env bash
# Continuous batching benchmarks (issue 17, docs/engine.md):
#   bench/batch/run.sh kernels [THREADS]     the batch GEMV kernel against one token (CPU time)
#   bench/batch/run.sh serve MODEL_DIR [PORT] nvlm serve --parallel 8 --threads 2 on MODEL_DIR
#       (made with nvlm mkmodel as docs/engine.md says if it has no config.json), then
#       serve_bench.py: 8 x 64 tokens one after another vs at once (both orders), 1..16 streams,
#       time to first token during a 7-tile image prefill
#   bench/batch/run.sh streams MODEL_DIR [PORT]  aggregate tok/s and the server's peak RSS at
#       1/2/4/8/16 streams, weights as stored (BF16), --weights q8_0 and --weights q4, a fresh
#       server each; then llama.cpp's llama-batched-bench on the same LLM (a BF16 GGUF of the same
#       weights by bench/llamacpp/to_gguf.py; Q8_0 and Q4_0 by llama-quantize) when LLAMA_BUILD
#       names a llama.cpp build folder holding bin/llama-batched-bench; skipped cleanly otherwise
# BUILD (environment, default build) must hold libnvlm.a and nvlm.
set -eu
cd "$(dirname "$0")/../.."
build=${BUILD:-build}
mkmodel() { # the Qwen2-0.5B-sized NVLM-D checkpoint (BF16 LLM, tiny ViT) in $1 unless it is there
  [ -f "$1/config.json" ] && return 0
  "$build/nvlm" mkmodel --out "$1" --tokenizer "${NVLM_SHARED:-tests/data}/reference/tokenizer" --dtype bf16 \
      --llm-hidden 896 --llm-layers 24 --llm-heads 14 --llm-kv-heads 2 --llm-intermediate 4864 \
      --vit-hidden 64 --vit-layers 1 --vit-heads 4 --vit-dummy-heads 0 --vit-intermediate 128 >/dev/null
}

streams_one() { # $1 model dir, $2 port, $3 label, then extra serve options
  local md=$1 port=$2 label=$3 pid
  shift 3
  "$build/nvlm" serve -m "$md" --threads 2 --parallel 8 --port "$port" -q "$@" &
  pid=$!
  for _ in $(seq 300); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 1; done
  echo "== nvlm $label, load average $(cut -d' ' -f1-3 /proc/loadavg)"
  python3 bench/batch/serve_bench.py --port "$port" --pid "$pid" --tokens 64 --streams 1,2,4,8,16 --no-orders || true
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

# llama.cpp's llama-batched-bench on the same LLM: 32 prompt tokens and 64 generated per
# sequence, 1..16 sequences, 2 threads; generated tokens over the whole time (prompt included,
# as serve_bench.py's figure), and its S_TG (generation alone).
llamacpp() { # $1 model dir
  local lb=${LLAMA_BUILD:-} bb q src work g
  bb=$lb/bin/llama-batched-bench q=$lb/bin/llama-quantize
  if [ -z "$lb" ] || [ ! -x "$bb" ]; then
    echo "== llama.cpp: skipped (set LLAMA_BUILD to a llama.cpp build folder with bin/llama-batched-bench)"
    return 0
  fi
  src=${LLAMA_SRC:-$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$lb/CMakeCache.txt" 2>/dev/null || true)}
  work=${WORK:-/tmp/nvlm-batch-llamacpp}
  mkdir -p "$work"
  g=$work/model-bf16.gguf
  if ! /usr/bin/python3 -c 'import numpy' 2>/dev/null; then
    echo "== llama.cpp: skipped (to_gguf.py needs Debian's python3 with numpy: apt-get install python3-numpy)"
    return 0
  fi
  if [ ! -f "$g" ] || [ "$1/config.json" -nt "$g" ]; then
    PYTHONPATH="$src/gguf-py" /usr/bin/python3 bench/llamacpp/to_gguf.py "$1" "$g.tmp" >"$work/to_gguf.txt" 2>&1 && mv "$g.tmp" "$g" ||
      { echo "== llama.cpp: skipped (to_gguf.py failed, see $work/to_gguf.txt; LLAMA_SRC names the source tree)"; return 0; }
  fi
  for t in BF16 Q8_0 Q4_0; do
    local f=$g
    if [ "$t" != BF16 ]; then
      f=$work/model-$t.gguf
      [ -x "$q" ] || { echo "== llama.cpp $t: skipped (no llama-quantize)"; continue; }
      local keep=() # Q4_0 keeps token_embd and output at Q8_0, as nvlm's q4 does (bench/llamacpp)
      [ "$t" = Q4_0 ] && keep=(--output-tensor-type q8_0 --token-embedding-type q8_0)
      [ -f "$f" ] && [ "$f" -nt "$g" ] || "$q" "${keep[@]}" "$g" "$f" "$t" 2 >"$work/quantize-$t.txt" 2>&1 ||
        { echo "== llama.cpp $t: skipped (llama-quantize failed, see $work/quantize-$t.txt)"; continue; }
    fi
    echo "== llama.cpp $t (llama-batched-bench), load average $(cut -d' ' -f1-3 /proc/loadavg)"
    "$bb" -m "$f" -c 4096 -b 512 -ub 512 -npp 32 -ntg 64 -npl 1,2,4,8,16 -t 2 -kvu 2>/dev/null |
      awk -F'|' 'NF > 10 && $4 + 0 > 0 { printf "streams %2d: %.1f tok/s aggregate (prompt included), S_TG %.1f tok/s\n", $4, $4 * $3 / $10, $9 }'
  done
}

case "${1:-}" in
  kernels)
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    cc -std=c11 -D_GNU_SOURCE -O2 -Iinclude -Isrc bench/batch/gemv_batch.c "$build/libnvlm.a" \
       $(make -s --no-print-directory ldlibs) -o "$tmp/gemv_batch"
    "$tmp/gemv_batch" "${2:-1}";;
  serve)
    md=$2 port=${3:-18417}
    mkmodel "$md"
    "$build/nvlm" serve -m "$md" --threads 2 --parallel 8 --port "$port" -q &
    pid=$!
    trap 'kill $pid' EXIT
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 1; done
    echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
    python3 bench/batch/serve_bench.py --port "$port" --pid "$pid" --tokens 64 --streams 1,2,4,8,16 \
        --image "${NVLM_SHARED:-tests/data}/reference/images/skimage_coffee.png"
    echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)";;
  streams)
    md=$2 port=${3:-18418}
    mkmodel "$md"
    streams_one "$md" "$port" "BF16 (as stored)"
    streams_one "$md" "$port" "Q8_0 (--weights q8_0)" --weights q8_0
    streams_one "$md" "$port" "4-bit (--weights q4)" --weights q4
    llamacpp "$md";;
  *) sed -n '2,13p' "$0"; exit 2;;
esac
