#!/usr/bin/env bash
# `make demo-train`: trains the demo model from nothing, exactly as the shipped demo/model was
# made, and says whether the result is bit-identical to it (docs/demo.md):
#   1. `nvlm mkdata shapes` draws the training and held-out pictures (seeded);
#   2. `nvlm mkmodel` writes a random tiny NVLM-D with the bundled tokenizer (seeded);
#   3. `nvlm train` stage 1 (projector), then stage 2 (ViT + projector + LLM), seeded: 5,000 steps
#      at a constant learning rate, then --resume to step 8,000 with the rate decaying (cosine).
# The trainer is deterministic for a seed whatever the thread count; the kernels are pinned to
# the AVX2 level (NVLM_CPU=avx2), so any x86-64 with AVX2 gives the same bytes. A kernel change
# in nvlm may change the low bits of the sums, and then the weights (the script says so).
set -eu
cd "$(dirname "$0")/.."
NVLM=${NVLM:-build/nvlm}
work=${NVLM_DEMO_WORK:-build/demo-train}
threads=${NVLM_DEMO_THREADS:-$(nproc)}
export NVLM_CPU=${NVLM_CPU:-avx2}
# The recipe (docs/demo.md explains the choices).
train_n=40000 eval_n=100 max_side=512
model_shape=(--arch D --tokenizer demo/tokenizer --seed 1 --image-size 64 --patch-size 8
             --vit-hidden 192 --vit-layers 1 --vit-heads 4 --vit-dummy-heads 0 --vit-intermediate 384
             --llm-hidden 128 --llm-layers 2 --llm-heads 4 --llm-kv-heads 2 --llm-intermediate 344)
stage1=(--steps 100 --batch 16 --lr 5e-3 --warmup 10 --seed 1 --eval-every 100)
stage2=(--batch 16 --warmup 10 --weight-decay 0.01 --seed 2 --eval-every 500 --save-every 250
        --trainable 'vision_model.*,mlp1.*,language_model.*')
# stage 2 in two legs: 5,000 steps at 1e-3, then the same run resumed to 8,000 steps on the cosine
# schedule of 1e-3 over 8,000 steps (3.8e-4 at step 5,000, 1e-4 at the end), so the answers settle
stage2a=(--steps 5000 --lr 1e-3 --schedule constant)
stage2b=(--steps 8000 --lr 1e-3 --schedule cosine)

rm -rf "$work"
mkdir -p "$work"
echo "== drawing $train_n training and $eval_n held-out pictures ($work)" >&2
"$NVLM" mkdata shapes --out "$work/data" --n "$train_n" --seed 1 --max-side "$max_side"
"$NVLM" mkdata shapes --out "$work/eval" --n "$eval_n" --seed 2 --prefix eval --max-side "$max_side"
# shape-heavy: every "What shape is it?" (even lines) and the colour question of one picture in four
awk 'NR % 2 == 0 || NR % 8 == 1' "$work/data/shapes.jsonl" > "$work/data/mix.jsonl"
echo "== a random tiny NVLM-D: one 64x64 tile per picture (the whole picture, resized)" >&2
"$NVLM" mkmodel --out "$work/base" "${model_shape[@]}"
sed -i 's/"max_dynamic_patch":\t6/"max_dynamic_patch":\t1/' "$work/base/config.json"
grep -q '"max_dynamic_patch":.1,' "$work/base/config.json"
common=(--data "$work/data/mix.jsonl" --eval "$work/eval/eval.jsonl" --threads "$threads")
echo "== stage 1: the projector learns to speak to the frozen LLM" >&2
"$NVLM" train --model "$work/base" --stage 1 --out "$work/stage1" "${common[@]}" "${stage1[@]}"
echo "== stage 2: ViT + projector + LLM, 5,000 steps at lr 1e-3 (about 40 minutes on 2 cores)" >&2
"$NVLM" train --model "$work/stage1" --stage 2 --out "$work/stage2a" "${common[@]}" "${stage2[@]}" "${stage2a[@]}"
echo "== stage 2, resumed: steps 5,000-8,000, lr decaying to 1e-4 (about 25 minutes on 2 cores)" >&2
"$NVLM" train --resume "$work/stage2a" --stage 2 --out "$work/stage2" "${common[@]}" "${stage2[@]}" "${stage2b[@]}"

# the released layout (no optimizer state) and both training logs go to demo/model
mkdir -p demo/model
for f in config.json model.safetensors tokenizer.json tokenizer_config.json vocab.json merges.txt \
         special_tokens_map.json added_tokens.json; do
  cp "$work/stage2/$f" demo/model/
done
cp "$work/stage1/train_log.jsonl" demo/model/train_log_stage1.jsonl
cat "$work/stage2a/train_log.jsonl" "$work/stage2/train_log.jsonl" > demo/model/train_log_stage2.jsonl
got=$(sha256sum demo/model/model.safetensors | cut -d' ' -f1)
if [ ! -f demo/model.sha256 ]; then
  echo "$got" > demo/model.sha256
  echo "== demo/model written; its sha256 recorded in demo/model.sha256" >&2
  exit 0
fi
want=$(cat demo/model.sha256)
if [ "$got" = "$want" ]; then
  echo "== demo/model/model.safetensors is bit-identical to the shipped checkpoint (sha256 $got)" >&2
else
  echo "== demo/model/model.safetensors differs from the shipped checkpoint: sha256 $got, shipped $want" >&2
  echo "   (git checkout demo/model restores it; see docs/demo.md on what changes the bits)" >&2
  exit 1
fi
