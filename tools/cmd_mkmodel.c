/* nvlm mkmodel - write a random-weight checkpoint of any shape (src/model/mkmodel.h). */
#include "cli.h"
#include "model/mkmodel.h"
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void help(FILE *f) {
    fprintf(f,
            "usage: nvlm mkmodel --out DIR [options]\n\n"
            "Writes a random-weight NVLM checkpoint in the released layout: config.json (fields as\n"
            "the release's), safetensors with the release's dtype mix, tokenizer files copied.\n"
            "The weights are RANDOM: the model answers gibberish. For tests, demos, benchmarks.\n\n"
            "  --out DIR                 output folder (created; old weights in it are replaced)\n"
            "  --arch D|X|H              NVLM-D (default), NVLM-X or NVLM-H\n"
            "  --tokenizer DIR           copy tokenizer.json, vocab.json, merges.txt,\n"
            "                            tokenizer_config.json, special_tokens_map.json,\n"
            "                            added_tokens.json from DIR (and size the vocabulary)\n"
            "  --seed N                  random seed (default 0); same seed, same bytes\n"
            "  --vit-hidden N            ViT width C (default 80)\n"
            "  --vit-layers N            ViT layers (default 2)\n"
            "  --vit-heads N             ViT real heads H_v (default 5)\n"
            "  --vit-dummy-heads N       ViT dummy heads D_v (default 3; the release has 7)\n"
            "  --vit-intermediate N      ViT MLP width (default 320)\n"
            "  --vit-dummy random|zero   dummy-head weights (default zero, as the release pads)\n"
            "  --image-size N            tile side S (default 448)\n"
            "  --patch-size N            ViT patch p (default 14; S/p must be even)\n"
            "  --llm-hidden N            LLM width h (default 64)\n"
            "  --llm-layers N            LLM layers (default 2)\n"
            "  --llm-heads N             query heads (default 4)\n"
            "  --llm-kv-heads N          key/value heads (default 2)\n"
            "  --llm-intermediate N      LLM MLP width, also the projector's (default 160)\n"
            "  --vocab N                 rows of embed_tokens/lm_head (default: tokenizer size\n"
            "                            rounded up to a multiple of 16)\n"
            "  --xattn-layers 0,2        X/H: cross_attention_layers (default every other layer)\n"
            "  --projector-depth N       X/H: Linear layers in mlp1 (default 2)\n"
            "  --xattn-intermediate N    X/H: cross-attention MLP width (default LLM's)\n"
            "  --dtype mixed|mixed-f16|bf16|f16|f32\n"
            "                            storage: mixed (default) = the release's mix (LLM q/k/v\n"
            "                            and ViT attention weights F32, the rest BF16);\n"
            "                            mixed-f16 = same with F16; others: every tensor\n"
            "  --shards N                N shards + model.safetensors.index.json (default 1)\n");
}

static int parse_layers(const char *s, nvlm_mkmodel_opts *o) {
    o->n_xattn = 0;
    const char *p = s;
    while (*p) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || v > 1000000 || o->n_xattn >= NVLM_MK_MAX_XATTN) return -1;
        o->xattn_layers[o->n_xattn++] = (int)v;
        if (*end == ',') end++;
        else if (*end) return -1;
        p = end;
    }
    return o->n_xattn ? 0 : -1;
}

typedef struct int_flag {
    const char *name;
    size_t off;
    long lo, hi;
} int_flag;

#define F(n, m, lo, hi) {n, offsetof(nvlm_mkmodel_opts, m), lo, hi}
static const int_flag int_flags[] = {
    F("--vit-hidden", vit_hidden, 1, 1 << 20),        F("--vit-layers", vit_layers, 1, 4096),
    F("--vit-heads", vit_heads, 1, 4096),             F("--vit-dummy-heads", vit_dummy_heads, 0, 4096),
    F("--vit-intermediate", vit_intermediate, 1, 1 << 20), F("--llm-hidden", llm_hidden, 1, 1 << 20),
    F("--llm-layers", llm_layers, 1, 4096),           F("--llm-heads", llm_heads, 1, 4096),
    F("--llm-kv-heads", llm_kv_heads, 1, 4096),       F("--llm-intermediate", llm_intermediate, 1, 1 << 20),
    F("--vocab", vocab, 1, 1 << 24),                  F("--projector-depth", projector_depth, 1, 64),
    F("--xattn-intermediate", xattn_intermediate, 1, 1 << 20), F("--shards", shards, 1, 99999),
    F("--image-size", image_size, 1, 16384),          F("--patch-size", patch_size, 1, 16384),
};

int cmd_mkmodel(int argc, char **argv) {
    nvlm_mkmodel_opts o;
    nvlm_mkmodel_defaults(&o);
    const char *out = NULL;
    int kv_given = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            help(stdout);
            return 0;
        }
        if (i + 1 >= argc) return cli_usage_error("mkmodel", "%s needs a value", a);
        const char *v = argv[++i];
        long n;
        size_t k;
        for (k = 0; k < sizeof int_flags / sizeof *int_flags; k++)
            if (!strcmp(a, int_flags[k].name)) break;
        if (k < sizeof int_flags / sizeof *int_flags) {
            if (cli_parse_int(v, int_flags[k].lo, int_flags[k].hi, &n))
                return cli_usage_error("mkmodel", "%s must be an integer in [%ld, %ld]", a, int_flags[k].lo, int_flags[k].hi);
            *(int *)((char *)&o + int_flags[k].off) = (int)n;
            if (!strcmp(a, "--llm-kv-heads")) kv_given = 1;
        } else if (!strcmp(a, "--out")) {
            out = v;
        } else if (!strcmp(a, "--tokenizer")) {
            o.tokenizer_dir = v;
        } else if (!strcmp(a, "--seed")) {
            if (cli_parse_int(v, 0, 0x7fffffffffffffffL, &n)) return cli_usage_error("mkmodel", "--seed must be a non-negative integer");
            o.seed = (uint64_t)n;
        } else if (!strcmp(a, "--arch")) {
            if (!strcmp(v, "D") || !strcmp(v, "NVLM_D")) o.arch = NVLM_ARCH_D;
            else if (!strcmp(v, "X") || !strcmp(v, "NVLM_X")) o.arch = NVLM_ARCH_X;
            else if (!strcmp(v, "H") || !strcmp(v, "NVLM_H")) o.arch = NVLM_ARCH_H;
            else return cli_usage_error("mkmodel", "--arch must be D, X or H");
        } else if (!strcmp(a, "--xattn-layers")) {
            if (parse_layers(v, &o)) return cli_usage_error("mkmodel", "--xattn-layers must be a comma-separated list of layer indices");
        } else if (!strcmp(a, "--dtype")) {
            if (!strcmp(v, "mixed")) o.dtype = NVLM_MK_MIXED;
            else if (!strcmp(v, "mixed-f16")) o.dtype = NVLM_MK_MIXED_F16;
            else if (!strcmp(v, "bf16")) o.dtype = NVLM_MK_BF16;
            else if (!strcmp(v, "f16")) o.dtype = NVLM_MK_F16;
            else if (!strcmp(v, "f32")) o.dtype = NVLM_MK_F32;
            else return cli_usage_error("mkmodel", "--dtype must be mixed, mixed-f16, bf16, f16 or f32");
        } else if (!strcmp(a, "--vit-dummy")) {
            if (!strcmp(v, "random")) o.random_dummy = 1;
            else if (!strcmp(v, "zero")) o.random_dummy = 0;
            else return cli_usage_error("mkmodel", "--vit-dummy must be random or zero");
        } else {
            return cli_usage_error("mkmodel", "unknown option %s", a);
        }
    }
    if (!out) return cli_usage_error("mkmodel", "--out DIR is required");
    if (!kv_given && o.llm_heads % o.llm_kv_heads) o.llm_kv_heads = o.llm_heads;
    if (o.arch == NVLM_ARCH_D && (o.n_xattn || o.projector_depth || o.xattn_intermediate))
        return cli_usage_error("mkmodel", "--xattn-layers, --projector-depth and --xattn-intermediate are for --arch X or H");
    nvlm_err err = {0};
    uint64_t n_params = 0;
    if (nvlm_mkmodel(&o, out, &n_params, &err)) return cli_report("mkmodel", &err);
    fprintf(stderr, "nvlm mkmodel: wrote %s: %s with %llu random parameters (seed %llu)\n", out,
            nvlm_arch_name(o.arch), (unsigned long long)n_params, (unsigned long long)o.seed);
    return 0;
}
