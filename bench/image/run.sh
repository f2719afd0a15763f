#!/usr/bin/env bash
# Image pipeline benchmark: nvlm vs Pillow 9.4 + torchvision (Debian python3-pil,
# python3-torchvision), same inputs, same run.
#   bench/image/run.sh [BUILD_DIR] [RUNS]     (BUILD_DIR default: build, needs libnvlm.a)
# Makes bench_4000x3000.jpg (12 MP, q90) and bench_3840x2160.png (4K, level 6) in a temp
# folder, times Pillow + torchvision (one thread) and nvlm on one thread and on two
# (nvlm_images_load_tile: decode and resize overlapped), median of RUNS after a warm-up,
# interleaved so that machine load affects all alike, and prints the ratios of wall time
# (and, for one thread, of CPU time).
set -eu
cd "$(dirname "$0")/../.."
build=${1:-build}
runs=${2:-5}
py=/usr/bin/python3  # Debian's python3 with python3-pil / python3-torchvision
shared=${NVLM_SHARED:-../shared}
[ -f "$build/libnvlm.a" ] || { echo "run: no $build/libnvlm.a (make BUILD=$build first)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$py" bench/image/make_inputs.py "$shared/reference/images" "$tmp"
cc -O2 -std=c11 -D_GNU_SOURCE -Iinclude bench/image/bench_image.c "$build/libnvlm.a" \
   $(make -s --no-print-directory BUILD="$build" ldlibs) -o "$tmp/bench_image"
nproc_info=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
echo "cpu: $nproc_info, $(nproc) cores; load: $(cut -d' ' -f1-3 /proc/loadavg)"
best() { # best (lowest) of the medians in the given lines for "wall" or "CPU"
  sed -E "s/.*$1 median ([0-9.]+) ms.*/\\1/" | sort -g | head -1
}
for f in "$tmp/bench_4000x3000.jpg" "$tmp/bench_3840x2160.png"; do
  a1=$("$tmp/bench_image" -r "$runs" -t 1 "$f")
  a2=$("$tmp/bench_image" -r "$runs" -t 2 "$f")
  theirs=$("$py" bench/image/bench_pillow.py "$shared/reference/gen/images" "$runs" 6 "$f")
  b2=$("$tmp/bench_image" -r "$runs" -t 2 "$f")
  b1=$("$tmp/bench_image" -r "$runs" -t 1 "$f")
  printf 'nvlm:   %s\nnvlm:   %s\nnvlm:   %s\nnvlm:   %s\n%s\n' "$a1" "$b1" "$a2" "$b2" "$theirs"
  # best of our two medians against Pillow's median
  w1=$(printf '%s\n%s\n' "$a1" "$b1" | best wall)
  c1=$(printf '%s\n%s\n' "$a1" "$b1" | best CPU)
  w2=$(printf '%s\n%s\n' "$a2" "$b2" | best wall)
  pw=$(echo "$theirs" | sed -E 's/.*wall_ms ([0-9.]+).*/\1/')
  pc=$(echo "$theirs" | sed -E 's/.*cpu_ms ([0-9.]+).*/\1/')
  printf '%s: Pillow+torchvision / nvlm, 1 thread = %.2fx wall (%s / %s ms), %.2fx CPU (%s / %s ms); 2 threads = %.2fx wall (%s ms)\n' \
    "$(basename "$f")" "$(echo "$pw / $w1" | bc -l)" "$pw" "$w1" "$(echo "$pc / $c1" | bc -l)" "$pc" "$c1" \
    "$(echo "$pw / $w2" | bc -l)" "$w2"
done
