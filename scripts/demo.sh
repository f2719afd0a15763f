#!/usr/bin/env bash
# The README's demo (`make demo`): a tiny NVLM-D that nvlm trained itself (scripts/demo-train.sh:
# `nvlm mkdata shapes` pictures, `nvlm train` stage 1 then stage 2), shipped in demo/model, looks
# at demo/image.png and answers; then how to chat with it, its training curve, and where the
# real model comes in. See docs/demo.md.
set -eu
cd "$(dirname "$0")/.."
NVLM=${NVLM:-build/nvlm}
model=demo/model
out=build/demo
mkdir -p "$out"
if [ ! -f "$model/model.safetensors" ]; then
  echo "== $model is missing: training it again (scripts/demo-train.sh, a few minutes)" >&2
  scripts/demo-train.sh
fi

say() { printf '\n== %s\n' "$*"; }

say "nvlm info: a tiny NVLM-D (InternViT + MLP projector + Qwen2) in the released layout"
"$NVLM" info --model "$model" | sed -n '1,/^parameters/p;/total/p'

say "nvlm run: two questions about demo/image.png"
for q in "What colour is the shape?" "What shape is it?"; do
  printf '%s  ->  ' "$q"
  "$NVLM" run --model "$model" --image demo/image.png --prompt "$q" --quiet
done

say "nvlm chat: the same through stdin (at a terminal: line editing, history, /help)"
# the tiny model was trained on one question per conversation: /reset starts a new one
printf '%s\n' "/image demo/image.png" "What colour is the shape?" "/save $out/conversation.json" "/reset" \
    "/image demo/image.png" "What shape is it?" "/quit" | tee "$out/chat-input.txt" | sed 's/^/  you> /'
"$NVLM" chat --model "$model" --quiet < "$out/chat-input.txt" 2>&1 | sed 's/^/  nvlm> /'
cat <<EOF
  Try it yourself:   $NVLM chat --model $model
  then type  /image demo/image.png  and ask; /help lists /system, /reset, /tiles, /save, /quit.
  A saved conversation goes on with:  $NVLM run --model $model --history $out/conversation.json \\
      --image demo/image.png --prompt "What colour is the shape?"
EOF

say "nvlm plot: how it learned"
"$NVLM" plot "stage 1=$model/train_log_stage1.jsonl" "stage 2=$model/train_log_stage2.jsonl" -o "$out/training.svg"
echo "  training curve (loss, and exact match on held-out pictures): $out/training.svg"

cat <<EOF

== What this is
  A TINY model ($(du -h "$model/model.safetensors" | cut -f1) of weights) trained for about 80 minutes on synthetic pictures:
  one filled circle, square or triangle, red, green, blue, yellow or black, on white. It
  answers "What colour is the shape?" and "What shape is it?" and nothing else. On held-out
  pictures of another generator it names the colour 40 times of 40 and the shape 39 of 40
  (400 pictures: 98.5% and 95.5%): see docs/demo.md, "Status". It shows every part of nvlm working on trained weights: tiling,
  InternViT, projector, Qwen2, and both training stages.
  Reproduce it bit for bit: make demo-train (docs/demo.md).

  For real answers, point --model at the released NVLM-D-72B (README: "Running the released
  NVLM-D-72B"):   $NVLM run --model /path/to/NVLM-D-72B --mmap --image photo.jpg \\
                      --prompt "Describe the image."
EOF
