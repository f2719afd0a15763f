#!/usr/bin/env bash
# Tokenizer benchmark: nvlm vs Hugging Face tokenizers (npm @anush008/tokenizers 0.6.0) on the
# same texts in the same run. Usage: bench/tokenizer/run.sh [BUILD_DIR] [TOKENIZER_DIR]
# Needs node + npm (installs the reference into BUILD_DIR/bench-node once) and the library
# objects of BUILD_DIR (make BUILD=BUILD_DIR).
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
TOK=${2:-tests/data/reference/tokenizer}
OUT=$BUILD/bench-tokenizer
mkdir -p "$OUT"
python3 bench/tokenizer/prepare.py "$OUT/texts"
# our side: compiled against the library's own objects (core + tokenizer), so that it does
# not depend on the rest of the tree building
make -s BUILD="$BUILD" $(ls src/core/*.c src/tokenizer/*.c | sed "s|^|$BUILD/|; s|\.c$|.o|")
cc -O2 -Iinclude bench/tokenizer/bench_tok.c $BUILD/src/core/*.o $BUILD/src/tokenizer/*.o \
   $(pkg-config --libs libutf8proc libcjson) -lm -o "$OUT/bench_tok"
if [ ! -d "$BUILD/bench-node/node_modules/@anush008/tokenizers" ]; then
  mkdir -p "$BUILD/bench-node"
  cp ../shared/reference/gen/tokenizer/package.json "$BUILD/bench-node/" 2>/dev/null ||
    echo '{"private": true, "dependencies": {"@anush008/tokenizers": "0.6.0"}}' > "$BUILD/bench-node/package.json"
  (cd "$BUILD/bench-node" && npm install --no-audit --no-fund >/dev/null)
fi
echo "== nvlm"
"$OUT/bench_tok" "$TOK" "$OUT/texts" | tee "$OUT/nvlm.txt"
echo "== Hugging Face tokenizers (@anush008/tokenizers 0.6.0)"
NODE_PATH="$BUILD/bench-node/node_modules" node bench/tokenizer/bench_hf.js "$TOK" "$OUT/texts" | tee "$OUT/hf.txt"
echo "== ratios (nvlm / HF; load: HF / nvlm)"
python3 - "$OUT/nvlm.txt" "$OUT/hf.txt" <<'PY'
import sys
def read(p):
    return {l.split()[0]: float(l.split()[1]) for l in open(p) if l.strip()}
a, b = read(sys.argv[1]), read(sys.argv[2])
goal = {'prose': 5, 'code': 5, 'cjk': 5, 'doc1mb': 1.5}
for k in a:
    if k == 'load':
        print(f"load: nvlm {a[k]:.1f} ms, HF {b[k]:.1f} ms, {b[k] / a[k]:.1f}x faster (goal: < 100 ms)")
    else:
        r = a[k] / b[k]
        print(f"{k}: nvlm {a[k]:.2f} MB/s, HF {b[k]:.2f} MB/s, {r:.1f}x (goal {goal[k]}x: {'met' if r >= goal[k] else 'NOT met'})")
PY
