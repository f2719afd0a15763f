#!/usr/bin/env bash
# Refreshes tests/data/ (the test data kept in the repository) from the shared reference folder
# it was copied from: scripts/sync-testdata.sh [SHARED], SHARED defaulting to $NVLM_SHARED or ../shared.
# It copies shared/reference/ to tests/data/reference/ without what no test reads (the
# generators in gen/ and the PyTorch reference in pyref/), replacing what was there.
set -eu
cd "$(dirname "$0")/.."
src=${1:-${NVLM_SHARED:-../shared}}
if [ ! -d "$src/reference" ]; then
  echo "sync-testdata: no $src/reference; give the shared folder as the argument or set NVLM_SHARED" >&2
  exit 1
fi
rm -rf tests/data/reference
mkdir -p tests/data/reference
(cd "$src/reference" && tar cf - --exclude=./gen --exclude=./pyref .) | tar xf - -C tests/data/reference --no-same-owner
chmod -R u+w,go-w tests/data/reference
du -sh tests/data/reference
