#!/usr/bin/env bash
# The README's demo: a small NVLM-D with RANDOM weights, generated on the spot with the bundled
# tiny tokenizer, answers a question about the bundled image. It shows the whole pipeline
# (image decode, tiling, InternViT, projector, Qwen2, generation) working end to end; the answer
# itself is meaningless because the weights are random.
set -eu
cd "$(dirname "$0")/.."
NVLM=${NVLM:-build/nvlm}
model=demo/model
if [ ! -f "$model/config.json" ]; then
  echo "== generating a random-weight NVLM-D checkpoint in $model" >&2
  "$NVLM" mkmodel --out "$model" --arch D --tokenizer demo/tokenizer --seed 1 \
      --vit-hidden 64 --vit-layers 2 --vit-heads 4 --vit-intermediate 128 \
      --llm-hidden 128 --llm-layers 2 --llm-heads 4 --llm-kv-heads 2 --llm-intermediate 256
fi
echo "== nvlm info" >&2
"$NVLM" info --model "$model"
echo >&2
echo "== nvlm run: one image + one question (RANDOM WEIGHTS: expect gibberish, not a description)" >&2
"$NVLM" run --model "$model" --image demo/image.png --prompt "Describe the image in one sentence." \
    --max-new-tokens 24
echo >&2
echo "The weights above are random, so the words are too. Point --model at a real NVLM-D" >&2
echo "checkpoint folder (e.g. nvidia/NVLM-D-72B downloaded from Hugging Face) for real answers." >&2
