#!/usr/bin/env bash
# Installs the official `openai` npm package, at a pinned version, into DIR/node_modules
# (default build/npm; never under git) for tests/test_serve_openai.c, which uses it as a real
# client of `nvlm serve`. Quiet and idempotent: does nothing when that version is present.
# Without npm, or when the registry cannot be reached, it says so and exits 0: the test then
# prints a skip line, or fails when CI is set.
set -u
VERSION=6.49.0 # no dependencies; supports node 20 (7.x needs node 22)
dir=${1:-build/npm}
pkg="$dir/node_modules/openai/package.json"
if [ -f "$pkg" ] && grep -q "\"version\": \"$VERSION\"" "$pkg"; then exit 0; fi
if ! command -v npm >/dev/null 2>&1; then
  echo "tests/openai/install.sh: npm not found: test_serve_openai will be skipped" >&2
  exit 0
fi
mkdir -p "$dir"
if ! timeout 300 npm install --prefix "$dir" --no-save --no-package-lock --no-audit --no-fund \
      --ignore-scripts --loglevel=error "openai@$VERSION" >/dev/null; then
  echo "tests/openai/install.sh: npm install openai@$VERSION into $dir failed: test_serve_openai will be skipped" >&2
fi
exit 0
