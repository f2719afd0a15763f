#!/usr/bin/env bash
# Installs the Debian packages nvlm builds and tests with (as root). clang: the libFuzzer
# targets that `make check` runs briefly (fuzz/ci.sh). Open MPI (libopenmpi-dev, openmpi-bin)
# gives the nvlm binary its multi-process mode (docs/distributed.md). Does nothing when all
# are present, so it is safe to run every time.
# Optional (not needed to build on x86): the aarch64 cross compiler and user-mode qemu, with
# which scripts/check-neon.sh (part of tests/run.sh) builds and runs the NEON kernels' test;
# without them that check is skipped. NVLM_NO_NEON_DEPS=1 leaves them out.
set -eu
pkgs="build-essential pkg-config bc libjpeg62-turbo-dev libpng-dev libdeflate-dev libwebp-dev libgif-dev
      libutf8proc-dev libcjson-dev libonig-dev libssl-dev libmicrohttpd-dev libcurl4-openssl-dev clang libedit-dev
      libopenmpi-dev openmpi-bin"
neon_pkgs="gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static"
missing="" neon_missing=""
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ "${NVLM_NO_NEON_DEPS:-0}" != 1 ]; then
  for p in $neon_pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || neon_missing="$neon_missing $p"
  done
fi
[ -z "$missing$neon_missing" ] && exit 0
echo "installing:$missing$neon_missing" >&2
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
$SUDO apt-get update -qq
[ -z "$missing" ] || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
[ -z "$neon_missing" ] || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $neon_missing ||
  echo "optional packages not installed:$neon_missing (the NEON check will be skipped)" >&2
