#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (-fsanitize=fuzzer,address,undefined) into
# build-fuzz/. Usage: fuzz/build.sh [TARGET...]   (default: all targets listed below)
# Then e.g.: build-fuzz/fuzz_tokenizer -max_total_time=60 NEW_DIR fuzz/corpus/tokenizer
# The seed corpora are committed in fuzz/corpus/ (tokenizer, safetensors, config, image: every
# image target shares the image one); fuzz/ci.sh runs each target briefly in `make check`.
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
  echo "built $OUT/fuzz_tokenizer"
}

# ---- safetensors header parser / validator: src/model/safetensors.c + the dtype table (src/kernels) + src/core
build_safetensors() {
  clang $CFLAGS $SAN fuzz/fuzz_safetensors.c src/model/safetensors.c src/kernels/dtype.c src/kernels/qblock.c src/kernels/convert.c src/core/*.c $LIBS -o "$OUT/fuzz_safetensors"
  echo "built $OUT/fuzz_safetensors"
}

# ---- config.json parser / validator (+ parameter count)
build_config() {
  clang $CFLAGS $SAN fuzz/fuzz_config.c src/model/config.c src/model/tensors.c src/model/safetensors.c src/kernels/dtype.c src/kernels/qblock.c src/kernels/convert.c src/core/*.c $LIBS -o "$OUT/fuzz_config"
  echo "built $OUT/fuzz_config"
}

# ---- image decoders: one target per decoder (input straight to it) + fuzz_image (sniffing)
build_image() {
  local pk="libpng libdeflate libjpeg libwebp libwebpdemux libgif"
  local fl="$CFLAGS $(pkg-config --cflags $pk) $SAN -fno-sanitize-recover=undefined"
  local lb="$(pkg-config --libs $pk) -lm -lpthread"
  # the library sources once (they do not depend on the target), then one link per target
  local objs="$OUT/obj-image" f o
  mkdir -p "$objs"
  for f in src/image/*.c src/core/*.c; do
    o="$objs/$(echo "$f" | tr / _).o"
    clang $fl -c "$f" -o "$o" &
    [ "$(jobs -r | wc -l)" -ge 2 ] && wait -n
  done
  wait
  clang $fl fuzz/fuzz_image.c "$objs"/*.o $lb -o "$OUT/fuzz_image"
  for f in jpeg png webp gif bmp; do
    clang $fl -DFUZZ_FORMAT="IMG_$(echo $f | tr a-z A-Z)" fuzz/fuzz_image.c "$objs"/*.o $lb -o "$OUT/fuzz_image_$f"
  done
  # the PNG fast path against libpng (differential)
  clang $fl -DFUZZ_PNG_DIFF fuzz/fuzz_image.c "$objs"/*.o $lb -o "$OUT/fuzz_image_pngdiff"
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
