#!/usr/bin/env bash
# Runs every test program of one or more build folders and prints the suite's closing line.
# Each program prints "<name>: N checks passed, M failed"; a program that crashes, times out
# or prints no such line counts as one failure. Once per run, in the first build folder that is
# not a sanitizer build, scripts/check-neon.sh cross-compiles the NEON kernels and their test
# for aarch64 and runs it under qemu (skipped, 0 checks, without the toolchain;
# NVLM_NEON_CHECK=0 leaves it out). Then fuzz/ci.sh runs each libFuzzer target briefly.
set -u
cd "$(dirname "$0")/.."
passed=0 failed=0

# run_one NAME CMD...: runs one program and adds its counts.
run_one() {
  local name=$1
  shift
  local start out rc secs line p f
  start=$(date +%s.%N)
  out=$(timeout "${NVLM_TEST_TIMEOUT:-600}" "$@" 2>&1); rc=$?
  secs=$(printf '%.1f' "$(echo "$(date +%s.%N) - $start" | bc)")
  line=$(printf '%s\n' "$out" | grep -E '^[A-Za-z0-9_./-]+: [0-9]+ checks passed, [0-9]+ failed$' | tail -n 1)
  if [ -n "$line" ]; then
    p=$(echo "$line" | sed -E 's/.*: ([0-9]+) checks passed, ([0-9]+) failed/\1/')
    f=$(echo "$line" | sed -E 's/.*: ([0-9]+) checks passed, ([0-9]+) failed/\2/')
  else
    p=0 f=0
  fi
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
  passed=$((passed + p)) failed=$((failed + f))
  if [ "$f" -eq 0 ]; then
    echo "ok   $name ($p checks, ${secs}s)"
    printf '%s\n' "$out" | grep -E '^neon check skipped|kernel levels skipped' | sed 's/^/     /'
  else
    echo "FAIL $name ($p passed, $f failed, exit $rc, ${secs}s)"
    printf '%s\n' "$out" | grep -v -E 'checks passed' | tail -n 40 | sed 's/^/     /'
  fi
}

neon_build=""
for build in "$@"; do
  for t in "$build"/tests/test_*; do
    [ -x "$t" ] || continue
    case "$t" in *.d|*.o) continue;; esac
    run_one "$build/$(basename "$t")" "$t"
  done
  if [ -z "$neon_build" ] && [ -f "$build/libnvlm.a" ] && ! grep -q -a -F __asan_init "$build/libnvlm.a"; then
    neon_build=$build
  fi
done
if [ -n "$neon_build" ] && [ "${NVLM_NEON_CHECK:-1}" != 0 ]; then
  run_one "$neon_build/aarch64/check-neon" scripts/check-neon.sh "$neon_build/aarch64" --all
fi
# Once per run: every libFuzzer target for NVLM_FUZZ_SECONDS (default 15) on its committed
# corpus (fuzz/ci.sh; skipped without clang, or with NVLM_FUZZ_SECONDS=0).
if [ -n "$neon_build" ]; then
  run_one build-fuzz/fuzz fuzz/ci.sh build-fuzz
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
