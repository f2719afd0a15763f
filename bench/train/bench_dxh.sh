#!/usr/bin/env bash
# NVLM-D vs NVLM-X vs NVLM-H training on equal terms: the same LLM and ViT shapes and weights
# (nvlm mkmodel, same seed; X/H add gated cross-attention blocks), the same synthetic VQA data
# (a coloured block on a grey 3:2 image, cut into 6 tiles + thumbnail; "what colour" / "which
# side"), the same steps, batch, learning rates and seed. Stage 1 then stage 2 (20% text-only
# samples mixed in) with held-out evaluation; prints the table and writes the plot.
#   bench/train/bench_dxh.sh [BUILD] [THREADS]
# Env: TILE (tile side, default 168 -> 36 tokens per tile), S1, S2 (steps: 12, 30), BATCH (4),
#      NTRAIN / NEVAL (images: 16 / 12). Throughput is taken over the steps after the first
# epoch of each stage, when every image's frozen ViT features are cached (the ViT runs once
# per image, identically for D, X and H).
set -eu
cd "$(dirname "$0")/../.."
BUILD=${1:-build}; THREADS=${2:-2}; N=$BUILD/nvlm
TILE=${TILE:-168}; S1=${S1:-12}; S2=${S2:-30}; BATCH=${BATCH:-4}; NTRAIN=${NTRAIN:-16}; NEVAL=${NEVAL:-12}
W=${NVLM_BENCH_DIR:-${TMPDIR:-/tmp}/nvlm_bench_dxh}; mkdir -p "$W"
TOK=tests/data/reference/tiny-tokenizer
VIT="--image-size $TILE --patch-size 14 --vit-hidden 64 --vit-layers 2 --vit-heads 4 --vit-dummy-heads 0 --vit-intermediate 256"
LLM="--llm-hidden 128 --llm-layers 4 --llm-heads 4 --llm-kv-heads 2 --llm-intermediate 344"

python3 - "$W" "$TILE" "$NTRAIN" "$NEVAL" <<'PY'
import json, os, random, struct, sys
w, tile, ntrain, neval = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
cols = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 60, 230), "yellow": (230, 220, 30)}
rnd = random.Random(7)
def bmp(path, W, H, block, rgb):
    row = (W * 3 + 3) & ~3
    x0, y0, x1, y1 = block
    with open(path, "wb") as f:
        f.write(b"BM" + struct.pack("<IHHI", 54 + row * H, 0, 0, 54) +
                struct.pack("<IiiHHIIiiII", 40, W, H, 1, 24, 0, row * H, 0, 0, 0, 0))
        grey = bytes([125, 125, 125]) * W
        for y in range(H - 1, -1, -1):
            line = bytearray(grey)
            if y0 <= y < y1:
                line[3 * x0:3 * x1] = bytes([rgb[2], rgb[1], rgb[0]]) * (x1 - x0)
            f.write(bytes(line) + b"\0" * (row - 3 * W))
def make(name, n, first):
    with open(os.path.join(w, name), "w") as f:
        for i in range(n):
            W, H = 3 * tile, 2 * tile
            c = rnd.choice(sorted(cols)); side = rnd.randrange(2)
            bw, bh = rnd.randrange(W // 8, W // 3), rnd.randrange(H // 6, H // 2)
            x0 = (W // 2 + rnd.randrange(W // 2 - bw)) if side else rnd.randrange(W // 2 - bw)
            y0 = rnd.randrange(H - bh)
            img = "img%04d.bmp" % (first + i)
            if not os.path.exists(os.path.join(w, img)):
                bmp(os.path.join(w, img), W, H, (x0, y0, x0 + bw, y0 + bh), cols[c])
            q, a = (("What colour is the block?", c) if i % 2 == 0 else
                    ("Which side is the block on?", "right" if side else "left"))
            f.write(json.dumps({"image": img, "conversations": [{"from": "human", "value": "<image>\n" + q},
                                                               {"from": "gpt", "value": a}]}) + "\n")
make("train.jsonl", ntrain, 0)
make("eval.jsonl", neval, 1000)
with open(os.path.join(w, "text.jsonl"), "w") as f:
    for q, a in [("Say hello.", "hello"), ("Count to three.", "one two three"), ("Name a fruit.", "apple")]:
        f.write(json.dumps({"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}) + "\n")
PY

for a in D X H; do
  extra=""; [ $a != D ] && extra="--xattn-layers 0,2 --projector-depth 2"
  [ -f "$W/base-$a/config.json" ] || $N mkmodel --out "$W/base-$a" --arch $a --tokenizer "$TOK" --seed 1 $VIT $LLM $extra >/dev/null 2>&1
  rm -rf "$W/s1-$a" "$W/s2-$a"
  /usr/bin/time -f '%M' -o "$W/rss1-$a" $N train --model "$W/base-$a" --data "$W/train.jsonl" --stage 1 --out "$W/s1-$a" \
      --steps $S1 --batch $BATCH --lr 3e-3 --warmup 2 --threads $THREADS --max-tiles 6 --seed 3 \
      --eval "$W/eval.jsonl" --eval-every 4 2>/dev/null
  /usr/bin/time -f '%M' -o "$W/rss2-$a" $N train --model "$W/s1-$a" --data "$W/train.jsonl" --stage 2 --out "$W/s2-$a" \
      --steps $S2 --batch $BATCH --lr 2e-3 --warmup 2 --threads $THREADS --max-tiles 6 --seed 3 \
      --text-data "$W/text.jsonl" --text-ratio 0.2 --weight-decay 0.01 --eval "$W/eval.jsonl" --eval-every 6 2>/dev/null
  echo "$a done" >&2
done
$N plot "D=$W/s2-D/train_log.jsonl" "X=$W/s2-X/train_log.jsonl" "H=$W/s2-H/train_log.jsonl" -o "$W/dxh_stage2.svg"
$N plot "D=$W/s1-D/train_log.jsonl" "X=$W/s1-X/train_log.jsonl" "H=$W/s1-H/train_log.jsonl" -o "$W/dxh_stage1.svg"

python3 - "$W" "$BATCH" "$NTRAIN" "$TILE" <<'PY'
import json, statistics, sys
w, batch, ntrain, tile = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def stats(a, s):
    rows = [json.loads(l) for l in open("%s/s%d-%s/train_log.jsonl" % (w, s, a))]
    steps = [r for r in rows if "loss" in r]
    ev = [r for r in rows if "eval_acc" in r]
    # steps that start in epoch >= 1 see only cached ViT features
    timed = [r for p, r in zip(steps, steps[1:]) if p["epoch"] >= 1] or steps[1:]
    sps = batch * len(timed) / sum(r["step_s"] for r in timed)
    tps = sum(r["tokens_per_s"] * r["step_s"] for r in timed) / sum(r["step_s"] for r in timed)
    rss = int(open("%s/rss%d-%s" % (w, s, a)).read().split()[-1]) // 1024
    return sps, tps, steps[-1]["loss"], ev[-1]["eval_loss"], ev[-1]["eval_acc"], rss
print("tiles 6+1 of %dpx (%d tokens each); batch %d; throughput after the first epoch (ViT features cached)" %
      (tile, (tile // 28) ** 2, batch))
print("%-6s %-5s %10s %9s %12s %11s %10s %9s %8s %7s" % ("stage", "arch", "samples/s", "vs D", "dec tok/s",
      "train loss", "eval loss", "eval acc", "RSS MB", ""))
for s in (1, 2):
    base = stats("D", s)[0]
    for a in "DXH":
        sps, tps, loss, el, acc, rss = stats(a, s)
        print("%-6d %-5s %10.2f %8.2fx %12.0f %11.3f %10.3f %9.2f %8d" % (s, a, sps, sps / base, tps, loss, el, acc, rss))
print("paper (34B, SFT): X 1.76x, H 1.26x D's throughput")
print("plots: %s/dxh_stage1.svg %s/dxh_stage2.svg" % (w, w))
PY
