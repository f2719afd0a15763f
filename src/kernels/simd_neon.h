/* simd_neon.h - the NEON (aarch64 Advanced SIMD) kernels, compiled only for aarch64 and called
 * when kernels/cpu.h says NVLM_CPU_NEON. Each has a scalar reference in ops.h / attention.h /
 * qblock.h with the same contract (tests/test_kernels.c, scripts/check-neon.sh under qemu).
 * Only baseline ARMv8.0-A instructions: F16 via FCVTL, no dot-product or FP16 arithmetic
 * extensions. Internal. */
#ifndef NVLM_KERNELS_SIMD_NEON_H
#define NVLM_KERNELS_SIMD_NEON_H
#include "kernels/attention.h"
#include "kernels/ops.h"
#include "kernels/qblock.h"

#if defined(__aarch64__)
#define NVLM_HAVE_NEON_KERNELS 1

/* Up to this many tokens, a matrix product streams the weights (gemv_neon.c); beyond, the
 * packed 8x12 micro-kernel (gemm_neon.c). */
#define NVLM_GEMV_NEON_MAX 3

int nvlm_matmul_neon(nvlm_pool *pool, float *y, const float *x, int n_tok, const nvlm_wmat *w,
                     const float *bias, nvlm_err *err);
/* The packed micro-kernel whatever n_tok (the table's prefill rows: a batch's prompt tokens go
 * there even when few, so their values never depend on how many share the call). */
int nvlm_gemm_neon(nvlm_pool *pool, float *y, const float *x, int n_tok, const nvlm_wmat *w,
                   const float *bias, nvlm_err *err);
int nvlm_gemv_neon(nvlm_pool *pool, float *y, const float *x, int n_tok, const nvlm_wmat *w,
                   const float *bias, nvlm_err *err);
void nvlm_attention_neon(const float *q, size_t q_stride, int n_q, const float *k, size_t k_stride,
                         const float *v, size_t v_stride, int n_keys, int causal_pos0, int d,
                         float scale, float *out, size_t out_stride, float *scratch);
size_t nvlm_attention_scratch_neon(int n_q, int n_keys, int d);
void nvlm_gelu_neon(float *x, size_t n);
void nvlm_silu_mul_neon(float *a, const float *b, size_t n);
/* float32 <- F32/F16/BF16/Q8_0/Q4 row (n values; block formats need n % 32 == 0); the same
 * bits as nvlm_row_to_f32. */
void nvlm_row_to_f32_neon(float *dst, const void *src, nvlm_dtype t, int n);
/* The same bytes as nvlm_quantize_row_q8a; the same value as nvlm_vec_dot_q (integer sums). */
void nvlm_quantize_row_q8a_neon(const float *x, nvlm_block_q8a *dst, int n);
float nvlm_vec_dot_q_neon(nvlm_dtype t, const void *w, const nvlm_block_q8a *x, int n);
#endif
#endif
