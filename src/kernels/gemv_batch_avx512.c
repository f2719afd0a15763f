/* AVX-512 matrix-vector products for a batch of generating sequences (src/engine): F32 / F16 /
 * BF16 weights against 8 tokens per pass, each weight row read from memory once.
 *
 * Batch invariance (docs/engine.md): every output has exactly the value of the AVX2 kernel
 * (gemv_avx2.c plain_group) for that token alone. The AVX2 kernel keeps two 8-lane accumulators
 * per token, a0 for the 8 columns at k and a1 for the 8 at k + 8, over steps of 16; here one
 * 16-lane accumulator holds a0 in its low half and a1 in its high half, with the same fused
 * multiply-adds in the same order. The finish is the AVX2 one: a0 + a1 per lane, then
 * ((v0+v1)+(v2+v3)) + ((v4+v5)+(v6+v7)), then the K % 16 tail in order, then the bias. */
#include "kernels/simd512.h"
#ifdef NVLM_HAVE_AVX512_KERNELS
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#include <immintrin.h>
#include <string.h>

#define AI static inline __attribute__((always_inline))

enum {
    TB = 8,         /* tokens a pass: their activations stay in L1 beside the row (16 spill to L2) */
    RB = 3,         /* rows a pass at most: 3 x 8 accumulators, 3 weight vectors and one of x in 32 registers */
    RB_LONG_K = 2048, /* rows of this many columns or more take RB a pass, shorter ones 2 (bench/batch:
                         the activations of 8 short rows stay in L1, and 2 rows measured faster) */
    GRAIN_ROWS = 32,
    PF_MIN = 8192,  /* bytes ahead that the prefetches reach at least (into L2: into L1 they evict
                       the activations, and several short rows a pass then ran at half the speed) */
};

typedef struct gemvb_job {
    float *y;
    const float *x;
    int n_tok;
    const nvlm_wmat *w;
    const float *bias;
    size_t rb;
    int rg; /* rows a pass */
} gemvb_job;

AI __m512 load16(nvlm_dtype dt, const uint8_t *row, int k) {
    if (dt == NVLM_DT_BF16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(row + 2 * (size_t)k))), 16));
    if (dt == NVLM_DT_F16) return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(row + 2 * (size_t)k)));
    return _mm512_loadu_ps((const float *)(row + 4 * (size_t)k));
}

/* lanes 0-7 + lanes 8-15: the AVX2 kernel's a0 + a1. */
AI __m256 fold(__m512 v) { return _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1)); }

/* The AVX2 kernel's reduction of its two accumulators, for 4 of them at once (its hsum4):
 * ((v0+v1)+(v2+v3)) + ((v4+v5)+(v6+v7)) of each folded vector. */
AI void finish4(__m512 a, __m512 b, __m512 c, __m512 d, float *out) {
    __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(fold(a), fold(b)), _mm256_hadd_ps(fold(c), fold(d)));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1)));
}

/* R rows against T tokens (R, T constant after inlining): R * T accumulators, so each token's
 * activations loaded once serve R rows and each converted weight vector T tokens. One row a pass
 * left the loop bound by loads (T + 1 loads for T multiply-adds); three rows bring it to
 * (T + 3) loads for 3T. Every (row, token) accumulator still sees its own products in the order
 * of k, so the values are those of one row and one token alone. The next rows are prefetched
 * as these are consumed: the hardware prefetchers alone leave the loads waiting on memory once
 * there is compute between them. */
AI void rows_tokens(int R, int T, nvlm_dtype dt, const uint8_t *w, size_t rb, const float *x, int K, float *out) {
    const size_t es = dt == NVLM_DT_F32 ? 4 : 2;
    /* prefetch distance: the next group, or further when rows are short (at least PF_MIN bytes) */
    const size_t pf = (size_t)R * rb * (((size_t)R * rb + PF_MIN - 1) / ((size_t)R * rb));
    __m512 acc[RB][TB];
    _Pragma("GCC unroll 4") for (int r = 0; r < R; r++)
        _Pragma("GCC unroll 16") for (int t = 0; t < T; t++) acc[r][t] = _mm512_setzero_ps();
    int k = 0;
    for (; k + 16 <= K; k += 16) {
        __m512 wv[RB];
        _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) {
            _mm_prefetch((const char *)w + pf + (size_t)r * rb + (size_t)k * es, _MM_HINT_T1);
            wv[r] = load16(dt, w + (size_t)r * rb, k);
        }
        _Pragma("GCC unroll 16") for (int t = 0; t < T; t++) {
            __m512 xv = _mm512_loadu_ps(x + (size_t)t * K + k);
            if (R > 1) __asm__("" : "+v"(xv)); /* one load for R rows: GCC would fold it into each FMA */
            _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
        }
    }
    const __m512 z = _mm512_setzero_ps();
    _Pragma("GCC unroll 4") for (int r = 0; r < R; r++)
        _Pragma("GCC unroll 4") for (int t = 0; t < T; t += 4) /* out has room for TB per row */
            finish4(acc[r][t], t + 1 < T ? acc[r][t + 1] : z, t + 2 < T ? acc[r][t + 2] : z, t + 3 < T ? acc[r][t + 3] : z,
                    out + r * TB + t);
    if (k < K) {
        float tail[16];
        for (int r = 0; r < R; r++) {
            nvlm_row_to_f32_avx2(tail, w + (size_t)r * rb + (size_t)k * es, dt, K - k);
            for (int t = 0; t < T; t++)
                for (int i = k; i < K; i++) out[r * TB + t] += x[(size_t)t * K + i] * tail[i - k];
        }
    }
}

#define DT(R, T)                                                                                         \
    if (dt == NVLM_DT_BF16) rows_tokens(R, T, NVLM_DT_BF16, w, rb, x, K, out);                           \
    else if (dt == NVLM_DT_F16) rows_tokens(R, T, NVLM_DT_F16, w, rb, x, K, out);                        \
    else rows_tokens(R, T, NVLM_DT_F32, w, rb, x, K, out);
#define CASE(T)                                                                                          \
    case T:                                                                                              \
        if (R == 3) { DT(3, T) } else if (R == 2) { DT(2, T) } else { DT(1, T) }                        \
        break;

/* R (1 to RB) rows from w, T tokens: out[r * TB + t]. */
static void rows_any(int R, int T, nvlm_dtype dt, const uint8_t *w, size_t rb, const float *x, int K, float *out) {
    switch (T) {
        CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) default: CASE(8)
    }
}
#undef CASE
#undef DT

/* Row groups [begin, end) of rg rows (the last one possibly shorter, done a row at a time). */
static void gemvb_rows(void *ctx, size_t begin, size_t end, int thread) {
    (void)thread;
    const gemvb_job *j = ctx;
    const int K = j->w->cols, N = j->w->rows, rg = j->rg;
    for (size_t g = begin; g < end; g++) {
        size_t r0 = g * rg;
        int R = N - (int)r0 < rg ? N - (int)r0 : rg;
        for (int rr = 0; rr < R; rr += (R == rg ? rg : 1)) {
            int Rp = R == rg ? rg : 1;
            const uint8_t *w = (const uint8_t *)j->w->data + (r0 + rr) * j->rb;
            for (int t0 = 0; t0 < j->n_tok; t0 += TB) {
                int T = j->n_tok - t0 < TB ? j->n_tok - t0 : TB;
                float out[RB * TB];
                rows_any(Rp, T, j->w->dtype, w, j->rb, j->x + (size_t)t0 * K, K, out);
                for (int r = 0; r < Rp; r++) {
                    size_t row = r0 + rr + r;
                    for (int t = 0; t < T; t++)
                        j->y[(size_t)(t0 + t) * N + row] = j->bias ? out[r * TB + t] + j->bias[row] : out[r * TB + t];
                }
            }
        }
    }
}

int nvlm_gemv_batch_avx512_ok(nvlm_dtype dt) {
    return dt == NVLM_DT_BF16 || dt == NVLM_DT_F16 || dt == NVLM_DT_F32;
}

void nvlm_gemv_batch_avx512(nvlm_pool *pool, float *y, const float *x, int n_tok, const nvlm_wmat *w,
                            const float *bias) {
    const int rg = w->cols >= RB_LONG_K ? 3 : 2;
    gemvb_job j = {.y = y, .x = x, .n_tok = n_tok, .w = w, .bias = bias, .rb = nvlm_row_bytes(w->dtype, w->cols), .rg = rg};
    nvlm_pool_run(pool, ((size_t)w->rows + rg - 1) / rg, GRAIN_ROWS / rg, gemvb_rows, &j);
}

#pragma GCC pop_options
#endif
