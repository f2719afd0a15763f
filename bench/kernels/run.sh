#!/usr/bin/env bash
# GEMM/GEMV per kernel level at 1 and 2 threads beside the measured peaks (bench_kernels.c):
#   bench/kernels/run.sh [REPS] [--cpu-time]
# BUILD (environment, default build) must hold libnvlm.a (make BUILD=... first). Figures of a
# shared machine: note the load average it prints; compare rows of one run, not runs.
set -eu
cd "$(dirname "$0")/../.."
build=${BUILD:-build}
[ -f "$build/libnvlm.a" ] || { echo "run: no $build/libnvlm.a (make BUILD=$build first)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cc -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -Werror -Iinclude -Isrc bench/kernels/bench_kernels.c "$build/libnvlm.a" \
   $(make -s --no-print-directory ldlibs) -o "$tmp/bench_kernels"
"$tmp/bench_kernels" "$@"
