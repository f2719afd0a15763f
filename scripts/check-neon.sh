#!/usr/bin/env bash
# The NEON kernels on an x86 machine: cross-compiles src/kernels (with the dtype traits table),
# src/core and tests/test_kernels.c for aarch64 (static, -O2, -Wall -Wextra
# -Werror, C11) and runs the test under user-mode qemu, which compares every NEON kernel with
# its scalar reference (odd shapes, 1 vs 3 threads bit for bit). qemu says nothing about speed.
# With --all it first compiles every src/ and tools/ file for aarch64 (-Werror), one check per
# file; a file that needs a library's arm64 headers that are not installed (jconfig.h,
# opensslconf.h...) is reported and skipped, not failed.
# With --san the test is built with -fsanitize=address,undefined (linked dynamically: qemu -L;
# LeakSanitizer does not run under qemu, so detect_leaks=0). Slower: not part of the suite.
# Prints "check-neon: N checks passed, M failed" (tests/run.sh adds it to the suite), or
# "neon check skipped: <what is missing>" and exits 0 when the toolchain is absent
# (scripts/install-deps.sh installs it).
# usage: scripts/check-neon.sh [OUT_DIR] [--all] [--san]
set -u
cd "$(dirname "$0")/.."
out=build-neon-aarch64 all=0 san=0
for a in "$@"; do
  case "$a" in
  --all) all=1 ;;
  --san) san=1 ;;
  *) out=$a ;;
  esac
done
cc=${NVLM_AARCH64_CC:-aarch64-linux-gnu-gcc}
qemu=""
for q in qemu-aarch64 qemu-aarch64-static; do
  command -v "$q" >/dev/null 2>&1 && { qemu=$q; break; }
done
missing=""
command -v "$cc" >/dev/null 2>&1 || missing="$cc (Debian: gcc-aarch64-linux-gnu libc6-dev-arm64-cross)"
[ -n "$qemu" ] || missing="${missing:+$missing, }qemu-aarch64 (Debian: qemu-user or qemu-user-static)"
if [ -z "$missing" ] && ! echo 'int main(void){return 0;}' | "$cc" -static -x c - -o /dev/null 2>/dev/null; then
  missing="a static aarch64 C library (Debian: libc6-dev-arm64-cross)"
fi
if [ -n "$missing" ]; then
  echo "neon check skipped: $missing"
  exit 0
fi

cflags="-std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -O2 -Iinclude -Isrc -ffunction-sections -fdata-sections"
link=-static qemu_args=()
if [ "$san" = 1 ]; then # the shared libraries from Debian's cross packages
  out=$out-san link="" cflags="$cflags -g -fsanitize=address,undefined -fno-sanitize-recover=undefined"
  qemu_args=(-L "${QEMU_LD_PREFIX:-/usr/aarch64-linux-gnu}")
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0}
fi
mkdir -p "$out/obj" "$out/all"

# pkg-config's include folders are the x86 ones; the cross compiler also searches /usr/include,
# so only headers generated per architecture are missing
pkg_cflags=$(pkg-config --cflags libpng libdeflate libjpeg libwebp libwebpdemux libgif libutf8proc libcjson oniguruma libcrypto libmicrohttpd 2>/dev/null)
passed=0 failed=0

# compile SRC OBJ [FLAGS...]: 0 ok, 1 error, 2 missing arm64 header (message in OBJ.err)
compile() {
  local src=$1 obj=$2
  shift 2
  # shellcheck disable=SC2086 # flag lists
  if "$cc" $cflags $* -c "$src" -o "$obj" 2>"$obj.err"; then return 0; fi
  grep -qE "fatal error: [^ ]+\.h: No such file" "$obj.err" && return 2
  return 1
}
export -f compile
export cc cflags

# compile_all OBJ_DIR FLAGS < list of sources: prints "rc src obj" per file, two at a time
# (the machine's 2 cores)
compile_all() {
  local dir=$1
  shift
  xargs -P 2 -I{} bash -c 'src={}; obj='"$dir"'/$(echo "${src%.c}" | tr / _).o; compile "$src" "$obj" '"$*"'; echo "$? $src $obj"'
}

if [ "$all" = 1 ]; then # (the test's own sources are compiled below)
  res=$(ls src/*/*.c tools/*.c | grep -vE '^src/(kernels|core)/' |
    compile_all "$out/all" "$pkg_cflags")
  while read -r rc src obj; do
    case $rc in
    0) passed=$((passed + 1)) ;;
    2) echo "skipped $src: $(grep -oE '[^ ]+\.h: No such file' "$obj.err" | head -n 1) for aarch64" ;;
    *) failed=$((failed + 1)); echo "FAIL compile $src (aarch64)"; sed 's/^/     /' "$obj.err" | head -n 20 ;;
    esac
  done <<<"$(printf '%s\n' "$res" | sort -k2)"
fi

# the test needs the kernels (the dtype table is kernels/dtype.c) and core (nvlm_err)
srcs="$(ls src/kernels/*.c src/core/*.c src/dist/*.c)" # dist: the tensor-parallel hook of nvlm_matmul (no MPI here)
res=$(printf '%s\n' $srcs | compile_all "$out/obj")
objs="" build_ok=1
while read -r rc src obj; do
  objs="$objs $obj"
  if [ "$rc" = 0 ]; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1)) build_ok=0
    echo "FAIL compile $src (aarch64)"; sed 's/^/     /' "$obj.err" | head -n 20
  fi
done <<<"$(printf '%s\n' "$res" | sort -k2)"
bin=$out/test_kernels
# -fno-tree-vectorize for the test program only (the kernels keep their flags): gcc 12's aarch64
# vectorizer dies with an internal compiler error (vect_transform_reduction) on test_kernels' main
if [ "$build_ok" = 1 ] && "$cc" $cflags -fno-tree-vectorize -Itests tests/test_kernels.c $objs $link -Wl,--gc-sections -lm -lpthread -o "$bin" 2>"$bin.err"; then
  passed=$((passed + 1))
  tout=$(timeout "${NVLM_NEON_TIMEOUT:-300}" "$qemu" "${qemu_args[@]}" "$bin" 2>&1); rc=$?
  line=$(printf '%s\n' "$tout" | grep -E '^test_kernels: [0-9]+ checks passed, [0-9]+ failed$' | tail -n 1)
  printf '%s\n' "$tout" | grep -E '^cpu:|^FAIL' | sed 's/^/aarch64 /'
  if [ -n "$line" ]; then
    p=$(echo "$line" | sed -E 's/.*: ([0-9]+) checks passed, ([0-9]+) failed/\1/')
    f=$(echo "$line" | sed -E 's/.*: ([0-9]+) checks passed, ([0-9]+) failed/\2/')
    echo "aarch64 $line (under $qemu)"
  else
    p=0 f=0
  fi
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
    f=1
    echo "FAIL aarch64 test_kernels: exit $rc under $qemu"
    printf '%s\n' "$tout" | tail -n 20 | sed 's/^/     /'
  fi
  passed=$((passed + p)) failed=$((failed + f))
elif [ "$build_ok" = 1 ]; then
  failed=$((failed + 1))
  echo "FAIL link test_kernels (aarch64)"; sed 's/^/     /' "$bin.err" | head -n 20
fi
echo "check-neon: $passed checks passed, $failed failed"
[ "$failed" -eq 0 ]
