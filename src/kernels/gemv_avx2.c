/* AVX2 matrix-vector products (generation: 1 to NVLM_GEMV_MAX tokens): weight rows are streamed
 * once from memory and converted in registers (BF16 shift, F16 vcvtph2ps, Q8_0/Q4 blocks to float
 * then scaled per block), then multiplied by the float32 activations; or, with the int8-activation
 * option, integer dot products against activations quantized per block (nvlm_vec_dot_q_avx2).
 *
 * Determinism: each output is computed by one thread from its row alone, in a fixed order, so
 * results are identical for any thread count. */
#include "kernels/simd.h"
#ifdef NVLM_HAVE_AVX2_KERNELS
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>
#include <stdlib.h>

enum { GEMV_MAX = NVLM_GEMV_MAX };

typedef struct gemv_job {
    float *y;
    const float *x;
    int n_tok;
    const nvlm_wmat *w;
    const float *bias;
    const nvlm_block_q8a *xq; /* int8 x for block formats (option), or NULL */
    const float *xsum;        /* Q4: sum of x per block of 32, [n_tok, cols/32] */
} gemv_job;

/* One plain-format weight row against T tokens (T constant after inlining: the accumulators
 * stay in registers). */
static inline __attribute__((always_inline)) void gemv_row(int T, nvlm_dtype dt, const uint8_t *wr, const float *x,
                                                           int K, float *out) {
    __m256 acc[GEMV_MAX][2];
#pragma GCC unroll 3
    for (int t = 0; t < T; t++) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
    int k = 0;
    for (; k + 16 <= K; k += 16) {
        __m256 w0, w1;
        if (dt == NVLM_DT_BF16) {
            __m256i h = _mm256_loadu_si256((const __m256i *)(wr + 2 * (size_t)k));
            w0 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(h)), 16));
            w1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_extracti128_si256(h, 1)), 16));
        } else if (dt == NVLM_DT_F16) {
            w0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(wr + 2 * (size_t)k)));
            w1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(wr + 2 * (size_t)k + 16)));
        } else {
            w0 = _mm256_loadu_ps((const float *)(wr + 4 * (size_t)k));
            w1 = _mm256_loadu_ps((const float *)(wr + 4 * (size_t)k + 32));
        }
#pragma GCC unroll 3
        for (int t = 0; t < T; t++) {
            const float *xt = x + (size_t)t * K + k;
            acc[t][0] = _mm256_fmadd_ps(_mm256_loadu_ps(xt), w0, acc[t][0]);
            acc[t][1] = _mm256_fmadd_ps(_mm256_loadu_ps(xt + 8), w1, acc[t][1]);
        }
    }
    float tail[16];
    if (k < K) nvlm_row_to_f32_avx2(tail, wr + (size_t)k * nvlm_dtype_size(dt), dt, K - k);
    for (int t = 0; t < T; t++) {
        __m256 s = _mm256_add_ps(acc[t][0], acc[t][1]);
        __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        h = _mm_add_ss(h, _mm_movehdup_ps(h));
        float v = _mm_cvtss_f32(h);
        for (int i = k; i < K; i++) v += x[(size_t)t * K + i] * tail[i - k];
        out[t] = v;
    }
}

/* Block i of a Q8_0 / Q4 row as 4 x 8 floats q (Q8_0: int8; Q4: nibbles 0..15), its scale d
 * and (Q4) minimum m. */
static inline __attribute__((always_inline)) void qblock_load(nvlm_dtype dt, const uint8_t *wr, int i, __m256 *w,
                                                              __m256 *d, float *m) {
    if (dt == NVLM_DT_Q8_0) {
        const nvlm_block_q8_0 *b = (const nvlm_block_q8_0 *)wr + i;
        *d = _mm256_set1_ps(_cvtsh_ss(b->d));
        /* written out: a loop here is not unrolled and sends w through the stack */
        w[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)b->q)));
        w[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b->q + 8))));
        w[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b->q + 16))));
        w[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b->q + 24))));
    } else {
        const nvlm_block_q4 *b = (const nvlm_block_q4 *)wr + i;
        *d = _mm256_set1_ps(_cvtsh_ss(b->d));
        *m = _cvtsh_ss(b->m);
        __m128i bytes = _mm_loadu_si128((const __m128i *)b->q), m4 = _mm_set1_epi8(15);
        __m128i lo = _mm_and_si128(bytes, m4), hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), m4);
        w[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
        w[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
        w[2] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
        w[3] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
    }
}

/* acc += d * sum(q x) over one block. */
static inline __attribute__((always_inline)) __m256 qblock_fma(const __m256 *w, __m256 d, const float *xt, __m256 acc) {
    __m256 s = _mm256_mul_ps(w[0], _mm256_loadu_ps(xt));
    s = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(xt + 8), s);
    s = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(xt + 16), s);
    s = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(xt + 24), s);
    return _mm256_fmadd_ps(d, s, acc);
}

/* One Q8_0 / Q4 weight row against T float32 tokens: per block, the 32 weights converted to
 * float in registers, sum(q x) by FMA, then scaled by d (and, for Q4, m * sum(x) of the block
 * from xsum[t * nb + i]). Exactly the weights' values; no activation rounding. Blocks alternate
 * between two accumulators (even, odd) to hide the FMA latency. */
static inline __attribute__((always_inline)) void gemv_qrow(int T, nvlm_dtype dt, const uint8_t *wr, const float *x,
                                                            const float *xsum, int K, float *out) {
    const int nb = K / NVLM_QK;
    __m256 acc0[GEMV_MAX], acc1[GEMV_MAX];
    float macc[GEMV_MAX] = {0};
#pragma GCC unroll 3
    for (int t = 0; t < T; t++) acc0[t] = acc1[t] = _mm256_setzero_ps();
    int i = 0;
    for (; i + 2 <= nb; i += 2) {
        __m256 w0[4], w1[4], d0, d1;
        float m0 = 0, m1 = 0;
        qblock_load(dt, wr, i, w0, &d0, &m0);
        qblock_load(dt, wr, i + 1, w1, &d1, &m1);
#pragma GCC unroll 3
        for (int t = 0; t < T; t++) {
            const float *xt = x + (size_t)t * K + (size_t)i * NVLM_QK;
            acc0[t] = qblock_fma(w0, d0, xt, acc0[t]);
            acc1[t] = qblock_fma(w1, d1, xt + NVLM_QK, acc1[t]);
            if (dt == NVLM_DT_Q4) macc[t] += m0 * xsum[(size_t)t * nb + i] + m1 * xsum[(size_t)t * nb + i + 1];
        }
    }
    if (i < nb) {
        __m256 w0[4], d0;
        float m0 = 0;
        qblock_load(dt, wr, i, w0, &d0, &m0);
#pragma GCC unroll 3
        for (int t = 0; t < T; t++) {
            acc0[t] = qblock_fma(w0, d0, x + (size_t)t * K + (size_t)i * NVLM_QK, acc0[t]);
            if (dt == NVLM_DT_Q4) macc[t] += m0 * xsum[(size_t)t * nb + i];
        }
    }
    for (int t = 0; t < T; t++) {
        __m256 s = _mm256_add_ps(acc0[t], acc1[t]);
        __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        h = _mm_add_ss(h, _mm_movehdup_ps(h));
        out[t] = _mm_cvtss_f32(h) + macc[t];
    }
}

/* Streams weight rows [begin, end) once, each against up to GEMV_MAX tokens. */
static void mm_gemv_rows(void *ctx, size_t begin, size_t end, int thread) {
    (void)thread;
    const gemv_job *j = ctx;
    const int N = j->w->rows, K = j->w->cols, T = j->n_tok;
    const nvlm_dtype dt = j->w->dtype;
    const size_t row_bytes = nvlm_row_bytes(dt, K);
    for (size_t r = begin; r < end; r++) {
        const uint8_t *wr = (const uint8_t *)j->w->data + r * row_bytes;
        float out[GEMV_MAX];
        if (nvlm_dtype_is_block(dt) && j->xq) { /* int8 activations (option) */
            for (int t = 0; t < T; t++) out[t] = nvlm_vec_dot_q_avx2(dt, wr, j->xq + (size_t)t * (K / NVLM_QK), K);
        } else { /* constant (T, dtype) pairs */
#define ROW(TT)                                                                                     \
    (dt == NVLM_DT_BF16   ? gemv_row(TT, NVLM_DT_BF16, wr, j->x, K, out)                             \
     : dt == NVLM_DT_F16  ? gemv_row(TT, NVLM_DT_F16, wr, j->x, K, out)                              \
     : dt == NVLM_DT_Q8_0 ? gemv_qrow(TT, NVLM_DT_Q8_0, wr, j->x, NULL, K, out)                      \
     : dt == NVLM_DT_Q4   ? gemv_qrow(TT, NVLM_DT_Q4, wr, j->x, j->xsum, K, out)                     \
                          : gemv_row(TT, NVLM_DT_F32, wr, j->x, K, out))
            if (T == 1) ROW(1);
            else if (T == 2) ROW(2);
            else ROW(3);
#undef ROW
        }
        for (int t = 0; t < T; t++) j->y[(size_t)t * N + r] = j->bias ? out[t] + j->bias[r] : out[t];
    }
}

void nvlm_gemv_avx2(nvlm_pool *pool, float *y, const float *x, int n_tok, const nvlm_wmat *w, const float *bias) {
    gemv_job j = {y, x, n_tok, w, bias, NULL, NULL};
    /* per-call activation data on the stack up to K = 16384 */
    nvlm_block_q8a xq[GEMV_MAX * 512], *xqp = NULL;
    float xs[GEMV_MAX * 512], *xsp = NULL;
    size_t nb = (size_t)w->cols / NVLM_QK;
    if (nvlm_dtype_is_block(w->dtype) && nvlm_pool_int8_act(pool)) {
        xqp = nb * (size_t)n_tok > sizeof xq / sizeof xq[0] ? malloc(sizeof *xqp * nb * (size_t)n_tok) : xq;
        if (!xqp) return;
        for (int t = 0; t < n_tok; t++) nvlm_quantize_row_q8a_avx2(x + (size_t)t * w->cols, xqp + t * nb, w->cols);
        j.xq = xqp;
    } else if (w->dtype == NVLM_DT_Q4) { /* block sums of x for the minimum term */
        xsp = nb * (size_t)n_tok > sizeof xs / sizeof xs[0] ? malloc(sizeof *xsp * nb * (size_t)n_tok) : xs;
        if (!xsp) return;
        for (size_t b = 0; b < nb * (size_t)n_tok; b++) {
            __m256 v = _mm256_loadu_ps(x + b * NVLM_QK);
            for (int k = 1; k < 4; k++) v = _mm256_add_ps(v, _mm256_loadu_ps(x + b * NVLM_QK + 8 * k));
            __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            xsp[b] = _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
        }
        j.xsum = xsp;
    }
    nvlm_pool_run(pool, (size_t)w->rows, 16, mm_gemv_rows, &j);
    if (xqp && xqp != xq) free(xqp);
    if (xsp && xsp != xs) free(xsp);
}

#pragma GCC pop_options
#endif
