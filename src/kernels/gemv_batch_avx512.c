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
    GRAIN_ROWS = 32,
};

typedef struct gemvb_job {
    float *y;
    const float *x;
    int n_tok;
    const nvlm_wmat *w;
    const float *bias;
    size_t rb;
} gemvb_job;

AI __m512 load16(nvlm_dtype dt, const uint8_t *row, int k) {
    if (dt == NVLM_DT_BF16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(row + 2 * (size_t)k))), 16));
    if (dt == NVLM_DT_F16) return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(row + 2 * (size_t)k)));
    return _mm512_loadu_ps((const float *)(row + 4 * (size_t)k));
}

/* The AVX2 kernel's reduction of its two accumulators. */
AI float finish16(__m512 acc) {
    __m256 v = _mm256_add_ps(_mm512_castps512_ps256(acc), _mm512_extractf32x8_ps(acc, 1));
    float f[8];
    _mm256_storeu_ps(f, v);
    return ((f[0] + f[1]) + (f[2] + f[3])) + ((f[4] + f[5]) + (f[6] + f[7]));
}

/* One row (one stream: read faster than several interleaved, as on AVX2) against T tokens (T
 * constant after inlining). The next row is prefetched as this one is consumed: the hardware
 * prefetchers alone leave the loads waiting on memory once there is compute between them. */
AI void row_tokens(int T, nvlm_dtype dt, const uint8_t *w, size_t rb, const float *x, int K, float *out) {
    const size_t es = dt == NVLM_DT_F32 ? 4 : 2;
    __m512 acc[TB];
    _Pragma("GCC unroll 16") for (int t = 0; t < T; t++) acc[t] = _mm512_setzero_ps();
    int k = 0;
    for (; k + 16 <= K; k += 16) {
        _mm_prefetch((const char *)w + rb + (size_t)k * es, _MM_HINT_T0);
        __m512 wv = load16(dt, w, k);
        _Pragma("GCC unroll 16") for (int t = 0; t < T; t++)
            acc[t] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + (size_t)t * K + k), acc[t]);
    }
    _Pragma("GCC unroll 16") for (int t = 0; t < T; t++) out[t] = finish16(acc[t]);
    if (k < K) {
        float tail[16];
        nvlm_row_to_f32_avx2(tail, w + (size_t)k * es, dt, K - k);
        for (int t = 0; t < T; t++)
            for (int i = k; i < K; i++) out[t] += x[(size_t)t * K + i] * tail[i - k];
    }
}

#define CASE(T)                                                                                          \
    case T:                                                                                              \
        if (dt == NVLM_DT_BF16) row_tokens(T, NVLM_DT_BF16, w, rb, x, K, out);                          \
        else if (dt == NVLM_DT_F16) row_tokens(T, NVLM_DT_F16, w, rb, x, K, out);                       \
        else row_tokens(T, NVLM_DT_F32, w, rb, x, K, out);                                              \
        break;

static void row_any(int T, nvlm_dtype dt, const uint8_t *w, size_t rb, const float *x, int K, float *out) {
    switch (T) {
        CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) default: CASE(8)
    }
}
#undef CASE

static void gemvb_rows(void *ctx, size_t begin, size_t end, int thread) {
    (void)thread;
    const gemvb_job *j = ctx;
    const int K = j->w->cols, N = j->w->rows;
    for (size_t r = begin; r < end; r++) {
        const uint8_t *w = (const uint8_t *)j->w->data + r * j->rb;
        for (int t0 = 0; t0 < j->n_tok; t0 += TB) {
            int T = j->n_tok - t0 < TB ? j->n_tok - t0 : TB;
            float out[TB];
            row_any(T, j->w->dtype, w, j->rb, j->x + (size_t)t0 * K, K, out);
            for (int t = 0; t < T; t++) j->y[(size_t)(t0 + t) * N + r] = j->bias ? out[t] + j->bias[r] : out[t];
        }
    }
}

int nvlm_gemv_batch_avx512_ok(nvlm_dtype dt) {
    return dt == NVLM_DT_BF16 || dt == NVLM_DT_F16 || dt == NVLM_DT_F32;
}

void nvlm_gemv_batch_avx512(nvlm_pool *pool, float *y, const float *x, int n_tok, const nvlm_wmat *w,
                            const float *bias) {
    gemvb_job j = {.y = y, .x = x, .n_tok = n_tok, .w = w, .bias = bias, .rb = nvlm_row_bytes(w->dtype, w->cols)};
    nvlm_pool_run(pool, (size_t)w->rows, GRAIN_ROWS, gemvb_rows, &j);
}

#pragma GCC pop_options
#endif
