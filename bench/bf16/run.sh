#!/usr/bin/env bash
# bf16 compute mode figures (docs/performance.md "bf16 compute"):
#   bench/bf16/run.sh gemm [THREADS...]      GEMM GFLOP/s, fp32 vs bf16, per level (bench_gemm.c)
#   bench/bf16/run.sh gemv [THREADS...]      Q8_0/Q4 generation GB/s, AVX2 vs VNNI (bench_qgemv.c)
#   bench/bf16/run.sh run MODEL IMAGE [N]    whole-process `nvlm run`, 1 thread, 32 tokens,
#                                            fp32 vs --compute bf16, N alternating runs each
# BUILD (environment, default build) must hold libnvlm.a and nvlm; CPU_TIME=1 times the kernels
# by process CPU time / threads (a busy shared machine). Prints the load average
# beside the figures: on a shared machine, compare only ratios taken in the same run.
set -eu
cd "$(dirname "$0")/../.."
build=${BUILD:-build}
[ -f "$build/libnvlm.a" ] || { echo "run: no $build/libnvlm.a (make BUILD=$build first)" >&2; exit 1; }
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
case "${1:-}" in
  gemm|gemv) what=$1; shift
    prog=$([ "$what" = gemm ] && echo bench_gemm || echo bench_qgemv)
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    cc -std=c11 -D_GNU_SOURCE -O2 -Iinclude -Isrc "bench/bf16/$prog.c" "$build/libnvlm.a" \
       $(pkg-config --libs libpng libdeflate libjpeg libwebp libwebpdemux libgif libutf8proc libcjson oniguruma libcrypto libmicrohttpd) \
       -lm -lpthread -o "$tmp/$prog"
    for t in ${@:-1 2}; do "$tmp/$prog" "$t"; done;;
  run) model=$2 image=$3 n=${4:-3}
    TIMEFORMAT='%R %U %S'
    for i in $(seq "$n"); do
      for mode in f32 bf16; do
        t=$( { time "$build/nvlm" run --model "$model" --image "$image" --max-num 1 --threads 1 --compute "$mode" \
          -n 32 --quiet --prompt "Describe the image." > /dev/null; } 2>&1 )
        set -- $t
        printf '%-5s wall %6.2f s   CPU (user+sys) %6.2f s\n' "$mode" "$1" "$(awk -v u="$2" -v s="$3" 'BEGIN { print u + s }')"
      done
    done;;
  *) sed -n '2,6p' "$0"; exit 2;;
esac
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
