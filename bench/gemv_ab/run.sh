#!/usr/bin/env bash
# One-process A/B of the generation kernels (see gemv_ab.c):
#   bench/gemv_ab/run.sh variant VARIANT.c THREADS FORMAT [PAIRS]
#       A = src/kernels/gemv_avx2.c as built in BUILD, B = VARIANT.c (a copy of it, edited)
#   bench/gemv_ab/run.sh pages THREADS FORMAT [PAIRS]
#       the same kernel on 4 KiB pages (A) and on huge pages (B)
# BUILD (environment, default build) must hold libnvlm.a; x86-64 with AVX2 only. An A/A run
# (variant = an unedited copy) shows the harness's own spread: medians of 1.01-1.08 on a shared
# 2-core VM, partly from where the copy's code lands (loop alignment); run one beside each A/B.
set -eu
cd "$(dirname "$0")/../.."
build=${BUILD:-build}
[ -f "$build/libnvlm.a" ] || { echo "run: no $build/libnvlm.a (make BUILD=$build first)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mode=${1:-}
case "$mode" in
  variant) src=$2; shift 2
    cc -std=c11 -D_GNU_SOURCE -O2 -Iinclude -Isrc -Dnvlm_gemv_avx2=var_gemv -c "$src" -o "$tmp/var.o";;
  pages) shift
    printf 'int var_gemv(void);\nint var_gemv(void) { return 0; }\n' > "$tmp/var.c"
    cc -std=c11 -O2 -c "$tmp/var.c" -o "$tmp/var.o";;
  *) sed -n '2,8p' "$0"; exit 2;;
esac
cc -std=c11 -D_GNU_SOURCE -O2 -Iinclude -Isrc bench/gemv_ab/gemv_ab.c "$tmp/var.o" "$build/libnvlm.a" \
   $(make -s --no-print-directory ldlibs) -o "$tmp/gemv_ab"
"$tmp/gemv_ab" "$mode" "$@"
