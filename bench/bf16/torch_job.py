"""The PyTorch side of issue 19's speed check: the reference implementation
(../shared/reference/pyref/nvlm_ref.py, float32, 1 thread) doing the whole job of
`nvlm run --max-num 1 --threads 1 -n 32`: load the checkpoint, read and tile the image,
the ViT and projector, the prompt, 32 greedy tokens, the answer. bench/bf16/run.sh torch
times this process beside nvlm's.

usage: OMP_NUM_THREADS=1 /usr/bin/python3 torch_job.py MODEL_DIR IMAGE NVLM_BINARY [TOKENS]
Prints one JSON line (prompt length, tokens generated, the stages' seconds) on stdout.
(Debian's python3-torch and libopenblas0-pthread. The reference tokenizes through Node and an
npm package; here `nvlm tokenize` encodes (it matches Hugging Face tokenizers exactly, issue 1)
and the answer is decoded from vocab.json, so the job needs nothing beyond the Debian packages.)
"""
import json
import os
import subprocess
import sys
import time

t_start = time.time()
import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
shared = os.environ.get("NVLM_SHARED", os.path.join(HERE, "..", "..", "..", "shared"))
sys.path.insert(0, os.path.join(shared, "reference", "pyref"))
import nvlm_ref as R  # noqa: E402

torch.set_num_threads(1)
model, image, nvlm = sys.argv[1], sys.argv[2], sys.argv[3]
tokens = int(sys.argv[4]) if len(sys.argv) > 4 else 32


def byte_decoder():
    """GPT-2's byte-level alphabet, inverted: the printable stand-in of each byte -> the byte."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return {c: b for b, c in enumerate(chars)}


class Tok:
    """The tokenizer calls nvlm_ref.NVLMD.chat makes: encode, decode, two special ids."""

    def __init__(self, folder):
        self.folder = folder
        added = json.load(open(os.path.join(folder, "added_tokens.json")))
        vocab = json.load(open(os.path.join(folder, "vocab.json")))
        self.special = {v: k for k, v in added.items()}
        self.piece = {v: k for k, v in vocab.items()}
        self.im_end_id = added["<|im_end|>"]
        self.img_context_id = added[R.IMG_CONTEXT]
        self.bytes_of = byte_decoder()

    def encode(self, text):
        out = subprocess.run([nvlm, "tokenize", "--model", self.folder, "--text", text],
                             capture_output=True, text=True, check=True).stdout
        return json.loads(out)["ids"]

    def decode(self, ids, skip_special_tokens=True):
        parts = []
        for i in ids:
            if i in self.special:
                if not skip_special_tokens:
                    parts.append(self.special[i].encode())
            elif i in self.piece:
                parts.append(bytes(self.bytes_of[c] for c in self.piece[i]))
        return b"".join(parts).decode("utf-8", "replace")


t0 = time.time()
m = R.NVLMD.load(model, torch.float32, tokenizer=False)
m.tok = Tok(model)
t1 = time.time()
with torch.no_grad():
    tiles, npl, _ = m.preprocess([image], 1)
    pv = R.tiles_to_pixels(tiles, torch.float32)
    t2 = time.time()
    vit = m.extract_feature(pv)
    t3 = time.time()
    ids = m.tok.encode(m.build_query("Describe the image.", npl, None, True, None))
    out, _, _ = m.generate(ids, vit, tokens)
    t4 = time.time()
    resp = m.tok.decode(out, True).split("<|im_end|>")[0].strip()
print(json.dumps({"impl": "pytorch", "torch": torch.__version__, "threads": torch.get_num_threads(),
                  "tiles": len(tiles), "prompt_len": len(ids), "generated": len(out),
                  "import_s": round(t0 - t_start, 2), "load_s": round(t1 - t0, 2),
                  "image_s": round(t2 - t1, 2), "vit_s": round(t3 - t2, 2),
                  "llm_s": round(t4 - t3, 2), "output_ids": out}))
