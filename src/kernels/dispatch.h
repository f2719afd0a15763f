/* dispatch.h - which kernel each op runs at each level: ONE table (dispatch.c) that both the
 * run-time dispatch (matmul.c, attention.c) and the report (`nvlm info --cpu`) read, so the two
 * cannot disagree. A row names the lowest level it needs; an op at a level runs the last row of
 * that op whose level the level includes (nvlm_cpu_at_least), so adding a faster kernel is adding
 * a row below the ones it replaces. Internal. */
#ifndef NVLM_KERNELS_DISPATCH_H
#define NVLM_KERNELS_DISPATCH_H
#include "kernels/attention.h"
#include "kernels/ops.h"

/* Up to this many tokens a matrix product is "generation" (matrix-vector kernels, weights
 * streamed); beyond it "prefill" (packed GEMM). The same for every level. A batch of several
 * sequences (nvlm_matmul_roles, src/engine) picks the op by token role instead: tokens being
 * generated take the generation kernels however many they are, prompt tokens the prefill
 * kernels however few, so a token's values never depend on the batch (docs/engine.md). Every
 * GEN kernel therefore takes any number of tokens, every PREFILL kernel any number from 1. */
#define NVLM_GEN_TOKENS 3

typedef enum nvlm_op {
    NVLM_OP_PREFILL_F32, /* matrix products, one op per weight format and regime (dtype order) */
    NVLM_OP_PREFILL_F16,
    NVLM_OP_PREFILL_BF16,
    NVLM_OP_PREFILL_Q8_0,
    NVLM_OP_PREFILL_Q4,
    NVLM_OP_PREFILL_Q4_0,
    NVLM_OP_GEN_F32,
    NVLM_OP_GEN_F16,
    NVLM_OP_GEN_BF16,
    NVLM_OP_GEN_Q8_0,
    NVLM_OP_GEN_Q4,
    NVLM_OP_GEN_Q4_0,
    NVLM_OP_ATTENTION,     /* more than NVLM_GEN_TOKENS queries (prefill, ViT) */
    NVLM_OP_ATTENTION_GEN, /* 1 to NVLM_GEN_TOKENS queries (generation) */
    NVLM_OP_GELU,
    NVLM_OP_SILU_MUL,
    NVLM_OP_CONVERT, /* F16/BF16/Q8_0/Q4/Q4_0 rows -> float32 (KV cache, embeddings) */
    NVLM_OP_COUNT
} nvlm_op;

/* Matrix products as nvlm_matmul / nvlm_matmul_multi: NVLM_OK, or NVLM_E_NOMEM with err set when
 * their buffers cannot be had (nothing was computed then: the kernels allocate before they start). */
typedef int (*nvlm_matmul_fn)(nvlm_pool *pool, float *y, const float *x, int n_tok, const nvlm_wmat *w,
                              const float *bias, nvlm_err *err);
typedef int (*nvlm_matmul_multi_fn)(nvlm_pool *pool, int n_w, float *const *y, const float *x, int n_tok,
                                    const nvlm_wmat *const *w, const float *const *bias, nvlm_err *err);
typedef void (*nvlm_attention_fn)(const float *q, size_t q_stride, int n_q, const float *k, size_t k_stride,
                                  const float *v, size_t v_stride, int n_keys, int causal_pos0, int d,
                                  float scale, float *out, size_t out_stride, float *scratch);
typedef size_t (*nvlm_attention_scratch_fn)(int n_q, int n_keys, int d);

typedef struct nvlm_kernel {
    nvlm_op op;
    int level;        /* the lowest level (kernels/cpu.h) it runs at */
    const char *name; /* what `nvlm info --cpu` prints */
    /* the functions of its op (the others NULL) */
    nvlm_matmul_fn matmul;
    nvlm_matmul_multi_fn matmul_multi; /* prefill: several matrices sharing x; NULL: one by one */
    nvlm_attention_fn attention;
    nvlm_attention_scratch_fn attention_scratch;
    void (*gelu)(float *x, size_t n);
    void (*silu_mul)(float *a, const float *b, size_t n);
    void (*row_to_f32)(float *dst, const void *src, nvlm_dtype t, int n);
} nvlm_kernel;

/* The kernel of `op` at `level` (never NULL: every op has a scalar row). */
const nvlm_kernel *nvlm_kernel_for(nvlm_op op, int level);
/* The matrix-product op of weights of format dt: generation (gen != 0) or prefill. */
nvlm_op nvlm_product_op(nvlm_dtype dt, int gen);
/* The matrix-product op of weights of format dt for a call of n_tok tokens. */
nvlm_op nvlm_matmul_op(nvlm_dtype dt, int n_tok);
/* "matmul F32 prefill", ..., "attention (prefill, ViT)", "GELU", ... */
const char *nvlm_op_name(nvlm_op op);
#endif
