#!/usr/bin/env bash
# Cross-checks nvlm against the PyTorch reference (../shared/reference/pyref/nvlm_ref.py) on a
# random NVLM-D of a shape the shared cases do not have (odd widths, random dummy heads, F16),
# two images and a multi-image question: prompt length, greedy ids, response and logits.
# Not part of the suite: needs Debian's python3-torch and python3-pil (for /usr/bin/python3) and
# node with @anush008/tokenizers (NODE_PATH; bench/tokenizer/run.sh installs it).
# usage: scripts/crosscheck_pyref.sh [BUILD] [SEED]
set -eu
cd "$(dirname "$0")/.."
build=${1:-build} seed=${2:-7}
shared=${NVLM_SHARED:-../shared}
ref=$(cd "$shared/reference" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$build/nvlm" mkmodel --out "$tmp/model" --tokenizer "$ref/tiny-tokenizer" --seed "$seed" \
    --vit-hidden 96 --vit-heads 6 --vit-dummy-heads 2 --vit-dummy random --vit-intermediate 200 --vit-layers 3 \
    --llm-hidden 96 --llm-heads 6 --llm-kv-heads 2 --llm-intermediate 176 --llm-layers 3 --dtype mixed-f16 >/dev/null
q=$'Image-1: <image>\nImage-2: <image>\nCompare them.'
imgs=("$ref/images/skimage_coffee.png" "$ref/images/grid_500x200.png")
(cd "$ref" && /usr/bin/python3 - "$tmp" "$q" "${imgs[@]}" <<'PY'
import json, sys
sys.path.insert(0, 'pyref')
import nvlm_ref as R
tmp, q, imgs = sys.argv[1], sys.argv[2], sys.argv[3:]
m = R.NVLMD.load(tmp + '/model')
r = m.chat(imgs, q, max_num=6, max_new_tokens=12, return_details=True)
r['logits'].numpy().astype('<f4').tofile(tmp + '/ref.f32')
json.dump({'prompt_ids': r['prompt_ids'], 'output_ids': r['output_ids'], 'response': r['response'],
           'num_patches_list': r['num_patches_list']}, open(tmp + '/ref.json', 'w'))
PY
)
"$build/nvlm" run -q --model "$tmp/model" --image "${imgs[0]}" --image "${imgs[1]}" --prompt "$q" \
    --max-new-tokens 12 --json --logits-out "$tmp/ours.f32" > "$tmp/ours.json"
/usr/bin/python3 - "$tmp" <<'PY'
import json, sys
import numpy as np
tmp = sys.argv[1]
a, b = json.load(open(tmp + '/ours.json')), json.load(open(tmp + '/ref.json'))
ok = True
for k in ('prompt_ids', 'output_ids', 'response', 'num_patches_list'):
    same = a[k] == b[k]
    ok &= same
    print('%-17s %s' % (k, 'equal' if same else 'DIFFERENT'))
d = float(np.abs(np.fromfile(tmp + '/ours.f32', '<f4') - np.fromfile(tmp + '/ref.f32', '<f4')).max())
print('logits max abs diff %.3g (bound 5e-4)' % d)
sys.exit(0 if ok and d <= 5e-4 else 1)
PY
