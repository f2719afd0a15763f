#!/usr/bin/env bash
# Structured output cost: the constraint per token on the full Qwen2 vocabulary, and generation
# tok/s with and without a schema on a random Qwen2-0.5B-shaped NVLM-D (written once under
# $NVLM_BENCH_DIR, default BUILD_DIR/bench-grammar; NVLM_BENCH_MODEL=0 skips it).
# Usage: bench/grammar/run.sh [BUILD_DIR] [THREADS]
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
THREADS=${2:-0}
OUT=${NVLM_BENCH_DIR:-$BUILD/bench-grammar}
TOK=tests/data/reference/tokenizer   # the repository's copy of the shared reference
mkdir -p "$OUT"
PKGS=$(sed -n "s/^PKGS *:= *//p" Makefile)
cc -std=c11 -D_GNU_SOURCE -O2 -Iinclude -Isrc $(pkg-config --cflags $PKGS) bench/grammar/bench_grammar.c \
   "$BUILD/libnvlm.a" $(make -s --no-print-directory BUILD="$BUILD" ldlibs) -o "$OUT/bench_grammar"
echo "load: $(cat /proc/loadavg)"
"$OUT/bench_grammar" --tokenizer "$TOK" --steps ${NVLM_BENCH_STEPS:-200}
if [ "${NVLM_BENCH_MODEL:-1}" != 0 ]; then
  M="$OUT/qwen2-0.5b-d"
  [ -f "$M/config.json" ] || "$BUILD/nvlm" mkmodel --out "$M" --tokenizer "$TOK" --seed 1 --dtype bf16 \
      --llm-hidden 896 --llm-layers 24 --llm-heads 14 --llm-kv-heads 2 --llm-intermediate 4864
  "$OUT/bench_grammar" --model "$M" --tokens ${NVLM_BENCH_TOKENS:-48} --threads "$THREADS"
fi
echo "load: $(cat /proc/loadavg)"
