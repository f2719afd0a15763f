/* gemv_vnni.h - AVX512-VNNI matrix-vector products of Q8_0 / Q4 / Q4_0 weights against int8
 * activations, bit for bit nvlm_vec_dot_q (kernels/qblock.h) per output. gemv_vnni.c says how.
 * At the VNNI levels (dispatch.c mm_gen_vnni) nvlm_gemm_vnni takes the matrices packed
 * NVLM_WL_Q16 (generation, any number of tokens) and prefill with int8 activations forced;
 * nvlm_gemv_vnni the row-major ones in generation (tensor-parallel slices, shapes that cannot be
 * packed), slower (0.57-0.82x the AVX2 kernel's GB/s, docs/quantization.md "VNNI") but the same
 * bits. tests/test_gemv.c holds both to the reference. Internal. */
#ifndef NVLM_KERNELS_GEMV_VNNI_H
#define NVLM_KERNELS_GEMV_VNNI_H
#include "kernels/simd.h"

#if defined(__x86_64__)
#define NVLM_HAVE_VNNI_KERNELS 1
#define NVLM_VNNI_GEMV_MAX 3
/* y[t] = x[t] W^T + bias for n_tok <= NVLM_VNNI_GEMV_MAX tokens, W Q8_0, Q4 or Q4_0: x quantized per
 * block (nvlm_quantize_row_q8a), each output nvlm_vec_dot_q's value (+ bias). Returns 0, or -1
 * out of memory (y untouched). Call only at level avx512vnni or above. */
int nvlm_gemv_vnni(nvlm_pool *pool, float *y, const float *x, int n_tok, const nvlm_wmat *w, const float *bias);
/* The same for any number of tokens, as a matrix product over panels of 16 rows laid out for
 * vpdpbusd (gemm_vnni.c): read in place from an NVLM_WL_Q16 matrix, packed per call from a
 * row-major one. Returns 0, or -1 out of memory. */
int nvlm_gemm_vnni(nvlm_pool *pool, float *y, const float *x, int n_tok, const nvlm_wmat *w, const float *bias);
#endif
#endif
