#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (-fsanitize=fuzzer,address,undefined) into
# build-fuzz/. Usage: fuzz/build.sh [TARGET...]   (default: all targets listed below)
# Then e.g.: build-fuzz/fuzz_tokenizer -max_total_time=60 build-fuzz/corpus-tokenizer
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${FUZZ_BUILD:-build-fuzz}
mkdir -p "$OUT"
CFLAGS="-std=c11 -D_GNU_SOURCE -g -O1 -Iinclude -Isrc $(pkg-config --cflags libutf8proc libcjson oniguruma)"
SAN="-fsanitize=fuzzer,address,undefined -fno-omit-frame-pointer"
LIBS="$(pkg-config --libs libutf8proc libcjson oniguruma) -lm"

# ---- tokenizer: needs only src/core and src/tokenizer
build_tokenizer() {
  clang $CFLAGS $SAN fuzz/fuzz_tokenizer.c src/core/*.c src/tokenizer/*.c $LIBS -o "$OUT/fuzz_tokenizer"
  mkdir -p "$OUT/corpus-tokenizer"
  printf '\x04Hello world<|im_start|>user\n' > "$OUT/corpus-tokenizer/seed-text"
  printf '\x01{"text": "a\\ud800b"}' > "$OUT/corpus-tokenizer/seed-json"
  printf '\x03#version: 0.2\na b\n\xc4\xa0 a\n' > "$OUT/corpus-tokenizer/seed-merges"
  echo "built $OUT/fuzz_tokenizer"
}

targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(tokenizer)
for t in "${targets[@]}"; do "build_$t"; done
