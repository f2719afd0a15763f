/* tensors.h - the tensors a config implies (design note §2 and §12) and checking a
 * checkpoint against them. One enumerator is the single source of truth for the names
 * and shapes: the checker, the parameter counter and the random-checkpoint writer all
 * walk it. Internal. */
#ifndef NVLM_MODEL_TENSORS_H
#define NVLM_MODEL_TENSORS_H
#include "model/config.h"
#include "model/safetensors.h"

typedef enum nvlm_part {
    NVLM_PART_VISION = 0,
    NVLM_PART_PROJECTOR = 1,
    NVLM_PART_LLM = 2,
    NVLM_PART_XATTN = 3,
} nvlm_part;

typedef struct nvlm_tensor_spec {
    char name[160];
    nvlm_part part;
    int ndim;
    int64_t shape[4];
    int64_t numel;
    int layer;             /* vision/LLM layer or xattn block index; -1 for global tensors */
    const char *suffix;    /* name after the layer prefix ("attn.qkv.weight", "mlp1.1.weight") */
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
