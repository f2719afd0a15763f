/* gemm_bf16.h - the matrix product of the bf16 compute mode (--compute bf16, NVLM_COMPUTE_BF16;
 * docs/performance.md "bf16 compute").
 *
 * What it computes, at every level, to the bit: each activation x is rounded to BF16 (round to
 * nearest even, as torch's x.to(torch.bfloat16)), each weight too (F32/F16 weights, and Q8_0/Q4
 * ones from their float32 value, nvlm_row_to_f32's; BF16 weights are taken as stored), and a
 * BF16 denormal becomes a zero of its sign. K is taken in pairs
 * (2p, 2p+1), a zero past an odd K. Each output is one chain over the pairs in order of
 * vdpbf16ps steps, acc = dp(acc, x pair, w pair) (nvlm_dpbf16), from 0, then + bias (float32).
 * That is what AVX512-BF16's vdpbf16ps does lane by lane; the AVX2 and scalar levels emulate it
 * exactly, so every level gives the same bits, for any number of threads.
 *
 * Layout (chosen so AMX tiles can take over): B (weights) is packed per K block of
 * NVLM_BF16_KC values into panels of NVLM_BF16_NR = 32 outputs, one row per K pair of 32
 * dwords (the pair (w[n][2p], w[n][2p+1]) of output n, low half the even element): 128 bytes a
 * row, which is two AMX B tiles side by side (a B tile for TDPBF16PS is 16 rows of 16 such
 * dwords: 16 pairs = 32 K values), read with a row stride of 128 bytes. A (activations) is
 * packed per K block in slivers of NVLM_BF16_MR tokens, pair-major (the MR dwords of pair p
 * together) for vdpbf16ps' broadcast; AMX wants tokens row-major (a tile row = 32 K values of
 * one token), which is the A pack to change. Internal. */
#ifndef NVLM_KERNELS_GEMM_BF16_H
#define NVLM_KERNELS_GEMM_BF16_H
#include "kernels/ops.h"
#include <stdint.h>

enum {
    NVLM_BF16_MR = 12,  /* tokens per micro-tile */
    NVLM_BF16_NR = 32,  /* outputs per micro-tile: two zmm, two AMX B tiles */
    NVLM_BF16_KC = 512, /* K values per block (even: pairs never straddle blocks) */
    /* fewer tokens than this: the float32 matrix-vector kernels (generation) */
    NVLM_BF16_MIN_TOKENS = 4,
};

/* One lane of vdpbf16ps (Intel SDM pseudo-code): a and b hold two BF16 each (low half element
 * 0); acc = acc + a1 b1, then + a0 b0, each an FMA rounded to nearest even with denormal
 * inputs as zero and a denormal result flushed to a zero of its sign. */
float nvlm_dpbf16(float acc, uint32_t a, uint32_t b);
/* float32 -> BF16 as this mode rounds it: nvlm_f32_to_bf16, then a denormal to zero. */
uint16_t nvlm_bf16_round(float x);

/* 1 when w can take the bf16 path: F32, F16, BF16 and block-format (Q8_0, Q4) weights, but
 * not the matrices loaded to stay float32 (wmat.f32_only: the LLM's attention and lm_head). */
int nvlm_bf16_eligible(const nvlm_wmat *w);

/* y[i] = x W[i]^T + bias[i] in bf16 compute, n_w <= NVLM_MATMUL_MULTI_MAX matrices of the same
 * cols, work split over the pool, kernels at the pool's level. */
void nvlm_matmul_bf16(nvlm_pool *pool, int n_w, float *const *y, const float *x, int n_tok,
                      const nvlm_wmat *const *w, const float *const *bias);
/* The scalar reference of one matrix, outputs [n0, n1) of every token (no allocation, one thread). */
void nvlm_matmul_bf16_ref(float *y, const float *x, int n_tok, const nvlm_wmat *w, const float *bias, int n0, int n1);

/* ---- level kernels (gemm_bf16.c, gemm_bf16_avx2.c, gemm_bf16_avx512.c) ---- */

/* C[0:mr, 0:nr] of a micro-tile over kp pairs: a is a packed sliver (kp x MR dwords, rows past
 * mr zero), b a packed panel (kp x NR dwords, 64-byte aligned, outputs past nr zero).
 * accumulate: the chains go on from C's values (the K blocks after the first); bias: added at
 * the end (the last block). */
typedef void (*nvlm_bf16_ukr_fn)(int kp, const uint32_t *a, const uint32_t *b, float *c, size_t ldc, int mr, int nr,
                                 int accumulate, const float *bias);
/* dst[0:n] = BF16 of src[0:n] (format t: F32/F16/BF16, possibly unaligned, or Q8_0/Q4 with n a
 * multiple of the block), rounded and flushed as nvlm_bf16_round. */
typedef void (*nvlm_bf16_row_fn)(uint16_t *dst, const void *src, nvlm_dtype t, int n);
/* dst[p * NR + r] = (rows[r][2p+1] << 16) | rows[r][2p] for p < kp, r < NR (rows: NR rows of
 * KC + 2 values, zero past the data). */
typedef void (*nvlm_bf16_pairs_fn)(const uint16_t (*rows)[NVLM_BF16_KC + 2], int kp, uint32_t *dst);
/* The sliver of A: dst[p * MR + i] = (rows[i][2p+1] << 16) | rows[i][2p] for p < kp, i < MR
 * (row i at rows + i * row_len; row_len even). */
typedef void (*nvlm_bf16_sliver_fn)(const uint16_t *rows, size_t row_len, int kp, uint32_t *dst);

void nvlm_bf16_ukr_scalar(int kp, const uint32_t *a, const uint32_t *b, float *c, size_t ldc, int mr, int nr,
                          int accumulate, const float *bias);
void nvlm_bf16_row_scalar(uint16_t *dst, const void *src, nvlm_dtype t, int n);
/* A row fn's Q8_0/Q4 case: dequantized by to_f32 (a level's nvlm_row_to_f32) a KC piece at a
 * time, each piece rounded by round_f32 (the level's row fn on F32). */
typedef void (*nvlm_row_f32_fn)(float *dst, const void *src, nvlm_dtype t, int n);
void nvlm_bf16_row_blocks(uint16_t *dst, const void *src, nvlm_dtype t, int n, nvlm_row_f32_fn to_f32,
                          nvlm_bf16_row_fn round_f32);
void nvlm_bf16_sliver_scalar(const uint16_t *rows, size_t row_len, int kp, uint32_t *dst);
#if defined(__x86_64__)
#define NVLM_HAVE_BF16_X86 1
void nvlm_bf16_ukr_avx2(int kp, const uint32_t *a, const uint32_t *b, float *c, size_t ldc, int mr, int nr,
                        int accumulate, const float *bias);
void nvlm_bf16_row_avx2(uint16_t *dst, const void *src, nvlm_dtype t, int n);
void nvlm_bf16_pairs_avx2(const uint16_t (*rows)[NVLM_BF16_KC + 2], int kp, uint32_t *dst);
void nvlm_bf16_sliver_avx2(const uint16_t *rows, size_t row_len, int kp, uint32_t *dst);
void nvlm_bf16_row_avx512(uint16_t *dst, const void *src, nvlm_dtype t, int n); /* F32 on 16 lanes */
void nvlm_softmax_row_avx2(float *s, int n, int n_zero, float scale);   /* gemm_avx2.c */
void nvlm_softmax_row_avx512(float *s, int n, int n_zero, float scale); /* gemm_avx512.c */
void nvlm_bf16_ukr_avx512(int kp, const uint32_t *a, const uint32_t *b, float *c, size_t ldc, int mr, int nr,
                          int accumulate, const float *bias);
/* For the tests: acc[j] = vdpbf16ps lane j over n lanes (n % 16 == 0), and the AVX2 emulation
 * of the same, on raw inputs (denormals included). */
void nvlm_dpbf16_avx512(float *acc, const uint32_t *a, const uint32_t *b, int n);
void nvlm_dpbf16_avx2(float *acc, const uint32_t *a, const uint32_t *b, int n);
#endif

/* ---- attention in bf16 compute (attention_bf16.c; the ViT's, under NVLM_COMPUTE_BF16) ----
 *
 * What it computes, at every level, to the bit: for each query i, s_j = the vdpbf16ps chain
 * over the pairs of q_i and k_j (both rounded as above), p = nvlm_softmax_row_scalar(s, scale)
 * (float32, the AVX2 kernels' exp and summation order), each p_j rounded to BF16, and
 * out[c] = the chain over the key pairs (p_2m, p_2m+1) . (v_2m[c], v_2m+1[c]), v rounded. That
 * is what a BF16 attention on a GPU does (P in bf16 for P V), and every level gives the same
 * bits: the products are the micro-kernels above, the softmax is one order in all its forms.
 * Every query sees every key (the ViT; no causal mask). */
void nvlm_attention_bf16(int level, const float *q, size_t q_stride, int n_q, const float *k, size_t k_stride,
                         const float *v, size_t v_stride, int n_keys, int d, float scale, float *out,
                         size_t out_stride, float *scratch);
/* floats of scratch for a call of at most n_q queries */
size_t nvlm_attention_bf16_scratch(int n_q, int n_keys, int d);
/* The scalar reference: one query at a time, no packing. scores: n_keys + 1 floats. */
void nvlm_attention_bf16_ref(const float *q, size_t q_stride, int n_q, const float *k, size_t k_stride,
                             const float *v, size_t v_stride, int n_keys, int d, float scale, float *out,
                             size_t out_stride, float *scores);

/* s[0:n] = softmax(scale * s[0:n]), s[n:n_zero] = 0: the f32 attention kernels' softmax, whose
 * exp (Cephes, by FMAs) and sum (8 lanes, then the lanes in order in double) are the same at
 * every level, so the scalar form gives the AVX2 and AVX-512 bits. */
typedef void (*nvlm_softmax_row_fn)(float *s, int n, int n_zero, float scale);
void nvlm_softmax_row_scalar(float *s, int n, int n_zero, float scale);

/* The kernels of a level, for the drivers of this mode. */
typedef struct nvlm_bf16_kernels {
    nvlm_bf16_ukr_fn ukr;
    nvlm_bf16_row_fn row;
    nvlm_bf16_pairs_fn pairs;
    nvlm_bf16_sliver_fn sliver;
    nvlm_softmax_row_fn softmax;
} nvlm_bf16_kernels;
nvlm_bf16_kernels nvlm_bf16_kernels_at(int level);
/* The packing of both operands, for the GEMM and the attention (gemm_bf16.c):
 * a sliver of A: rows i < mr of x (len floats each, stride floats apart; rows past mr zero)
 * rounded into rows (MR rows of row_len >= len + 1 halves) and paired into dst (MR per pair);
 * a panel of B: rows r < nr of kc values of format t (row_bytes apart from src; rows past nr
 * zero) rounded and paired into dst (NR per pair, 64-byte aligned). */
void nvlm_bf16_pack_sliver(const nvlm_bf16_kernels *kn, const float *x, size_t stride, int mr, int len,
                           uint16_t *rows, size_t row_len, uint32_t *dst);
void nvlm_bf16_pack_panel(const nvlm_bf16_kernels *kn, const void *src, size_t row_bytes, nvlm_dtype t, int nr, int kc,
                          uint32_t *dst);
/* What nvlm_bf16_kernels_at(level) multiplies with, in words (nvlm info --cpu). */
const char *nvlm_bf16_kernels_name(int level);
#endif
