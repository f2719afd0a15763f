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

# ---- safetensors header parser / validator: src/model/safetensors.c + src/core
build_safetensors() {
  clang $CFLAGS $SAN fuzz/fuzz_safetensors.c src/model/safetensors.c src/core/*.c $LIBS -o "$OUT/fuzz_safetensors"
  mkdir -p "$OUT/corpus-safetensors"
  local h='{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[1,2],"data_offsets":[8,12]}}    '
  { printf "\\x$(printf %02x ${#h})\\x00\\x00\\x00\\x00\\x00\\x00\\x00"; printf '%s' "$h"; printf '0123456789ab'; } > "$OUT/corpus-safetensors/seed-two"
  echo "built $OUT/fuzz_safetensors"
}

# ---- config.json parser / validator (+ parameter count)
build_config() {
  clang $CFLAGS $SAN fuzz/fuzz_config.c src/model/config.c src/model/tensors.c src/model/safetensors.c src/core/*.c $LIBS -o "$OUT/fuzz_config"
  mkdir -p "$OUT/corpus-config"
  for m in d x h; do cp "tests/data/reference/models/tiny-nvlm-$m/config.json" "$OUT/corpus-config/seed-$m" 2>/dev/null || true; done
  echo "built $OUT/fuzz_config"
}

# ---- image decoders: one target per decoder (input straight to it) + fuzz_image (sniffing)
build_image() {
  local pk="libpng libdeflate libjpeg libwebp libwebpdemux libgif"
  local src="fuzz/fuzz_image.c src/image/*.c src/core/*.c"
  local fl="$CFLAGS $(pkg-config --cflags $pk) $SAN -fno-sanitize-recover=undefined"
  local lb="$(pkg-config --libs $pk) -lm -lpthread"
  clang $fl $src $lb -o "$OUT/fuzz_image"
  local f ext
  for f in jpeg png webp gif bmp; do
    clang $fl -DFUZZ_FORMAT="IMG_$(echo $f | tr a-z A-Z)" $src $lb -o "$OUT/fuzz_image_$f"
    ext=$f; [ $f = jpeg ] && ext=jpg
    mkdir -p "$OUT/corpus-image-$f"
    # seeds: the reference images of that format up to 64 KB, and the bad ones
    find tests/data/reference/images -name "*.$ext" -size -64k -exec cp {} "$OUT/corpus-image-$f/" \; 2>/dev/null || true
  done
  mkdir -p "$OUT/corpus-image"
  find tests/data/reference/images -type f -size -64k -exec cp {} "$OUT/corpus-image/" \; 2>/dev/null || true
  # the PNG fast path against libpng (differential), seeded with the PNG corpus
  clang $fl -DFUZZ_PNG_DIFF $src $lb -o "$OUT/fuzz_image_pngdiff"
  mkdir -p "$OUT/corpus-image-pngdiff"
  cp "$OUT"/corpus-image-png/* "$OUT/corpus-image-pngdiff/" 2>/dev/null || true
  echo "built $OUT/fuzz_image, $OUT/fuzz_image_{jpeg,png,webp,gif,bmp} and $OUT/fuzz_image_pngdiff"
}

# ---- structured output: JSON Schema compiler + byte matcher (sentences must parse as JSON)
build_grammar() {
  clang $CFLAGS $SAN -fno-sanitize-recover=undefined fuzz/fuzz_grammar.c src/grammar/build.c src/grammar/match.c \
      src/grammar/schema.c src/core/*.c $LIBS -o "$OUT/fuzz_grammar"
  mkdir -p "$OUT/corpus-grammar"
  printf '{"type":"object","properties":{"a":{"type":"integer","minimum":-5,"maximum":120}},"required":["a"]}\0{"a": 17}' > "$OUT/corpus-grammar/seed-obj"
  printf '{"anyOf":[{"enum":["x",1,null]},{"type":"array","items":{"type":"string","maxLength":3},"maxItems":2}]}\0["ab","\\u00e9"]' > "$OUT/corpus-grammar/seed-any"
  printf '{"$defs":{"n":{"type":"object","properties":{"k":{"$ref":"#/$defs/n"}}}},"$ref":"#/$defs/n"}\0{"k":{"k":{}}}' > "$OUT/corpus-grammar/seed-ref"
  echo "built $OUT/fuzz_grammar"
}

targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(tokenizer safetensors config image grammar)
for t in "${targets[@]}"; do "build_$t"; done
