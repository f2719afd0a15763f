#!/usr/bin/env bash
# Runs every test program of one or more build folders and prints the suite's closing line.
# Each program prints "<name>: N checks passed, M failed"; a program that crashes, times out
# or prints no such line counts as one failure.
set -u
cd "$(dirname "$0")/.."
passed=0 failed=0
for build in "$@"; do
  for t in "$build"/tests/test_*; do
    [ -x "$t" ] || continue
    case "$t" in *.d|*.o) continue;; esac
    name="$build/$(basename "$t")"
    start=$(date +%s.%N)
    out=$(timeout "${NVLM_TEST_TIMEOUT:-600}" "$t" 2>&1); rc=$?
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
    else
      echo "FAIL $name ($p passed, $f failed, exit $rc, ${secs}s)"
      printf '%s\n' "$out" | grep -v -E 'checks passed' | tail -n 40 | sed 's/^/     /'
    fi
  done
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
