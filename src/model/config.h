/* config.h - an NVLM config.json (NVLM_D, NVLM_X, NVLM_H) as the engine uses it.
 * See docs/spec.md §1 and §12 for every field. Internal. */
#ifndef NVLM_MODEL_CONFIG_H
#define NVLM_MODEL_CONFIG_H
#include "nvlm.h"
#include <stdint.h>

typedef enum nvlm_arch { NVLM_ARCH_D = 0, NVLM_ARCH_X = 1, NVLM_ARCH_H = 2 } nvlm_arch;

typedef struct nvlm_vision_config {
    int hidden_size;          /* C */
    int intermediate_size;    /* I_v */
    int num_heads;            /* H_v (real heads) */
    int num_dummy_heads;      /* D_v from the optional field; -1 when absent (derive from qkv) */
    int num_layers;
    int image_size;
    int patch_size;
    int num_channels;
    float layer_norm_eps;
    int qk_normalization;     /* must be 1 */
    int qkv_bias;             /* ignored by the release (no bias tensor) */
    char norm_type[16];       /* "rms_norm" */
    char hidden_act[16];      /* "gelu" */
} nvlm_vision_config;

typedef struct nvlm_llm_config {
    int hidden_size;          /* h */
    int intermediate_size;    /* I */
    int num_heads;            /* n_h */
    int num_kv_heads;         /* n_kv */
    int num_layers;
    int vocab_size;           /* V, rows of embed_tokens / lm_head */
    float rms_norm_eps;
    double rope_theta;
    int max_position_embeddings;
    char rope_scaling_type[16]; /* "" when none, else e.g. "dynamic" */
    double rope_scaling_factor; /* 1 when none */
    int tie_word_embeddings;
    int bos_token_id, eos_token_id; /* -1 when absent */
    char hidden_act[16];      /* "silu" */
} nvlm_llm_config;

typedef struct nvlm_config {
    nvlm_arch arch;
    int image_size;           /* force_image_size or vision_config.image_size: tile side S */
    double downsample_ratio;  /* 0.5 */
    char ps_version[8];       /* "v2" */
    int select_layer;         /* -1 */
    char template_name[32];   /* "chatml" */
    int dynamic_image_size, use_thumbnail;
    int min_dynamic_patch, max_dynamic_patch;
    nvlm_vision_config vision;
    nvlm_llm_config llm;
    /* NVLM-X / NVLM-H only (zero / NULL for D): */
    int num_xattn;            /* len(cross_attention_layers) */
    int *xattn_layers;        /* malloc'ed, strictly increasing LLM layer indices */
    int projector_depth;      /* Linear layers in mlp1; 2 for NVLM-D */
    int xattn_intermediate_size; /* default llm.intermediate_size */
} nvlm_config;

/* Parses and validates <dir>/config.json (field checks only; tensors are checked by the
 * loader). Errors name the file and the field. */
int nvlm_config_load(const char *dir, nvlm_config *cfg, nvlm_err *err);
/* Same from a JSON text in memory; `origin` names it in errors. */
int nvlm_config_parse(const char *json, size_t len, const char *origin, nvlm_config *cfg,
                      nvlm_err *err);
void nvlm_config_free(nvlm_config *cfg);
const char *nvlm_arch_name(nvlm_arch a);

/* Derived sizes. */
static inline int nvlm_cfg_head_dim(const nvlm_config *c) { return c->llm.hidden_size / c->llm.num_heads; }
static inline int nvlm_cfg_vit_head_dim(const nvlm_config *c) { return c->vision.hidden_size / c->vision.num_heads; }
static inline int nvlm_cfg_patches_per_side(const nvlm_config *c) { return c->image_size / c->vision.patch_size; }
/* Tokens per tile after pixel shuffle: (S/p)^2 * r^2 = 256 for the release. */
static inline int nvlm_cfg_tokens_per_tile(const nvlm_config *c) {
    int g = nvlm_cfg_patches_per_side(c) / 2;
    return g * g;
}

/* Parameter counts computed from the config alone (what `nvlm info` prints). The vision
 * dummy heads come from num_dummy_heads, or 7 (the release's hard-coded value) when absent. */
typedef struct nvlm_param_count {
    uint64_t vision, projector, llm, xattn, total;
} nvlm_param_count;
void nvlm_config_count_params(const nvlm_config *cfg, nvlm_param_count *out);
#endif
