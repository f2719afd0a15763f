#!/usr/bin/env bash
# bf16 compute mode figures (docs/performance.md "bf16 compute"):
#   bench/bf16/run.sh gemm [THREADS...]      GEMM GFLOP/s, fp32 vs bf16, per level (bench_gemm.c)
#   bench/bf16/run.sh gemv [THREADS...]      Q8_0/Q4 generation GB/s, AVX2 vs VNNI (bench_qgemv.c)
#   bench/bf16/run.sh mkmodel DIR            the speed check's model: a random NVLM-D, all BF16, with an
#                                            InternViT-300M-sized encoder and a Qwen2-0.5B-sized LLM (1.9 GB)
#   bench/bf16/run.sh run MODEL IMAGE [N]    whole-process `nvlm run`, 1 thread, 32 tokens,
#                                            fp32 vs --compute bf16, N alternating runs each
#   bench/bf16/run.sh torch MODEL IMAGE [N]  issue 19's speed check: the PyTorch reference (torch_job.py,
#                                            fp32, 1 thread) doing the same job beside `nvlm run` f32 and
#                                            bf16, N alternating rounds; wall and CPU time and the ratios.
#                                            Needs Debian's python3-torch and libopenblas0-pthread
#                                            (apt-get install -y python3-torch libopenblas0-pthread).
#                                            NVLM_ARGS (environment): more `nvlm run` flags, e.g. --mmap
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
       $(make -s --no-print-directory ldlibs) -o "$tmp/$prog"
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
  mkmodel)
    "$build/nvlm" mkmodel --out "$2" --tokenizer tests/data/reference/tokenizer --dtype bf16 \
      --vit-hidden 1024 --vit-layers 24 --vit-heads 16 --vit-dummy-heads 0 --vit-intermediate 4096 \
      --llm-hidden 896 --llm-layers 24 --llm-heads 14 --llm-kv-heads 2 --llm-intermediate 4864;;
  torch) model=$2 image=$3 n=${4:-2}
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
    TIMEFORMAT='%R %U %S'
    # timed: NAME COMMAND...; prints wall and CPU, appends "name wall cpu" to $tmp/times
    timed() {
      local name=$1; shift
      { time "$@" > "$tmp/out.$name" 2> "$tmp/err.$name"; } 2> "$tmp/time" || { cat "$tmp/err.$name" >&2; exit 1; }
      set -- $(tail -1 "$tmp/time")
      local cpu; cpu=$(awk -v u="$2" -v s="$3" 'BEGIN { printf "%.2f", u + s }')
      printf '%-9s wall %6.2f s   CPU (user+sys) %6.2f s (sys %5.2f)   load %s\n' "$name" "$1" "$cpu" "$3" "$(cut -d' ' -f1 /proc/loadavg)"
      echo "$name $1 $cpu" >> "$tmp/times"
    }
    for i in $(seq "$n"); do
      timed pytorch /usr/bin/python3 bench/bf16/torch_job.py "$model" "$image" "$build/nvlm" 32
      for mode in f32 bf16; do
        timed "nvlm-$mode" "$build/nvlm" run --model "$model" --image "$image" --max-num 1 --threads 1 \
          --compute "$mode" -n 32 --json --quiet --prompt "Describe the image." ${NVLM_ARGS:-}
      done
    done
    echo "pytorch stages (s, wall): $(cut -c1-400 "$tmp/out.pytorch" | sed 's/, "output_ids.*//')"
    # the same greedy tokens (f32 is exact to the reference; bf16 may differ on a random model)
    /usr/bin/python3 -c 'import json,sys; t=json.load(open(sys.argv[1]))["output_ids"]
for f in sys.argv[2:]: print("%s: %d tokens, %s the PyTorch answer" % (f.split(".")[-1], len(json.load(open(f))["output_ids"]), "same as" if json.load(open(f))["output_ids"] == t else "differs from"))' \
      "$tmp/out.pytorch" "$tmp/out.nvlm-f32" "$tmp/out.nvlm-bf16"
    awk '{ w[$1] += $2; c[$1] += $3; k[$1]++ }
         END { for (m in w) if (m != "pytorch")
                 printf "PyTorch / %s (mean of %d): wall %.2fx, CPU %.2fx\n", m, k[m], w["pytorch"] / w[m], c["pytorch"] / c[m] }' "$tmp/times";;
  *) sed -n '2,14p' "$0"; exit 2;;
esac
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
