"""PyTorch CPU baseline for bench/train: the reference (../shared/reference/pyref/nvlm_ref.py)
running one training step (loss, backward, AdamW) of stage 1 or 2 on the same checkpoint and
the same sequence as `nvlm train`. Prints one JSON line: tokens/s (mean of the timed steps)
and peak RSS.

usage: python3 torch_step.py MODEL_DIR IMAGE STAGE STEPS NVLM_BINARY [MAX_TILES]
(Debian's python3-torch; the prompt ids come from `nvlm tokenize`, which matches HF tokenizers.)
"""
import json
import os
import resource
import subprocess
import sys
import time
import types

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "shared", "reference", "pyref"))
import nvlm_ref as R  # noqa: E402

model, image, stage, steps, nvlm = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
max_num = int(sys.argv[6]) if len(sys.argv) > 6 else 6
torch.manual_seed(0)
m = R.NVLMD.load(model, torch.float32, tokenizer=False)
ids_of = lambda text: json.loads(subprocess.run([nvlm, "tokenize", "--model", model, "--text", text],
                                                capture_output=True, text=True, check=True).stdout)["ids"]
m.tok = types.SimpleNamespace(img_context_id=ids_of("<|vision_pad|>")[0])
tiles, npl, _ = m.preprocess([image], max_num)
prefix = m.build_query("<image>\nDescribe the picture.", npl, history=[], has_images=True)
full = prefix + "A picture used to measure training throughput.<|im_end|>"
ids, pids = ids_of(full), ids_of(prefix)
ex = dict(ids=ids, labels=[-100] * len(pids) + ids[len(pids):], pixel_values=R.tiles_to_pixels(tiles, torch.float32))
names = sorted(k for k in m.W if k.startswith("mlp1.") or (stage == 2 and k.startswith("language_model.")))
for k in names:
    m.W[k].requires_grad_(True)
opt = torch.optim.AdamW([m.W[k] for k in names], lr=1e-5)
times = []
for s in range(steps + 1):
    t = time.time()
    opt.zero_grad()
    loss = m.loss([ex])
    loss.backward()
    opt.step()
    times.append(time.time() - t)
dt = sum(times[1:]) / steps  # the first step warms up
print(json.dumps({"impl": "pytorch", "stage": stage, "tokens": len(ids), "tokens_per_s": len(ids) / dt,
                  "step_s": dt, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                  "threads": torch.get_num_threads()}))
