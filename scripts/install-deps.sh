#!/usr/bin/env bash
# Installs the Debian packages nvlm builds and tests with (as root). Does nothing when all
# are present, so it is safe to run every time.
set -eu
pkgs="build-essential pkg-config bc libjpeg62-turbo-dev libpng-dev libdeflate-dev libwebp-dev libgif-dev
      libutf8proc-dev libcjson-dev libonig-dev libssl-dev libmicrohttpd-dev"
missing=""
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "installing:$missing" >&2
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
