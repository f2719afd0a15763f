/* mkmodel.h - random-weight NVLM checkpoints of any shape, in the released layout
 * (config.json like the release's, safetensors with the release's dtype mix, tokenizer
 * files copied). Deterministic for a seed. For tests, demos and benchmarks. Internal. */
#ifndef NVLM_MODEL_MKMODEL_H
#define NVLM_MODEL_MKMODEL_H
#include "model/config.h"

typedef enum nvlm_mk_dtype {
    NVLM_MK_MIXED = 0,     /* the release: the F32 set of §2 in F32, the rest BF16 */
    NVLM_MK_MIXED_F16 = 1, /* F32 set in F32, the rest F16 */
    NVLM_MK_BF16 = 2,      /* everything BF16 */
    NVLM_MK_F16 = 3,       /* everything F16 */
    NVLM_MK_F32 = 4,       /* everything F32 */
} nvlm_mk_dtype;

#define NVLM_MK_MAX_XATTN 256

typedef struct nvlm_mkmodel_opts {
    nvlm_arch arch;
    const char *tokenizer_dir;   /* tokenizer files copied from here; NULL: none (vocab required) */
    uint64_t seed;
    int image_size, patch_size;  /* 448, 14 */
    int vit_hidden, vit_layers, vit_heads, vit_dummy_heads, vit_intermediate;
    int llm_hidden, llm_layers, llm_heads, llm_kv_heads, llm_intermediate;
    int vocab;                   /* 0: tokenizer size rounded up to a multiple of 16 */
    int n_xattn;                 /* X/H: cross_attention_layers (0: every other layer from 0) */
    int xattn_layers[NVLM_MK_MAX_XATTN];
    int projector_depth;         /* 0: 2 (NVLM-D's mlp1) */
    int xattn_intermediate;      /* 0: llm_intermediate (and the field is not written) */
    nvlm_mk_dtype dtype;
    int shards;                  /* <= 1: model.safetensors */
    int random_dummy;            /* 1: random dummy-head weights; 0: zero (as the release pads) */
} nvlm_mkmodel_opts;

/* The tiny shapes of the reference models (ViT 80/2 layers/5+3 heads/320, LLM 64/2 layers/
 * 4 heads/2 kv/160), NVLM_D, seed 0, release dtype mix, one file. */
void nvlm_mkmodel_defaults(nvlm_mkmodel_opts *o);

/* Writes the checkpoint into out_dir (created if absent; stale weights removed). The
 * result is validated by reading it back (nvlm_config_load + nvlm_st_open +
 * nvlm_check_tensors). n_params receives the parameter count (may be NULL). */
int nvlm_mkmodel(const nvlm_mkmodel_opts *o, const char *out_dir, uint64_t *n_params,
                 nvlm_err *err);
#endif
