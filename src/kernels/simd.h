/* simd.h - the AVX2+FMA+F16C kernels (x86-64 only; compiled for that target by pragma, called
 * only when kernels/cpu.h says the machine has it). Each has a scalar reference in ops.h /
 * attention.h / qblock.h with the same contract; tests/test_kernels.c holds them together.
 * Internal. */
#ifndef NVLM_KERNELS_SIMD_H
#define NVLM_KERNELS_SIMD_H
#include "kernels/attention.h"
#include "kernels/ops.h"
#include "kernels/qblock.h"

#if defined(__x86_64__)
#define NVLM_HAVE_AVX2_KERNELS 1

/* Up to this many tokens, a matrix product streams the weights (gemv_avx2.c); beyond, the packed
 * micro-kernel (gemm_avx2.c). */
#define NVLM_GEMV_MAX 3

/* The AVX2 matrix products return as nvlm_matmul (kernels/ops.h): NVLM_E_NOMEM without scratch. */
int nvlm_matmul_avx2(nvlm_pool *pool, float *y, const float *x, int n_tok, const nvlm_wmat *w,
                     const float *bias, nvlm_err *err);
/* y[i] = x W[i]^T + bias[i] for n_w <= NVLM_MATMUL_MULTI_MAX matrices of the same cols (q/k/v,
 * gate/up): x is packed once and the pool splits all their outputs together. Same values as
 * nvlm_matmul_avx2 on each. */
#define NVLM_MATMUL_MULTI_MAX 4
int nvlm_matmul_multi_avx2(nvlm_pool *pool, int n_w, float *const *y, const float *x, int n_tok,
                           const nvlm_wmat *const *w, const float *const *bias, nvlm_err *err);
/* The packed micro-kernel whatever n_tok (the PREFILL rows of the dispatch table: a batch's
 * prompt tokens go there even when few, so their values never depend on how many share the
 * call: src/engine/, docs/engine.md). */
int nvlm_gemm_multi_avx2(nvlm_pool *pool, int n_w, float *const *y, const float *x, int n_tok,
                         const nvlm_wmat *const *w, const float *const *bias, nvlm_err *err);
int nvlm_gemm_avx2(nvlm_pool *pool, float *y, const float *x, int n_tok, const nvlm_wmat *w, const float *bias,
                   nvlm_err *err);
/* Any n_tok (the GEN rows of the dispatch table): more than NVLM_GEMV_MAX tokens are taken
 * NVLM_GEMV_MAX at a time inside each row group, each token with the order it has alone. */
int nvlm_gemv_avx2(nvlm_pool *pool, float *y, const float *x, int n_tok, const nvlm_wmat *w,
                   const float *bias, nvlm_err *err);
void nvlm_attention_avx2(const float *q, size_t q_stride, int n_q, const float *k, size_t k_stride,
                         const float *v, size_t v_stride, int n_keys, int causal_pos0, int d,
                         float scale, float *out, size_t out_stride, float *scratch);
size_t nvlm_attention_scratch_avx2(int n_q, int n_keys, int d);
void nvlm_gelu_avx2(float *x, size_t n);
void nvlm_silu_mul_avx2(float *a, const float *b, size_t n);
void nvlm_quantize_row_q8a_avx2(const float *x, nvlm_block_q8a *dst, int n);
float nvlm_vec_dot_q_avx2(nvlm_dtype t, const void *w, const nvlm_block_q8a *x, int n);
/* float32 <- F32/F16/BF16/Q8_0/Q4 row (n values; block formats need n % 32 == 0). */
void nvlm_row_to_f32_avx2(float *dst, const void *src, nvlm_dtype t, int n);
float nvlm_dot_avx2(const float *a, const float *b, int n);
#endif
#endif
