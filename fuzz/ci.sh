#!/usr/bin/env bash
# The fuzzing of `make check`, in short form: builds every libFuzzer target (fuzz/build.sh),
# then runs each for NVLM_FUZZ_SECONDS (default 15) on its committed corpus (fuzz/corpus/),
# two at a time. New inputs go to a scratch folder, never into the repository; a finding
# (crash, leak, sanitizer report, timeout, out-of-memory) fails the run and its input is kept
# in BUILD/artifacts/. Prints "fuzz: N checks passed, M failed" (one check per target) for
# tests/run.sh. Skipped (0 checks) without clang or libFuzzer; NVLM_FUZZ_SECONDS=0 skips too.
# Usage: fuzz/ci.sh [BUILD]   (default build-fuzz)
set -u
cd "$(dirname "$0")/.."
out=${1:-build-fuzz}
secs=${NVLM_FUZZ_SECONDS:-15}
if [ "$secs" = 0 ]; then echo "fuzz skipped (NVLM_FUZZ_SECONDS=0)"; echo "fuzz: 0 checks passed, 0 failed"; exit 0; fi
if ! command -v clang >/dev/null 2>&1 ||
   ! echo 'int LLVMFuzzerTestOneInput(const char *d, long n){(void)d;(void)n;return 0;}' |
     clang -x c -fsanitize=fuzzer - -o /dev/null 2>/dev/null; then
  echo "fuzz skipped: no clang with libFuzzer (scripts/install-deps.sh installs it)"
  echo "fuzz: 0 checks passed, 0 failed"
  exit 0
fi
mkdir -p "$out"
if ! FUZZ_BUILD=$out fuzz/build.sh >"$out/build.log" 2>&1; then
  tail -n 20 "$out/build.log"
  echo "fuzz: 0 checks passed, 1 failed"
  exit 1
fi
mkdir -p "$out/artifacts"
export NVLM_TOKENIZER=demo/tokenizer # the tiny Qwen2 tokenizer bundled in the repository

# target corpus
targets="fuzz_tokenizer:tokenizer fuzz_safetensors:safetensors fuzz_config:config fuzz_image:image
         fuzz_image_png:image fuzz_image_jpeg:image fuzz_image_gif:image fuzz_image_webp:image
         fuzz_image_bmp:image fuzz_image_pngdiff:image"

run() { # NAME CORPUS: runs one target, its log in $out/NAME.log; exit status of libFuzzer
  local name=$1 corpus=$2 scratch="$out/new-$1"
  rm -rf "$scratch" && mkdir -p "$scratch"
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  timeout $((secs + 120)) "$out/$name" -max_total_time="$secs" -timeout=20 -rss_limit_mb=2560 \
    -print_final_stats=1 -artifact_prefix="$out/artifacts/$name-" "$scratch" "fuzz/corpus/$corpus" \
    >"$out/$name.log" 2>&1
}

passed=0 failed=0
set -- $targets
while [ $# -gt 0 ]; do
  pids="" names=""
  for k in 1 2; do # two at a time: the CI machine has two cores
    [ $# -gt 0 ] || break
    name=${1%%:*} corpus=${1#*:}
    shift
    run "$name" "$corpus" &
    pids="$pids $!" names="$names $name"
  done
  i=0
  for p in $pids; do
    i=$((i + 1))
    name=$(echo $names | cut -d' ' -f$i)
    if wait "$p"; then
      passed=$((passed + 1))
      runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$out/$name.log" | grep -o '[0-9]*$')
      echo "ok   $name: ${runs:-?} inputs in ${secs}s"
    else
      failed=$((failed + 1))
      echo "FAIL $name (inputs kept in $out/artifacts/):"
      grep -E 'ERROR|SUMMARY|runtime error|Test unit written' "$out/$name.log" | head -n 8 | sed 's/^/     /'
    fi
  done
done
echo "fuzz: $passed checks passed, $failed failed"
[ "$failed" -eq 0 ]
