/* llm.h - the Qwen2 decoder with its KV cache (docs/spec.md §7). Internal. */
#ifndef NVLM_MODEL_LLM_H
#define NVLM_MODEL_LLM_H
#include "model/model.h"

/* Rotated keys and values of every layer for positions [0, len), float32 or F16 bits. */
typedef struct nvlm_kv {
    int n_layers, kv_dim;
    int len, cap;
    int f16;            /* elements are F16 (m->kv_f16 at init) */
    void **k, **v;      /* [n_layers][cap * kv_dim] */
} nvlm_kv;

/* The element type is the model's (nvlm_model_set_kv_type). */
int nvlm_kv_init(nvlm_kv *kv, const nvlm_model *m, nvlm_err *err);
/* Bytes held for the len positions in use. */
size_t nvlm_kv_bytes(const nvlm_kv *kv);
/* Makes room for `extra` more positions. */
int nvlm_kv_reserve(nvlm_kv *kv, int extra, nvlm_err *err);
/* Forgets positions >= len (prefix reuse). */
void nvlm_kv_truncate(nvlm_kv *kv, int len);
void nvlm_kv_free(nvlm_kv *kv);

/* Called with the hidden states entering each LLM layer (NVLM-X/H cross-attention). */
typedef struct nvlm_llm_hooks {
    int (*before_layer)(void *user, int layer, float *x, int n_tok, int pos0, nvlm_err *err);
    void *user;
    /* engine batches (src/engine): the same with the tokens' role (gen 1: generated tokens, 0:
     * prompt tokens), which picks the kernels as nvlm_matmul_roles does; NULL: before_layer */
    int (*before_layer_role)(void *user, int layer, float *x, int n_tok, int pos0, int gen, nvlm_err *err);
} nvlm_llm_hooks;

/* Rotary tables cos/sin [n_tok, d/2] for positions pos0.. of a sequence whose call ends at
 * pos0 + n_tok (dynamic NTK scaling past the trained length), and their application to n_heads
 * heads of d values. */
void nvlm_rope_table(const nvlm_llm_config *c, int d, int pos0, int n_tok, float *cs, float *sn);
void nvlm_rope_apply(float *x, int n_heads, int d, const float *cs, const float *sn);

/* Fails with NVLM_E_NUMERIC naming `what` at layer l (layers named from 0, as in the
 * checkpoint's tensor names model.layers.N...): the per-layer finite checks of the forward
 * passes (here and src/engine). */
int nvlm_llm_nonfinite(nvlm_err *err, const char *what, int l, const nvlm_llm_config *c);

/* Embedding rows of ids into out [n, h]. Ids outside the vocabulary are an error. */
int nvlm_embed_tokens(const nvlm_model *m, const int32_t *ids, int n, float *out, nvlm_err *err);

/* Runs n_tok embeddings (positions kv->len ...) through the decoder, appending to the cache.
 * logits: NULL, or [V] for the last position (all_logits 0), or [n_tok, V] (all_logits 1). */
int nvlm_llm_forward(nvlm_model *m, nvlm_kv *kv, const float *embeds, int n_tok,
                     const nvlm_llm_hooks *hooks, float *logits, int all_logits, nvlm_err *err);
#endif
