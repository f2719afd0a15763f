#!/usr/bin/env bash
# Training throughput and peak memory: nvlm train vs PyTorch CPU (the reference pyref) on the
# same random checkpoint and the same one-image sequence, stage 1 and stage 2.
#   bench/train/bench_train.sh [BUILD] [SIZE]     SIZE: tiny (default) | small | 0.5b
# 0.5b = Qwen2-0.5B-sized LLM (h 896, 24 layers, 14/2 heads, I 4864) with an InternViT-300M-sized
# encoder (1024, 24 layers, 16 heads, I 4096): hours per step on 2 cores; run it on a big machine.
set -eu
cd "$(dirname "$0")/../.."
BUILD=${1:-build}; SIZE=${2:-tiny}; N=$BUILD/nvlm
W=${TMPDIR:-/tmp}/nvlm_bench_train_$SIZE; mkdir -p "$W"
TOK=tests/data/reference/tiny-tokenizer
IMG=tests/data/reference/images/skimage_astronaut.png
THREADS=${THREADS:-$(nproc)}
STEPS=${STEPS:-3}
case $SIZE in
  tiny)  ARGS="" ;;
  small) ARGS="--vit-hidden 256 --vit-layers 4 --vit-heads 4 --vit-intermediate 1024 --llm-hidden 256 --llm-layers 4 --llm-heads 8 --llm-kv-heads 2 --llm-intermediate 1024" ;;
  0.5b)  ARGS="--vit-hidden 1024 --vit-layers 24 --vit-heads 16 --vit-intermediate 4096 --llm-hidden 896 --llm-layers 24 --llm-heads 14 --llm-kv-heads 2 --llm-intermediate 4864" ;;
  *) echo "unknown size $SIZE" >&2; exit 2 ;;
esac
[ -f "$W/model/config.json" ] || $N mkmodel --out "$W/model" --tokenizer "$TOK" $ARGS >/dev/null
printf '{"image": "%s", "conversations": [{"from": "human", "value": "<image>\\nDescribe the picture."}, {"from": "gpt", "value": "A picture used to measure training throughput."}]}\n' "$(realpath $IMG)" > "$W/data.jsonl"
for stage in 1 2; do
  rm -rf "$W/out$stage"
  /usr/bin/time -f '%M' -o "$W/rss$stage" $N train --model "$W/model" --data "$W/data.jsonl" --stage $stage \
      --out "$W/out$stage" --steps $((STEPS + 1)) --lr 1e-5 --threads $THREADS --max-tiles 1 2>/dev/null
  python3 - "$W/out$stage/train_log.jsonl" "$W/rss$stage" $stage <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l][1:]
tps = sum(r["tokens_per_s"] for r in rows) / len(rows)
print(json.dumps({"impl": "nvlm", "stage": int(sys.argv[3]), "tokens_per_s": round(tps, 1),
                  "peak_rss_mb": int(open(sys.argv[2]).read().split()[-1]) // 1024}))
PY
  OMP_NUM_THREADS=$THREADS /usr/bin/python3 bench/train/torch_step.py "$W/model" "$IMG" $stage $STEPS "$N" 1
done
