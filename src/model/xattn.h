/* xattn.h - NVLM-X / NVLM-H gated cross-attention (docs/spec.md §12): the per-conversation
 * cache of cross-attention keys/values, the visibility rule of the memory rows, and the
 * block itself, applied through nvlm_llm_hooks before the configured LLM layers. Internal.
 *
 * Why ranges and not a mask matrix: with images numbered in prompt order, every decoder
 * position sees one contiguous run of memory rows. A tile tag of NVLM-X sees the rows of its
 * own tile; any other position sees every row of the images whose span (X) or thumbnail (H)
 * ended before it, i.e. rows [0, end of the last such image). So the mask of a row is two
 * integers and a generated token, which comes after every image, reads the whole cache. */
#ifndef NVLM_MODEL_XATTN_H
#define NVLM_MODEL_XATTN_H
#include "model/model.h"

/* Decoder positions [pos0, pos1) see exactly memory rows [row0, row1) (NVLM-X tile tags). */
typedef struct nvlm_xattn_span {
    int pos0, pos1, row0, row1;
} nvlm_xattn_span;

typedef struct nvlm_xattn {
    nvlm_model *m;
    int n_blocks, kv_dim;
    /* keys (k_norm applied) and values of the memory, computed once per image */
    int rows, cap;
    float **k, **v;            /* [n_blocks][cap * kv_dim] */
    int n_images, cap_images;
    int *rows_end;             /* memory rows of images 0..i together */
    /* visibility for the current prompt, set by src/generate/layout_xh.c each turn */
    int *visible_after;        /* [n_images]: image i's rows are visible at positions > this */
    int n_visible;             /* entries of visible_after (images laid out in the prompt) */
    nvlm_xattn_span *spans;    /* sorted by pos0, disjoint */
    int n_spans, cap_spans;
} nvlm_xattn;

int nvlm_xattn_init(nvlm_xattn *x, nvlm_model *m, nvlm_err *err);
void nvlm_xattn_free(nvlm_xattn *x);

/* Appends the memory of the next image ([rows, h], rows may be 0): K = k_norm(M Wk^T) and
 * V = M Wv^T for every block. Never recomputed afterwards. */
int nvlm_xattn_add_image(nvlm_xattn *x, const float *mem, int rows, nvlm_err *err);

/* Forgets the layout of the previous prompt (keeps the cached keys/values). */
void nvlm_xattn_clear_layout(nvlm_xattn *x);
/* Records that image i (the next one) becomes visible after position pos. */
int nvlm_xattn_set_visible_after(nvlm_xattn *x, int pos, nvlm_err *err);
/* Records that positions [pos0, pos1) see only memory rows [row0, row1). */
int nvlm_xattn_add_span(nvlm_xattn *x, int pos0, int pos1, int row0, int row1, nvlm_err *err);
/* First memory row of image i. */
static inline int nvlm_xattn_image_row0(const nvlm_xattn *x, int i) { return i ? x->rows_end[i - 1] : 0; }

/* The memory rows position pos may attend: [*lo, *hi), empty when *lo == *hi. */
void nvlm_xattn_rows_of(const nvlm_xattn *x, int pos, int *lo, int *hi);

/* Block k on x [n_tok, h] at positions pos0..: rows that see no memory stay bit-identical. */
int nvlm_xattn_apply(nvlm_xattn *x, int k, float *xs, int n_tok, int pos0, nvlm_err *err);

/* The same in an engine batch: gen 1 (generated tokens) or 0 (prompt tokens) picks the matrix
 * kernels by role (nvlm_matmul_roles), so a token's values never depend on how many share the
 * call; gen -1 is nvlm_xattn_apply. */
int nvlm_xattn_apply_role(nvlm_xattn *x, int k, float *xs, int n_tok, int pos0, int gen, nvlm_err *err);
int nvlm_xattn_before_layer_role(void *user, int layer, float *xs, int n_tok, int pos0, int gen, nvlm_err *err);

/* nvlm_llm_hooks.before_layer with user = nvlm_xattn *: applies block k before layer
 * cross_attention_layers[k]. */
int nvlm_xattn_before_layer(void *user, int layer, float *xs, int n_tok, int pos0, nvlm_err *err);

/* Bytes held by the cached cross-attention keys and values (rows in use). */
size_t nvlm_xattn_bytes(const nvlm_xattn *x);
#endif
