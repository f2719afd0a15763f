#!/usr/bin/env bash
# Image pipeline benchmark: nvlm vs Pillow 9.4 + torchvision (Debian python3-pil,
# python3-torchvision), same inputs, same run, one thread each.
#   bench/image/run.sh [BUILD_DIR] [RUNS]     (BUILD_DIR default: build, needs libnvlm.a)
# Makes bench_4000x3000.jpg (12 MP, q90) and bench_3840x2160.png (4K, level 6) in a temp
# folder, times both pipelines (median of RUNS after a warm-up), interleaving them so that
# machine load affects both alike, and prints the ratios of wall time and of CPU time.
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
   $(pkg-config --libs libpng libjpeg libwebp libwebpdemux libgif libcrypto) -lm -lpthread \
   -o "$tmp/bench_image"
nproc_info=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
echo "cpu: $nproc_info, $(nproc) cores; load: $(cut -d' ' -f1-3 /proc/loadavg)"
for f in "$tmp/bench_4000x3000.jpg" "$tmp/bench_3840x2160.png"; do
  ours=$("$tmp/bench_image" -r "$runs" "$f")
  theirs=$("$py" bench/image/bench_pillow.py "$shared/reference/gen/images" "$runs" 6 "$f")
  ours2=$("$tmp/bench_image" -r "$runs" "$f")
  echo "nvlm:   $ours"
  echo "nvlm:   $ours2"
  echo "$theirs"
  # best of our two medians against Pillow's median, wall and CPU
  ow=$(printf '%s\n%s\n' "$ours" "$ours2" | sed -E 's/.*wall median ([0-9.]+) ms.*/\1/' | sort -g | head -1)
  oc=$(printf '%s\n%s\n' "$ours" "$ours2" | sed -E 's/.*CPU median ([0-9.]+) ms.*/\1/' | sort -g | head -1)
  pw=$(echo "$theirs" | sed -E 's/.*wall_ms ([0-9.]+).*/\1/')
  pc=$(echo "$theirs" | sed -E 's/.*cpu_ms ([0-9.]+).*/\1/')
  printf '%s: Pillow+torchvision / nvlm = %.2fx wall (%s / %s ms), %.2fx CPU (%s / %s ms)\n' \
    "$(basename "$f")" "$(echo "$pw / $ow" | bc -l)" "$pw" "$ow" "$(echo "$pc / $oc" | bc -l)" "$pc" "$oc"
done
