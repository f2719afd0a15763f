/* train.h - the trainer (docs/training.md): a float32 parameter store with master weights,
 * gradients and AdamW moments for the projector and the LLM; a training forward that keeps
 * what the backward pass needs; backward passes for every op on the trainable path;
 * cross-entropy over supervised positions; AdamW, clipping, schedules; the JSONL
 * conversation data; checkpoints with optimizer state. The vision encoder is frozen by
 * default (the engine computes its features once per image); a --trainable pattern that names
 * one of its tensors trains it (tvit.c, every step). Internal. */
#ifndef NVLM_TRAIN_TRAIN_H
#define NVLM_TRAIN_TRAIN_H
#include "model/model.h"
#include <stdint.h>

/* ------------------------------------------------------------ parameter store */

typedef struct nvlm_tparam {
    char name[160];
    int ndim;
    int64_t shape[4];
    size_t n;
    nvlm_dtype dtype;      /* dtype in the source checkpoint (kept when saving) */
    float *w;              /* float32 master weights */
    float *g, *m, *v;      /* gradient and Adam moments; NULL when frozen */
    int trainable;
    int decay;             /* weight decay applies (AdamW) */
} nvlm_tparam;

typedef struct nvlm_tlayer {
    nvlm_tparam *in_norm, *post_norm, *wq, *bq, *wk, *bk, *wv, *bv, *wo, *gate, *up, *down;
} nvlm_tlayer;

/* An NVLM-X/H gated cross-attention block (docs/spec.md §12); the gates are the raw
 * parameters alpha (the block uses tanh(alpha)). */
typedef struct nvlm_txblock {
    int layer;             /* the LLM layer it runs before */
    nvlm_tparam *in_norm, *post_norm, *wq, *wk, *wv, *wo, *q_norm, *k_norm;
    nvlm_tparam *attn_gate, *mlp_gate, *gate, *up, *down;
} nvlm_txblock;

/* An InternViT layer (trained only when a --trainable pattern names a vision tensor). */
typedef struct nvlm_tvlayer {
    nvlm_tparam *norm1, *norm2, *qkv, *q_norm, *k_norm, *proj, *proj_b, *ls1, *ls2, *fc1, *fc1_b, *fc2, *fc2_b;
} nvlm_tvlayer;

enum { NVLM_TRAIN_MAX_PROJ = 8 };

typedef struct nvlm_tmodel {
    nvlm_model *m;                 /* borrowed: config, ViT, tokenizer, pool */
    nvlm_tparam *p;
    int n_p;
    nvlm_tparam *ln_w, *ln_b, *proj[NVLM_TRAIN_MAX_PROJ];
    int proj_depth;
    nvlm_tparam *embed, *final_norm, *lm_head;
    nvlm_tlayer *L;
    nvlm_txblock *X;               /* NVLM-X/H: cfg.num_xattn blocks; NULL for D */
    int n_x;
    /* The vision encoder, in the store only when a pattern names one of its tensors (then its
     * layers up to select_layer run in src/train/tvit.c on every step); n_v 0: frozen in the engine. */
    nvlm_tparam *patch_w, *patch_b, *cls, *pos;
    nvlm_tvlayer *V;
    int n_v;
    int recompute;                 /* 1: keep only each layer's input, recompute in backward */
} nvlm_tmodel;

/* Which tensors learn. NULL patterns: the stage's default set (stage 1: mlp1.* and, for X/H,
 * the cross-attention blocks; stage 2: those and every LLM weight). patterns: comma-separated fnmatch globs over tensor names.
 * decay_all: weight decay on every trainable tensor (PyTorch AdamW on a plain list, as the
 * reference); 0: not on 1-D tensors (norm weights, biases). */
typedef struct nvlm_train_select {
    int stage;
    const char *patterns;
    int decay_all;
} nvlm_train_select;

int nvlm_tmodel_new(nvlm_model *m, const nvlm_train_select *sel, nvlm_tmodel **out, nvlm_err *err);
void nvlm_tmodel_free(nvlm_tmodel *tm);
nvlm_tparam *nvlm_tmodel_find(nvlm_tmodel *tm, const char *name);
void nvlm_tmodel_zero_grad(nvlm_tmodel *tm);
/* Number of trainable elements. */
size_t nvlm_tmodel_trainable(const nvlm_tmodel *tm);

/* ------------------------------------------------------------ one sequence */

/* A prepared training sequence. labels[t] is the target id of position t, or -100: the loss
 * at position t uses labels[t + 1] (Hugging Face's shift). img: pixel-shuffled ViT feature
 * rows ([n_img, 4C], NULL without images); the projector maps them to rows P[0..n_img).
 *
 * NVLM-D (ctx_rows and mem_src NULL): image-context position k takes P[k].
 * NVLM-X/H: image-context position k takes P[ctx_rows[k]] (H: the thumbnails; X: none);
 * the cross-attention memory has n_mem rows, row r = P[mem_src[r]] when mem_src[r] >= 0,
 * else the embedding of token id -mem_src[r] - 1 (H's tile tags); position t reads memory
 * rows [mem_lo[t], mem_hi[t]) (empty: the blocks leave it unchanged). */
typedef struct nvlm_tseq {
    const int32_t *ids, *labels;
    int n;
    const float *img;
    int n_img;
    const int *ctx_rows;
    int n_ctx;
    const int *mem_src;
    int n_mem;
    const int *mem_lo, *mem_hi;
    float *dimg;       /* backward: when not NULL, receives the gradient of img [n_img, 4C] */
} nvlm_tseq;

/* Supervised positions of a sequence (t with labels[t+1] != -100). */
int nvlm_tseq_supervised(const nvlm_tseq *s);

typedef struct nvlm_tresult {
    double loss_sum;   /* sum of -log p over the supervised positions */
    int count;         /* supervised positions */
    int correct;       /* positions whose argmax equals the label */
} nvlm_tresult;

/* Forward, loss and (when backward) gradients accumulated into the trainable tensors, the
 * loss scaled by 1/norm (the number of supervised positions of the whole optimizer step). */
int nvlm_train_seq(nvlm_tmodel *tm, const nvlm_tseq *s, int backward, double norm, nvlm_tresult *res,
                   nvlm_err *err);

/* ------------------------------------------------------------ vision encoder (tvit.c) */

typedef struct nvlm_tvit_acts nvlm_tvit_acts;

/* The ViT over n normalised tiles px [n, 3, S, S] on the store's weights (tm->n_v > 0):
 * z [n * tokens_per_tile, 4C], the pixel-shuffled features nvlm_tseq.img takes; *acts keeps
 * what nvlm_tvit_backward needs (free it with nvlm_tvit_acts_free). */
int nvlm_tvit_forward(nvlm_tmodel *tm, const float *px, int n, float *z, nvlm_tvit_acts **acts, nvlm_err *err);
/* Accumulates the gradients of the vision tensors from dz (the gradient of z). */
int nvlm_tvit_backward(nvlm_tmodel *tm, nvlm_tvit_acts *acts, const float *dz, nvlm_err *err);
void nvlm_tvit_acts_free(nvlm_tvit_acts *acts);

/* ------------------------------------------------------------ optimizer */

typedef struct nvlm_adamw {
    double lr, beta1, beta2, eps, weight_decay;
    int64_t step;      /* steps taken */
} nvlm_adamw;

/* sqrt(sum of squared gradients) over trainable tensors (double accumulation). */
double nvlm_grad_norm(const nvlm_tmodel *tm);
void nvlm_grad_scale(nvlm_tmodel *tm, float s);
/* One AdamW step (PyTorch semantics) with learning rate lr. */
void nvlm_adamw_step(nvlm_tmodel *tm, nvlm_adamw *opt, double lr);
/* Learning rate at step (0-based): linear warmup then cosine to 10% or constant. */
double nvlm_lr_at(double base, int64_t step, int64_t warmup, int64_t total, int cosine);

/* ------------------------------------------------------------ kernels (tkernels.c) */

/* y = x W^T + b with W float32 [rows, cols]. NVLM_OK, or NVLM_E_NOMEM (the matrix product's scratch). */
int nvlm_t_linear(nvlm_pool *pool, float *y, const float *x, int n, const float *W, int rows, int cols,
                  const float *b);
/* dx = dy W (overwrites; dx may be NULL), dW += dy^T x (dW may be NULL), db += sum dy (may be NULL). */
void nvlm_t_linear_bwd(nvlm_pool *pool, float *dx, const float *dy, const float *x, int n, const float *W,
                       int rows, int cols, float *dW, float *db);
/* RMSNorm backward for one row: dx = d(x r w)/dx . dy (overwrites), dw += dy x r. */
void nvlm_t_rmsnorm_bwd(float *dx, const float *dy, const float *x, const float *w, float *dw, int n, float eps);
/* LayerNorm backward of one row for the parameters only: dw += dy xhat, db += dy. */
void nvlm_t_layernorm_bwd_params(const float *dy, const float *x, float *dw, float *db, int n, float eps);
/* LayerNorm backward of one row for the input: dx (overwrites). */
void nvlm_t_layernorm_bwd_x(float *dx, const float *dy, const float *x, const float *w, int n, float eps);
/* dx = dy * gelu'(x) (exact erf GELU), elementwise. */
void nvlm_t_gelu_bwd(float *dx, const float *dy, const float *x, size_t n);
/* Given act-gradient da and pre-activations g, u of a = silu(g) u: dg, du (overwrite). */
void nvlm_t_swiglu_bwd(float *dg, float *du, const float *da, const float *g, const float *u, size_t n);
/* RoPE cos/sin tables [n, d/2] for positions 0..n-1 as the engine computes them. */
void nvlm_t_rope_table(const nvlm_llm_config *c, int d, int n, float *cs, float *sn);
/* Rotates (inverse 0) or applies the transpose (inverse 1: the backward) to n rows of
 * heads*d values. */
void nvlm_t_rope(float *x, int n, int heads, int d, const float *cs, const float *sn, int inverse);
/* Causal GQA attention over n positions: q [n, nh d], k, v [n, nkv d] -> o [n, nh d]. */
int nvlm_t_attention(nvlm_pool *pool, float *o, const float *q, const float *k, const float *v, int n, int nh,
                     int nkv, int d);
/* Its backward (probabilities recomputed): dq (overwrites), dk, dv (overwrite). */
int nvlm_t_attention_bwd(nvlm_pool *pool, float *dq, float *dk, float *dv, const float *dout, const float *q,
                         const float *k, const float *v, int n, int nh, int nkv, int d);

/* Cross-attention over memory ranges (no positions, no causal mask): query row t of head a
 * attends K/V rows [lo[t], hi[t]) of kv head a / (nh / nkv); q [n, nh d], K, V [S, nkv d] ->
 * o [n, nh d] (zero for an empty range). */
int nvlm_t_xattention(nvlm_pool *pool, float *o, const float *q, const float *K, const float *V, const int *lo,
                      const int *hi, int n, int nh, int nkv, int d);
/* Its backward (probabilities recomputed): dq (overwrites), dK, dV [S, nkv d] (overwrite). */
int nvlm_t_xattention_bwd(nvlm_pool *pool, float *dq, float *dK, float *dV, const float *dout, const float *q,
                          const float *K, const float *V, const int *lo, const int *hi, int n, int nh, int nkv,
                          int d, int S);

/* ------------------------------------------------------------ gated cross-attention block (txattn.c) */

/* What block k's backward needs: the rows that see memory, their input and activations,
 * and the memory's keys/values. */
typedef struct nvlm_txstate {
    int n_sel;                  /* rows with a non-empty memory range */
    int *sel, *lo, *hi;         /* [n_sel] */
    float *xin;                 /* [n_sel, h] block input of those rows */
    float *qp, *q, *att, *o, *x1, *g, *u, *z;   /* activations, NULL after a recompute-mode forward */
    float *Kp, *K, *V;          /* [S, kvd]: before k_norm, after, values */
} nvlm_txstate;

/* Applies block k in place to xs [n, h] (positions seeing memory rows [lo[t], hi[t]) of M
 * [S, h]); keep_acts 0 keeps only what a recompute needs. */
int nvlm_tx_forward(nvlm_tmodel *tm, int k, nvlm_txstate *st, float *xs, int n, const int *lo, const int *hi,
                    const float *M, int S, int keep_acts);
/* dx [n, h]: gradient of the block output in, of its input out (other rows unchanged);
 * gradients of the block's trainable tensors accumulate; dM [S, h] += gradient of the memory
 * (dM may be NULL). */
int nvlm_tx_backward(nvlm_tmodel *tm, int k, nvlm_txstate *st, float *dx, const float *M, int S, float *dM);
void nvlm_txstate_free(nvlm_txstate *st);
#endif
