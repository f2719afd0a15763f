/* tensors.h - the tensors a config implies (docs/spec.md §2 and §12) and checking a
 * checkpoint against them. One enumerator is the single source of truth for the names
 * and shapes: the checker, the parameter counter and the random-checkpoint writer all
 * walk it. Internal. */
#ifndef NVLM_MODEL_TENSORS_H
#define NVLM_MODEL_TENSORS_H
#include "model/config.h"
#include "model/safetensors.h"
#include <stddef.h>

typedef enum nvlm_part {
    NVLM_PART_VISION = 0,
    NVLM_PART_PROJECTOR = 1,
    NVLM_PART_LLM = 2,
    NVLM_PART_XATTN = 3,
} nvlm_part;

/* Every tensor of the released layout by role. nvlm_roles[] (tensors.c) is the one table of
 * checkpoint names: the checker, loader, quantizer, trainer and mkmodel name tensors through
 * it, never by strings of their own. */
typedef enum nvlm_role {
    /* vision embeddings */
    NVLM_R_PATCH_W, NVLM_R_PATCH_B, NVLM_R_CLS, NVLM_R_POS,
    /* vision layer i */
    NVLM_R_V_NORM1, NVLM_R_V_NORM2, NVLM_R_V_QKV, NVLM_R_V_Q_NORM, NVLM_R_V_K_NORM, NVLM_R_V_PROJ,
    NVLM_R_V_PROJ_B, NVLM_R_V_LS1, NVLM_R_V_LS2, NVLM_R_V_FC1, NVLM_R_V_FC1_B, NVLM_R_V_FC2, NVLM_R_V_FC2_B,
    /* projector: mlp1.0 the LayerNorm, linear k mlp1.{2k+1} */
    NVLM_R_P_LN_W, NVLM_R_P_LN_B, NVLM_R_P_LINEAR,
    /* LLM: embeddings, layer i, final norm, head */
    NVLM_R_EMBED, NVLM_R_L_IN_NORM, NVLM_R_L_Q, NVLM_R_L_Q_B, NVLM_R_L_K, NVLM_R_L_K_B, NVLM_R_L_V,
    NVLM_R_L_V_B, NVLM_R_L_O, NVLM_R_L_POST_NORM, NVLM_R_L_GATE, NVLM_R_L_UP, NVLM_R_L_DOWN, NVLM_R_NORM,
    NVLM_R_LM_HEAD,
    /* cross-attention block k (docs/spec.md §12) */
    NVLM_R_X_IN_NORM, NVLM_R_X_Q, NVLM_R_X_K, NVLM_R_X_V, NVLM_R_X_O, NVLM_R_X_Q_NORM, NVLM_R_X_K_NORM,
    NVLM_R_X_ATTN_GATE, NVLM_R_X_POST_NORM, NVLM_R_X_GATE, NVLM_R_X_UP, NVLM_R_X_DOWN, NVLM_R_X_MLP_GATE,
    NVLM_R_COUNT
} nvlm_role;

typedef enum nvlm_role_index {
    NVLM_IDX_NONE = 0,   /* one tensor: the index is ignored */
    NVLM_IDX_LAYER = 1,  /* prefix takes the layer or block index */
    NVLM_IDX_PROJ = 2,   /* prefix takes 2k+1 for projector linear k */
} nvlm_role_index;

typedef struct nvlm_role_info {
    nvlm_part part;
    const char *prefix;    /* printf format with one %d when indexed */
    const char *suffix;    /* the name after the prefix */
    nvlm_role_index index;
    int f32;               /* in the release's F32 set (docs/spec.md §2) */
} nvlm_role_info;

extern const nvlm_role_info nvlm_roles[NVLM_R_COUNT];

/* The checkpoint name of role r at index i (layer, block or projector linear; ignored for
 * single tensors) in buf; returns buf. */
const char *nvlm_tensor_name(nvlm_role r, int i, char *buf, size_t cap);
/* The role and index of a checkpoint name; -1 when the name is no tensor of the layout
 * (whatever the config: indices are not bounded here). */
int nvlm_role_of_name(const char *name, nvlm_role *role, int *index);

typedef struct nvlm_tensor_spec {
    char name[160];
    nvlm_role role;
    nvlm_part part;
    int ndim;
    int64_t shape[4];
    int64_t numel;
    int layer;             /* vision/LLM layer, xattn block or projector linear index; -1 for single tensors */
    const char *suffix;    /* name after the layer prefix ("attn.qkv.weight", "weight" of mlp1.1) */
} nvlm_tensor_spec;

/* Calls fn for every tensor of the released layout, in the order: vision embeddings,
 * vision layers, mlp1 (projector_depth linears), LLM embeddings, LLM layers, final norm,
 * lm_head, then xattn_layers.{k} for X/H. dummy_heads is the vision D_v used for the qkv /
 * q_norm / k_norm / proj widths. Stops early and returns fn's value when it is non-zero. */
typedef int (*nvlm_tensor_visit_fn)(void *user, const nvlm_tensor_spec *t);
int nvlm_expected_tensors(const nvlm_config *cfg, int dummy_heads, nvlm_tensor_visit_fn fn,
                          void *user);

#define NVLM_XATTN_PREFIX "language_model.model.xattn_layers."

/* Vision dummy heads derived from layer 0's attn.qkv.weight rows:
 * D_v = rows / (3 d_v) - H_v. Returns D_v >= 0, or a negative status (err filled) when the
 * tensor is missing or its row count is not of that form. */
int nvlm_vit_dummy_heads_err(const nvlm_config *cfg, const nvlm_st *st, nvlm_err *err);
/* Same without an error message: -1 when it cannot be derived. */
int nvlm_vit_dummy_heads(const nvlm_config *cfg, const nvlm_st *st);

/* How a tensor-parallel rank's share of 2-D tensor `name` is cut (docs/distributed.md): output
 * rows in units of a head for q/k/v (LLM, cross-attention) and the ViT's qkv, else 32 rows. The
 * loader, the arena it sizes and `nvlm info` all take the unit from here. */
int nvlm_tensor_split_unit(const nvlm_config *cfg, const char *name);

/* Every tensor the config implies present with its shape; D with xattn tensors refused;
 * X/H: mlp1 exactly the set of projector_depth, xattn_layers.{k} for each k and nothing
 * else under xattn_layers; num_dummy_heads (when the field is present) equal to the derived
 * value. Tensors of other names are ignored (see nvlm_unknown_tensors). */
int nvlm_check_tensors(const nvlm_config *cfg, const nvlm_st *st, nvlm_err *err);

/* Number of checkpoint tensors that the config does not imply (ignored by the engine). */
size_t nvlm_unknown_tensors(const nvlm_config *cfg, const nvlm_st *st);
#endif
