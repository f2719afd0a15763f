#!/bin/bash
# bench/llamacpp/run.sh LLAMA_BUILD_DIR [NVLM_BUILD] [MODEL_DIR]
#
# nvlm beside llama.cpp on one random Qwen2-0.5B-shaped text model (the LLM of an NVLM-D
# checkpoint), F16 / BF16 / Q8_0 / 4-bit (BF16 is a second checkpoint of the same shape, made
# with `nvlm mkmodel --dtype bf16`, copied bit for bit into a BF16 GGUF): prompt (pp512) and generation (tg128) tokens/s at 1 and 2
# threads, measured in the same run, format by format (llama.cpp then nvlm), and one table with
# the ratios nvlm / llama.cpp. See README.md beside this file for how to get a llama.cpp build.
#
#   LLAMA_BUILD_DIR  a CMake build of llama.cpp with llama-bench and llama-quantize (bin/ or .);
#                    its CMakeCache.txt names the source tree whose gguf-py converts the model
#   NVLM_BUILD       nvlm build folder holding the `nvlm` binary (default: build)
#   MODEL_DIR        NVLM-D checkpoint folder; made with `nvlm mkmodel` if it has no config.json
#                    (default: $WORK/q05-f16)
# environment: WORK (default /tmp/nvlm-llamacpp: GGUFs, logs), REPS (llama-bench -r, default 2),
#   THREADS (default 2: measures 1 and THREADS), PROMPT (512), GEN (128), LLAMA_SRC (overrides
#   the source tree), SKIP_CHECK=1 (skip the greedy-token cross-check).
set -euo pipefail

die() { echo "run.sh: $*" >&2; exit 1; }
[ $# -ge 1 ] || die "usage: bench/llamacpp/run.sh LLAMA_BUILD_DIR [NVLM_BUILD] [MODEL_DIR]"
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
LB=$(cd "$1" && pwd) || die "no folder $1"
NB=${2:-build}
case "$NB" in /*) ;; *) NB="$REPO/$NB" ;; esac
WORK=${WORK:-/tmp/nvlm-llamacpp}
MD=${3:-$WORK/q05-f16}
REPS=${REPS:-2}
THREADS=${THREADS:-2}
PROMPT=${PROMPT:-512}
GEN=${GEN:-128}
PY=/usr/bin/python3

find_bin() { for d in "$LB/bin" "$LB"; do [ -x "$d/$1" ] && { echo "$d/$1"; return 0; }; done; return 1; }
LBENCH=$(find_bin llama-bench) || die "no llama-bench in $LB/bin or $LB"
LQUANT=$(find_bin llama-quantize) || die "no llama-quantize in $LB/bin or $LB"
LSIMPLE=$(find_bin llama-simple || true)
NVLM="$NB/nvlm"
[ -x "$NVLM" ] || die "no $NVLM (build it: make -j2 BUILD=${2:-build})"
[ -x "$PY" ] || die "$PY is missing (Debian's python3 with numpy: apt-get install python3-numpy)"
"$PY" -c 'import numpy' 2>/dev/null || die "numpy missing for $PY (apt-get install python3-numpy)"
SRC=${LLAMA_SRC:-$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$LB/CMakeCache.txt" 2>/dev/null || true)}
if [ -z "$SRC" ] || [ ! -d "$SRC/gguf-py/gguf" ]; then
    die "cannot find llama.cpp's gguf-py (set LLAMA_SRC=<checkout>)"
fi
COMMIT=$(git -C "$SRC" rev-parse --short=9 HEAD 2>/dev/null || echo unknown)
mkdir -p "$WORK"
LOG="$WORK/log-$(date -u +%Y%m%d-%H%M%S)"
mkdir -p "$LOG"
T0=$(date +%s)
say() { printf '[%4ds] %s\n' $(( $(date +%s) - T0 )) "$*" >&2; }

# 1. the checkpoint (random weights, Qwen2-0.5B's LLM shape, F16, tiny ViT)
# mkmodel_as DIR DTYPE: the random checkpoint in DIR unless it is there
mkmodel_as() {
    [ -f "$1/config.json" ] && return 0
    say "making $1 (nvlm mkmodel --dtype $2)"
    "$NVLM" mkmodel --out "$1" --tokenizer "$REPO/tests/data/reference/tokenizer" --dtype "$2" \
        --llm-hidden 896 --llm-layers 24 --llm-heads 14 --llm-kv-heads 2 --llm-intermediate 4864 \
        --vit-hidden 64 --vit-layers 1 --vit-heads 4 --vit-dummy-heads 0 --vit-intermediate 128 \
        > "$LOG/mkmodel-$2.txt" 2>&1 || die "nvlm mkmodel --dtype $2 failed (see $LOG/mkmodel-$2.txt)"
}
mkmodel_as "$MD" f16
# 1b. the BF16 checkpoint: the same shape with BF16 matrices (random like the F16 one; the speed of
# a format does not depend on the values). Beside MD, named after it.
MB="${MD%/}-bf16"
mkmodel_as "$MB" bf16

# 2. the same LLM as GGUF, then llama.cpp's Q8_0 and Q4_0 of it (remade when older than the model).
# Q4_0 keeps token_embd and output at Q8_0, as nvlm's q4 policy does (llama.cpp would pick Q6_K/
# Q8_0 for output.weight itself): the 4-bit rows then differ only in the layer matrices' format.
NAME=$(basename "$MD")
G16="$WORK/$NAME-f16.gguf" G8="$WORK/$NAME-q8_0.gguf" G4="$WORK/$NAME-q4_0.gguf"
GB="$WORK/$(basename "$MB")-bf16.gguf"
newer() { [ -f "$1" ] && [ "$1" -nt "$2" ] && [ "$1" -nt "$HERE/to_gguf.py" ]; }
weights_of() { # DIR -> its first *.safetensors
    for w in "$1"/*.safetensors; do [ -f "$w" ] && { echo "$w"; return 0; }; done
    die "no *.safetensors in $1"
}
# to_gguf DIR OUT: the folder's LLM as a GGUF, bit for bit, unless OUT is newer than its weights
to_gguf() {
    local w
    w=$(weights_of "$1") || exit 1
    newer "$2" "$w" && return 0
    say "converting $1 -> $2"
    PYTHONPATH="$SRC/gguf-py" nice -n 5 "$PY" "$HERE/to_gguf.py" "$1" "$2.tmp" > "$LOG/to_gguf-$(basename "$2").txt" 2>&1 ||
        die "to_gguf.py failed on $1 (see $LOG/to_gguf-$(basename "$2").txt)"
    mv "$2.tmp" "$2"
}
WEIGHTS=$(weights_of "$MD")
to_gguf "$MD" "$G16"
to_gguf "$MB" "$GB"
if ! newer "$G8" "$G16"; then
    say "llama-quantize Q8_0"
    "$LQUANT" "$G16" "$G8.tmp" Q8_0 2 > "$LOG/quant-q8_0.txt" 2>&1 || die "llama-quantize failed ($LOG/quant-q8_0.txt)"
    mv "$G8.tmp" "$G8"
fi
if ! newer "$G4" "$G16"; then
    say "llama-quantize Q4_0"
    "$LQUANT" --output-tensor-type q8_0 --token-embedding-type q8_0 "$G16" "$G4.tmp" Q4_0 2 \
        > "$LOG/quant-q4_0.txt" 2>&1 || die "llama-quantize failed ($LOG/quant-q4_0.txt)"
    mv "$G4.tmp" "$G4"
fi

# 3. greedy-token cross-check: the same chat prompt, 32 greedy tokens, both engines, F16.
# llama-simple gets nvlm's chat layout as text (special tokens parsed); llama-tokenize, when
# built, shows that both engines make the same prompt ids of it.
CHECK="skipped (no llama-simple in $LB)"
if [ -n "${SKIP_CHECK:-}" ]; then
    CHECK="skipped (SKIP_CHECK)"
elif [ -n "$LSIMPLE" ]; then
    say "greedy cross-check (llama-simple vs nvlm run, F16)"
    Q="Écris un poème sur la mer, s'il te plaît. 1234567"
    CHAT=$(printf '<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n%s<|im_end|><|im_start|>assistant\nx' "$Q")
    CHAT=${CHAT%x} # keep the final newline that $(...) would strip
    "$NVLM" run -m "$MD" -p "$Q" -n 32 -t "$THREADS" --json -q > "$LOG/check-nvlm.json" 2> "$LOG/check-nvlm.err" || true
    "$LSIMPLE" -m "$G16" -n 32 "$CHAT" > "$LOG/check-llama.txt" 2> "$LOG/check-llama.err" || true
    LTOK=$(find_bin llama-tokenize || true)
    if [ -n "$LTOK" ]; then
        "$LTOK" -m "$G16" -p "$CHAT" --ids --log-disable 2> /dev/null | tail -1 > "$LOG/check-llama-ids.txt" || true
    fi
    CHECK=$(CHAT="$CHAT" "$PY" - "$LOG" <<'PYEOF'
import json, os, sys
log = sys.argv[1]
try:
    nv = json.load(open(os.path.join(log, "check-nvlm.json"), encoding="utf-8"))
    ll = open(os.path.join(log, "check-llama.txt"), encoding="utf-8", errors="replace").read()
except Exception as e:
    print("FAILED to run (%s; see %s)" % (e, log)); sys.exit()
chat = os.environ["CHAT"]
if not ll.startswith(chat):
    print("FAILED: llama-simple did not echo the prompt (see %s)" % log); sys.exit()
ll = ll[len(chat):]
ll = ll[:-1] if ll.endswith("\n") else ll
ids = "prompt ids not compared (no llama-tokenize)"
try:
    lids = json.loads(open(os.path.join(log, "check-llama-ids.txt")).read())
    ids = "same %d prompt ids" % len(lids) if lids == nv["prompt_ids"] else "DIFFERENT prompt ids"
except (OSError, ValueError):
    pass
n = len(nv["output_ids"])
if ll == nv["response"]:
    print("SAME text of %d greedy tokens (%s); %s" % (n, nv["finish_reason"], ids))
else:
    print("DIFFERENT: nvlm %r vs llama.cpp %r; %s" % (nv["response"], ll, ids))
PYEOF
)
    say "cross-check: $CHECK"
fi

# 4. the machine's limits (nvlm's probes), then the formats, llama.cpp and nvlm back to back
say "machine limits (nvlm bench --quick)"
"$NVLM" bench --quick -t "$THREADS" > "$LOG/limits.txt" 2>&1 || true
TLIST=1
[ "$THREADS" -gt 1 ] && TLIST="1,$THREADS"
# nvlm's quantized folders (`nvlm quantize`, as llama.cpp's files are made once; loading them is
# the same in-memory format as --weights q8_0|q4 at load, without quantizing 0.6 B weights twice
# per run). Reused while newer than the weights and loadable by this nvlm (the format may change).
nvlm_qdir() { # $1 = q8_0|q4|q4_0 -> prints the folder
    local d="$WORK/$NAME-nvlm-$1"
    if ! { [ "$d/model.safetensors" -nt "$WEIGHTS" ] && "$NVLM" info --model "$d" > /dev/null 2>&1; }; then
        say "nvlm quantize --type $1"
        rm -rf "$d"
        "$NVLM" quantize --model "$MD" --out "$d" --type "$1" > "$LOG/nvlm-quantize-$1.txt" 2>&1 ||
            say "nvlm quantize $1 failed (see $LOG/nvlm-quantize-$1.txt)"
    fi
    echo "$d"
}
N8=$(nvlm_qdir q8_0)
N4=$(nvlm_qdir q4)
N40=$(nvlm_qdir q4_0)
nvlm_bench() { # $1 = label, $2 = model folder, $3... = more flags: as llama-bench, pp and tg apart (tg from an empty cache), REPS runs
    local label=$1 dir=$2
    shift 2
    : > "$LOG/nvlm-$label-pp.txt"
    : > "$LOG/nvlm-$label-tg.txt"
    for _ in $(seq "$REPS"); do
        "$NVLM" bench --model "$dir" --no-kernels --prompt "$PROMPT" --gen 1 -t "$THREADS" "$@" >> "$LOG/nvlm-$label-pp.txt" 2>&1 &&
            "$NVLM" bench --model "$dir" --no-kernels --prompt 1 --gen "$GEN" -t "$THREADS" "$@" >> "$LOG/nvlm-$label-tg.txt" 2>&1 || return 1
    done
}
for f in f16 bf16 q8_0 q4_0 q4; do
    case $f in f16) g=$G16 m=$MD ;; bf16) g=$GB m=$MB ;; q8_0) g=$G8 m=$N8 ;; q4_0) g=$G4 m=$N40 ;; q4) g=$G4 m=$N4 ;; esac
    if [ "$f" = q4 ]; then # nvlm's 5-bit q4 against the same llama.cpp Q4_0 run
        cp "$LOG/llama-q4_0.csv" "$LOG/llama-q4.csv" 2> /dev/null || true
    else
        say "$f: llama-bench -m $(basename "$g") -p $PROMPT -n $GEN -t $TLIST -r $REPS"
        "$LBENCH" -m "$g" -p "$PROMPT" -n "$GEN" -t "$TLIST" -r "$REPS" -o csv \
            > "$LOG/llama-$f.csv" 2> "$LOG/llama-$f.err" || say "llama-bench $f failed (see $LOG/llama-$f.err)"
        echo "after llama-bench $f: $(uptime)" >> "$LOG/uptime.txt"
    fi
    say "$f: nvlm bench --model $(basename "$m") -t $THREADS: --prompt $PROMPT --gen 1, then --prompt 1 --gen $GEN; $REPS times"
    if ! nvlm_bench "$f" "$m"; then
        if [ "$m" != "$MD" ] && [ "$m" != "$MB" ]; then # a stale quantized folder: remake it once
            touch -d @0 "$m/model.safetensors" 2> /dev/null || true
            m=$(nvlm_qdir "${f}")
            nvlm_bench "$f" "$m" || say "nvlm bench $f failed (see $LOG/nvlm-$f-*.txt)"
        else
            say "nvlm bench $f failed (see $LOG/nvlm-$f-*.txt)"
        fi
    fi
    echo "after nvlm bench $f:  $(uptime)" >> "$LOG/uptime.txt"
    if [ "$f" != f16 ]; then # the same folder with `--compute bf16`: prefill's MLP through vdpbf16ps, as
        # llama.cpp's prefill rounds activations (BF16 to BF16, Q8_0/Q4_0 to 8-bit integers)
        say "$f: nvlm bench --compute bf16, the same runs"
        nvlm_bench "${f}c" "$m" --compute bf16 || say "nvlm bench --compute bf16 failed (see $LOG/nvlm-${f}c-*.txt)"
        cp "$LOG/llama-$f.csv" "$LOG/llama-${f}c.csv" 2> /dev/null || true
    fi
done
say "measured in $(( $(date +%s) - T0 )) s"

# 5. the table
"$PY" - "$LOG" "$COMMIT" "$CHECK" "$PROMPT" "$GEN" <<'EOF'
import csv, os, re, sys
log, commit, check, P, G = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])

def llama(f):  # (threads, 'pp'|'tg') -> (avg t/s, stddev)
    out = {}
    try:
        for r in csv.DictReader(open(os.path.join(log, "llama-%s.csv" % f))):
            kind = "pp" if int(r["n_prompt"]) > 0 else "tg"
            out[(int(r["n_threads"]), kind)] = (float(r["avg_ts"]), float(r["stddev_ts"]))
    except (OSError, KeyError, ValueError):
        pass
    return out

def nvlm(f):  # (threads, 'pp'|'tg') -> mean t/s of the runs
    runs = {}
    for kind, what in (("pp", "prompt"), ("tg", "generation")):
        t = None
        try:
            for line in open(os.path.join(log, "nvlm-%s-%s.txt" % (f, kind))):
                m = re.match(r"model .* (\d+) thread\(s\)", line)
                if m: t = int(m.group(1))
                m = re.match(r"\s+%s: \d+ tokens in [\d.]+ s = ([\d.]+) tok/s" % what, line)
                if m and t: runs.setdefault((t, kind), []).append(float(m.group(1)))
        except OSError:
            pass
    return {k: sum(v) / len(v) for k, v in runs.items()}

rows = [("f16", "F16", "F16"), ("bf16", "BF16", "BF16"), ("bf16c", "BF16", "BF16 compute bf16"), ("q8_0", "Q8_0", "Q8_0"),
        ("q8_0c", "Q8_0", "Q8_0 compute bf16"), ("q4_0", "Q4_0*", "Q4_0*"), ("q4_0c", "Q4_0*", "Q4_0 compute bf16"),
        ("q4", "Q4_0 4.5b/w*", "Q4_1 5.0b/w"), ("q4c", "Q4_0 4.5b/w*", "Q4_1 compute bf16")]
print("nvlm vs llama.cpp %s, random Qwen2-0.5B-shaped LLM (h 896, 24 layers, 14/2 heads, ffn 4864, "
      "vocab 151680, untied lm_head)" % commit)
for line in open(os.path.join(log, "limits.txt"), errors="replace"):
    if line.startswith("machine limits") or line.startswith("cpu:"): print(line.rstrip())
print()
hdr = "%-6s %-15s %-17s %3s | %9s %9s %6s | %9s %9s %6s" % (
    "format", "llama.cpp type", "nvlm type", "thr", "ll pp%d" % P, "nv pp%d" % P, "ratio",
    "ll tg%d" % G, "nv tg%d" % G, "ratio")
print(hdr); print("-" * len(hdr))
for f, lt, nt in rows:
    L, N = llama(f), nvlm(f)
    for t in sorted({k[0] for k in list(L) + list(N)}):
        cells = []
        for k in ("pp", "tg"):
            l, n = L.get((t, k)), N.get((t, k))
            cells += ["%9s" % ("%.1f" % l[0] if l else "-"), "%9s" % ("%.1f" % n if n else "-"),
                      "%6s" % ("%.2f" % (n / l[0]) if l and n else "-")]
        print("%-6s %-15s %-17s %3d | %s %s %s | %s %s %s" % ((f, lt, nt, t) + tuple(cells)))
print("""
ratio = nvlm / llama.cpp tokens/s (> 1: nvlm faster). llama.cpp: llama-bench mean of -r reps after
a warm-up; pp = one %d-token batch, tg = %d tokens from an empty cache. nvlm: `nvlm bench` on the
folder `nvlm quantize` wrote, mean of the same number of runs, no warm-up (weights read in
untimed); pp = one %d-token prompt, tg = %d tokens after a 1-token prompt, as llama-bench's.
4-bit (*): the layer matrices at 4 bits, token_embd/embed_tokens and output/lm_head at Q8_0 in
both. Q4_0 is the same 18-byte block (4.5 bits/weight) in both (each quantizer picks its own
scales); nvlm's q4 is Q4_1-style, 5 bits/weight (20-byte blocks, scale and minimum), against the
same llama.cpp Q4_0 run. Q8_0 is the same 34-byte block in both.
bf16c, q8_0c, q4_0c, q4c: the same folder with `nvlm bench --compute bf16` (the LLM's MLP in prefill
through vdpbf16ps, activations and weights rounded to BF16; generation unchanged), against the
same llama.cpp run, which rounds prefill activations too (BF16, or 8-bit integers for Q8_0/Q4_0).
greedy cross-check (F16, 32 tokens): %s""" % (P, G, P, G, check))
print("load (uptime after each step):")
for line in open(os.path.join(log, "uptime.txt")): print("  " + " ".join(line.split()))
print("logs: " + log)
EOF
say "done"
