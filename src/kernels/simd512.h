/* simd512.h - the AVX-512 (F/BW/VL/DQ) float kernels (x86-64 only; compiled for that target by
 * pragma, called when kernels/dispatch.c's table says so, at levels that include
 * NVLM_CPU_AVX512). Each gives the same bits as its AVX2 twin in simd.h (the same FMA chain per
 * output, only wider), so every x86 level answers alike; tests/test_kernels.c and test_gemv.c
 * check them bit for bit against AVX2 and within bounds against the scalar references.
 * Internal. */
#ifndef NVLM_KERNELS_SIMD512_H
#define NVLM_KERNELS_SIMD512_H
#include "kernels/attention.h"
#include "kernels/ops.h"
#include "kernels/simd.h"

#if defined(__x86_64__)
#define NVLM_HAVE_AVX512_KERNELS 1

/* y = x W^T + bias for more than NVLM_GEN_TOKENS tokens (gemm_avx512.c): 14x32 zmm micro-kernel
 * over packed operands, any weight format (converted to float32 while packing). 0, or -1 when
 * its buffers cannot be allocated (then nothing is written). */
int nvlm_gemm_avx512(nvlm_pool *pool, float *y, const float *x, int n_tok, const nvlm_wmat *w, const float *bias);
/* The same for n_w <= NVLM_MATMUL_MULTI_MAX matrices sharing x (q/k/v, gate/up): x packed once. */
int nvlm_gemm_multi_avx512(nvlm_pool *pool, int n_w, float *const *y, const float *x, int n_tok,
                           const nvlm_wmat *const *w, const float *const *bias);
/* Any number of tokens, F32/F16/BF16 weights (gemv_avx512.c; more than NVLM_GEMV_MAX by
 * nvlm_gemv_batch_avx512); other formats go to nvlm_gemv_avx2. Returns 0, or -1 when
 * nvlm_gemv_avx2 cannot have its scratch. */
int nvlm_gemv_avx512(nvlm_pool *pool, float *y, const float *x, int n_tok, const nvlm_wmat *w, const float *bias);
/* Plain formats (F32/F16/BF16), any n_tok, 8 tokens a pass: each token's outputs are
 * bit-identical to nvlm_gemv_avx2's for it alone (gemv_batch_avx512.c says how). No allocation. */
int nvlm_gemv_batch_avx512_ok(nvlm_dtype dt);
void nvlm_gemv_batch_avx512(nvlm_pool *pool, float *y, const float *x, int n_tok, const nvlm_wmat *w,
                            const float *bias);
/* nvlm_attention_avx2's contract and bits; more than 3 queries on the 14x32 kernel (K and V
 * packed once per head), 1-3 queries and more than 8192 keys by nvlm_attention_avx2 itself. */
void nvlm_attention_avx512(const float *q, size_t q_stride, int n_q, const float *k, size_t k_stride,
                           const float *v, size_t v_stride, int n_keys, int causal_pos0, int d, float scale,
                           float *out, size_t out_stride, float *scratch);
size_t nvlm_attention_scratch_avx512(int n_q, int n_keys, int d);
/* float32 <- F32/F16/BF16/Q8_0/Q4 row (convert_avx512.c); the bits of nvlm_row_to_f32. */
void nvlm_row_to_f32_avx512(float *dst, const void *src, nvlm_dtype t, int n);
/* The bits of nvlm_gelu_avx2 / nvlm_silu_mul_avx2, 16 lanes at a time (act_avx512.c). */
void nvlm_gelu_avx512(float *x, size_t n);
void nvlm_silu_mul_avx512(float *a, const float *b, size_t n);
#endif
#endif
