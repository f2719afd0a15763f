#!/usr/bin/env bash
# NVLM-D vs NVLM-X vs NVLM-H: same LLM shape, same 6+1-tile image, two sizes.
# Usage: bench/xh/run.sh [BUILD_DIR] [THREADS]   (BUILD_DIR has nvlm and libnvlm.a: make BUILD=...)
# Checkpoints are random (nvlm mkmodel, same seed and shapes for D/X/H; X/H add the
# cross-attention blocks before every 4th LLM layer). They are written once under
# $NVLM_BENCH_DIR (default BUILD_DIR/bench-xh) and reused.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
THREADS=${2:-0}
OUT=${NVLM_BENCH_DIR:-$BUILD/bench-xh}
TOK=tests/data/reference/tiny-tokenizer
IMAGE=tests/data/reference/images/grid_600x400.png   # 600x400 -> 6 tiles (3x2) + thumbnail
mkdir -p "$OUT"
PKGS=$(sed -n "s/^PKGS *:= *//p" Makefile)   # the library's own dependencies
cc -std=c11 -D_GNU_SOURCE -O2 -Iinclude -Isrc $(pkg-config --cflags $PKGS) bench/xh/bench_xh.c \
   "$BUILD/libnvlm.a" $(make -s --no-print-directory BUILD="$BUILD" ldlibs) -o "$OUT/bench_xh"

# ViT kept small on purpose: the vision path is the same for D, X and H (reported apart).
VIT="--vit-hidden 80 --vit-layers 2 --vit-heads 5 --vit-dummy-heads 3 --vit-intermediate 320"
declare -A LLM XL
LLM[small]="--llm-hidden 512 --llm-layers 8 --llm-heads 8 --llm-kv-heads 2 --llm-intermediate 1408"
XL[small]="0,4"
LLM[medium]="--llm-hidden 1024 --llm-layers 16 --llm-heads 16 --llm-kv-heads 4 --llm-intermediate 2816"
XL[medium]="0,4,8,12"

mk() { # name arch size
  local dir="$OUT/$1" extra=""
  [ "$2" != D ] && extra="--xattn-layers ${XL[$3]} --projector-depth 2"
  [ -f "$dir/config.json" ] || "$BUILD/nvlm" mkmodel --out "$dir" --arch "$2" --tokenizer "$TOK" --seed 1 \
      $VIT ${LLM[$3]} $extra
}

for size in small medium; do
  for a in D X H; do mk "$size-$a" "$a" "$size"; done
  echo "== $size: ${LLM[$size]} (X/H blocks before layers ${XL[$size]}), image $(basename $IMAGE)"
  "$OUT/bench_xh" --image "$IMAGE" --tokens ${NVLM_BENCH_TOKENS:-64} --threads "$THREADS" --reps ${NVLM_BENCH_REPS:-2} \
      "$size-D=$OUT/$size-D" "$size-X=$OUT/$size-X" "$size-H=$OUT/$size-H"
done
