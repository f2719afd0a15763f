#!/usr/bin/python3
"""to_gguf.py - write the language model of an nvlm checkpoint folder as a llama.cpp GGUF.

usage: PYTHONPATH=LLAMA_SRC/gguf-py /usr/bin/python3 to_gguf.py MODEL_DIR OUT.gguf

MODEL_DIR is a folder in the released NVLM-D layout (config.json with llm_config,
*.safetensors, tokenizer.json), e.g. one made by `nvlm mkmodel`. The output is a GGUF of
architecture "qwen2" holding the SAME weights (F16/BF16 matrices copied bit for bit, vectors
widened to F32, which is exact) and the SAME vocabulary (Qwen2 byte-level BPE: tokens, merges,
added tokens; padded to the config's vocab_size as convert_hf_to_gguf.py does), so llama.cpp and
nvlm can be compared on one model. Only the LLM is written: the ViT and projector are skipped.

Safetensors are read with numpy directly (8-byte little-endian header length, JSON header,
data), memory-mapped: nothing beyond one tensor is held in memory at a time.
"""
import json
import os
import sys

import numpy as np

try:
    import gguf
except ImportError:
    sys.exit("to_gguf.py: cannot import gguf; set PYTHONPATH=<llama.cpp checkout>/gguf-py")

ST_DTYPES = {"F16": (np.float16, gguf.GGMLQuantizationType.F16),
             "BF16": (np.uint16, gguf.GGMLQuantizationType.BF16),
             "F32": (np.float32, gguf.GGMLQuantizationType.F32)}


def fail(msg):
    sys.exit("to_gguf.py: " + msg)


def read_safetensors(folder):
    """name -> (dtype string, shape, memmapped uint8 bytes) over every *.safetensors file."""
    out = {}
    files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    if not files:
        fail("no *.safetensors in " + folder)
    for f in files:
        path = os.path.join(folder, f)
        with open(path, "rb") as fp:
            n = int.from_bytes(fp.read(8), "little")
            if n <= 0 or n > 100 << 20:
                fail("%s: header length %d is not plausible" % (path, n))
            header = json.loads(fp.read(n))
        data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
        for name, info in header.items():
            if name == "__metadata__":
                continue
            a, b = info["data_offsets"]
            out[name] = (info["dtype"], tuple(info["shape"]), data[a:b], path)
    return out


def tensor_array(tensors, name, want_f32=False):
    """The tensor as a numpy array (a view of the mapping when no conversion is asked)."""
    if name not in tensors:
        fail("tensor %s is missing" % name)
    dt, shape, raw, path = tensors[name]
    if dt not in ST_DTYPES:
        fail("tensor %s in %s has dtype %s (expected F16, BF16 or F32; quantized nvlm folders "
             "are not convertible: convert the float original)" % (name, path, dt))
    npt, qt = ST_DTYPES[dt]
    arr = raw.view(npt).reshape(shape)
    if want_f32:
        if dt == "BF16":  # bf16 is the top half of an f32: exact widening
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        else:
            arr = arr.astype(np.float32)
        return arr, gguf.GGMLQuantizationType.F32
    return arr, qt


def add_weights(w, tensors, cfg):
    L = "language_model.model."
    tied = bool(cfg.get("tie_word_embeddings", False))

    def put(gname, hfname):
        arr, qt = tensor_array(tensors, hfname, want_f32=(len(tensors[hfname][1]) == 1))
        if qt == gguf.GGMLQuantizationType.BF16:
            w.add_tensor(gname, arr, raw_shape=arr.shape, raw_dtype=qt)
        else:
            w.add_tensor(gname, arr)

    put("token_embd.weight", L + "embed_tokens.weight")
    for j in range(cfg["num_hidden_layers"]):
        p, b = "%slayers.%d." % (L, j), "blk.%d." % j
        put(b + "attn_norm.weight", p + "input_layernorm.weight")
        for g, h in (("attn_q", "q_proj"), ("attn_k", "k_proj"), ("attn_v", "v_proj")):
            put(b + g + ".weight", p + "self_attn." + h + ".weight")
            put(b + g + ".bias", p + "self_attn." + h + ".bias")
        put(b + "attn_output.weight", p + "self_attn.o_proj.weight")
        put(b + "ffn_norm.weight", p + "post_attention_layernorm.weight")
        put(b + "ffn_gate.weight", p + "mlp.gate_proj.weight")
        put(b + "ffn_up.weight", p + "mlp.up_proj.weight")
        put(b + "ffn_down.weight", p + "mlp.down_proj.weight")
    put("output_norm.weight", L + "norm.weight")
    if not tied or "language_model.lm_head.weight" in tensors:
        put("output.weight", "language_model.lm_head.weight")


def add_vocab(w, folder, n_vocab, cfg):
    path = os.path.join(folder, "tokenizer.json")
    try:
        with open(path, encoding="utf-8") as f:
            tok = json.load(f)
    except (OSError, ValueError) as e:
        fail("%s: %s" % (path, e))
    model = tok.get("model", {})
    if model.get("type") != "BPE":
        fail("%s: model.type is %r, expected BPE (Qwen2)" % (path, model.get("type")))
    tokens = [None] * n_vocab
    types = [gguf.TokenType.NORMAL] * n_vocab
    for text, i in model["vocab"].items():
        if i >= n_vocab:
            fail("%s: token %r has id %d >= vocab_size %d" % (path, text, i, n_vocab))
        tokens[i] = text
    for a in tok.get("added_tokens", []):
        i = a["id"]
        if i >= n_vocab:
            fail("%s: added token %r has id %d >= vocab_size %d" % (path, a["content"], i, n_vocab))
        tokens[i] = a["content"]
        types[i] = gguf.TokenType.CONTROL if a.get("special") else gguf.TokenType.USER_DEFINED
    for i in range(n_vocab):  # the embedding rows past the tokenizer (151680 > 151665)
        if tokens[i] is None:
            tokens[i] = "[PAD%d]" % i
            types[i] = gguf.TokenType.UNUSED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    ids = {t: i for i, t in enumerate(tokens)}
    eos = ids.get("<|im_end|>", cfg.get("eos_token_id", 151645))
    w.add_bos_token_id(cfg.get("bos_token_id", ids.get("<|endoftext|>", 151643)))
    w.add_eos_token_id(eos)
    w.add_eot_token_id(eos)
    if "<|endoftext|>" in ids:
        w.add_pad_token_id(ids["<|endoftext|>"])
    w.add_add_bos_token(False)  # Qwen2 puts no BOS in front; nvlm neither


def main():
    if len(sys.argv) != 3:
        fail("usage: to_gguf.py MODEL_DIR OUT.gguf")
    folder, out = sys.argv[1], sys.argv[2]
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            root = json.load(f)
    except (OSError, ValueError) as e:
        fail("%s/config.json: %s" % (folder, e))
    cfg = root.get("llm_config") or root.get("text_config")
    if not cfg:
        fail("%s/config.json has no llm_config" % folder)
    if root.get("model_type") != "NVLM_D":
        print("to_gguf.py: note: model_type %r: only the self-attention LLM is written "
              "(NVLM-X/H cross-attention layers are dropped)" % root.get("model_type"), file=sys.stderr)
    tensors = read_safetensors(folder)
    emb = tensors.get("language_model.model.embed_tokens.weight")
    if emb is None:
        fail("language_model.model.embed_tokens.weight is missing in " + folder)
    n_vocab, hidden = emb[1]
    heads = cfg["num_attention_heads"]
    rs = cfg.get("rope_scaling")
    if rs and (rs.get("type") or rs.get("rope_type")) == "dynamic":
        # Dynamic NTK only changes RoPE past max_position_embeddings: same model below it.
        print("to_gguf.py: note: rope_scaling dynamic (factor %s) not written; identical below %d "
              "positions" % (rs.get("factor"), cfg.get("max_position_embeddings", 32768)),
              file=sys.stderr)

    w = gguf.GGUFWriter(out, "qwen2")
    w.add_name(os.path.basename(os.path.normpath(folder)) + " (LLM of an nvlm checkpoint)")
    w.add_context_length(cfg.get("max_position_embeddings", 32768))
    w.add_embedding_length(hidden)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(cfg.get("num_key_value_heads", heads))
    w.add_rope_freq_base(float(cfg.get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
    ftype = {"F16": gguf.LlamaFileType.MOSTLY_F16, "BF16": gguf.LlamaFileType.MOSTLY_BF16,
             "F32": gguf.LlamaFileType.ALL_F32}.get(emb[0], gguf.LlamaFileType.MOSTLY_F16)
    w.add_file_type(ftype)
    add_vocab(w, folder, n_vocab, cfg)
    add_weights(w, tensors, cfg)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print("to_gguf.py: wrote %s (%d layers, hidden %d, vocab %d)"
          % (out, cfg["num_hidden_layers"], hidden, n_vocab), file=sys.stderr)


if __name__ == "__main__":
    main()
