/* AVX2 matrix products: a 6x16 register-blocked micro-kernel over packed weight panels
 * (prefill, ViT, attention); up to NVLM_GEMV_MAX tokens go to the streaming matrix-vector
 * kernels of gemv_avx2.c (generation).
 *
 * Determinism: every output element is one FMA chain over k in index order inside a K block
 * of KC, the blocks added in order, then the bias. Which thread computes it and where its
 * tile starts does not change that chain, so results are identical for any thread count. */
#include "kernels/simd.h"
#ifdef NVLM_HAVE_AVX2_KERNELS
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum {
    MR = 6,          /* tokens per micro-tile */
    NR = 16,         /* outputs per micro-tile (two ymm) */
    KC = 256,        /* K block: a packed panel is KC x NR floats = 16 KiB (L1) */
    GROUP = 4,       /* panels packed together: x rows are reused from L1 over 64 outputs */
};

/* Fills dst[k * NR + r] (k < kc, r < NR) with B(n0 + r, k0 + k); rows r >= nr are zero. */
typedef void (*pack_fn)(const void *ctx, int n0, int nr, int k0, int kc, float *dst);

static inline __attribute__((always_inline)) void ukr(int mr, int kc, const float *a, size_t lda,
                                                      const float *b, float *c, size_t ldc, int nr,
                                                      int accumulate, const float *bias) {
    __m256 acc[MR][2];
#pragma GCC unroll 6
    for (int i = 0; i < mr; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    for (int k = 0; k < kc; k++) {
        __m256 b0 = _mm256_load_ps(b + k * NR), b1 = _mm256_load_ps(b + k * NR + 8);
#pragma GCC unroll 6
        for (int i = 0; i < mr; i++) {
            __m256 av = _mm256_broadcast_ss(a + i * lda + k);
            acc[i][0] = _mm256_fmadd_ps(av, b0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(av, b1, acc[i][1]);
        }
    }
    float bb[NR] = {0};
    if (bias) memcpy(bb, bias, sizeof(float) * (size_t)nr);
    __m256 bias0 = _mm256_loadu_ps(bb), bias1 = _mm256_loadu_ps(bb + 8);
#pragma GCC unroll 6
    for (int i = 0; i < mr; i++) {
        float *ci = c + i * ldc, tmp[NR];
        if (nr < NR) {
            memset(tmp, 0, sizeof tmp);
            if (accumulate) memcpy(tmp, ci, sizeof(float) * (size_t)nr);
            ci = tmp;
        }
        __m256 r0 = acc[i][0], r1 = acc[i][1];
        if (accumulate) {
            r0 = _mm256_add_ps(_mm256_loadu_ps(ci), r0);
            r1 = _mm256_add_ps(_mm256_loadu_ps(ci + 8), r1);
        }
        if (bias) {
            r0 = _mm256_add_ps(r0, bias0);
            r1 = _mm256_add_ps(r1, bias1);
        }
        _mm256_storeu_ps(ci, r0);
        _mm256_storeu_ps(ci + 8, r1);
        if (nr < NR) memcpy(c + i * ldc, tmp, sizeof(float) * (size_t)nr);
    }
}

static void ukr_any(int mr, int kc, const float *a, size_t lda, const float *b, float *c, size_t ldc, int nr,
                    int accumulate, const float *bias) {
    switch (mr) { /* constant mr: the accumulators stay in registers */
    case 6: ukr(6, kc, a, lda, b, c, ldc, nr, accumulate, bias); break;
    case 5: ukr(5, kc, a, lda, b, c, ldc, nr, accumulate, bias); break;
    case 4: ukr(4, kc, a, lda, b, c, ldc, nr, accumulate, bias); break;
    case 3: ukr(3, kc, a, lda, b, c, ldc, nr, accumulate, bias); break;
    case 2: ukr(2, kc, a, lda, b, c, ldc, nr, accumulate, bias); break;
    default: ukr(1, kc, a, lda, b, c, ldc, nr, accumulate, bias); break;
    }
}

/* C[0:M, n0:n1] = A[0:M, 0:K] . B^T (+ bias[n0:n1]), B reached through pack. n1 - n0 <= GROUP*NR;
 * wp holds GROUP*KC*NR floats, 32-byte aligned. */
static void gemm_cols(int M, int K, const float *A, size_t lda, pack_fn pack, const void *pctx, int n0, int n1,
                      float *C, size_t ldc, const float *bias, float *wp) {
    int np = (n1 - n0 + NR - 1) / NR;
    for (int k0 = 0; k0 < K; k0 += KC) {
        int kc = K - k0 < KC ? K - k0 : KC, last = k0 + kc >= K;
        for (int p = 0; p < np; p++) {
            int c0 = n0 + p * NR;
            pack(pctx, c0, n1 - c0 < NR ? n1 - c0 : NR, k0, kc, wp + (size_t)p * KC * NR);
        }
        for (int t0 = 0; t0 < M; t0 += MR) {
            int mr = M - t0 < MR ? M - t0 : MR;
            for (int p = 0; p < np; p++) {
                int c0 = n0 + p * NR, nr = n1 - c0 < NR ? n1 - c0 : NR;
                ukr_any(mr, kc, A + (size_t)t0 * lda + k0, lda, wp + (size_t)p * KC * NR, C + (size_t)t0 * ldc + c0, ldc,
                        nr, k0 > 0, last && bias ? bias + c0 : NULL);
            }
        }
    }
}

/* ---- packing ---- */

typedef struct strided {
    const float *p;
    size_t stride;
} strided;

/* B rows are rows of a weight matrix in any stored format. */
static void pack_wmat(const void *ctx, int n0, int nr, int k0, int kc, float *dst) {
    const nvlm_wmat *w = ctx;
    size_t row_bytes = nvlm_row_bytes(w->dtype, w->cols);
    float row[KC];
    for (int r = 0; r < nr; r++) {
        const uint8_t *src = (const uint8_t *)w->data + (size_t)(n0 + r) * row_bytes;
        if (nvlm_dtype_is_block(w->dtype)) /* k0 and kc are multiples of 32 (cols % 32 == 0) */
            nvlm_row_to_f32_avx2(row, src + nvlm_row_bytes(w->dtype, k0), w->dtype, kc);
        else
            nvlm_row_to_f32_avx2(row, src + (size_t)k0 * nvlm_dtype_size(w->dtype), w->dtype, kc);
        for (int k = 0; k < kc; k++) dst[k * NR + r] = row[k];
    }
    for (int r = nr; r < NR; r++)
        for (int k = 0; k < kc; k++) dst[k * NR + r] = 0;
}

/* B rows are float rows at a stride (keys: S = Q K^T). */
static void pack_rows_f32(const void *ctx, int n0, int nr, int k0, int kc, float *dst) {
    const strided *s = ctx;
    for (int r = 0; r < nr; r++) {
        const float *src = s->p + (size_t)(n0 + r) * s->stride + k0;
        for (int k = 0; k < kc; k++) dst[k * NR + r] = src[k];
    }
    for (int r = nr; r < NR; r++)
        for (int k = 0; k < kc; k++) dst[k * NR + r] = 0;
}

/* B^T rows are float rows at a stride (values: O = P V). */
static void pack_cols_f32(const void *ctx, int n0, int nr, int k0, int kc, float *dst) {
    const strided *s = ctx;
    for (int k = 0; k < kc; k++) {
        const float *src = s->p + (size_t)(k0 + k) * s->stride + n0;
        if (nr == NR) {
            _mm256_store_ps(dst + k * NR, _mm256_loadu_ps(src));
            _mm256_store_ps(dst + k * NR + 8, _mm256_loadu_ps(src + 8));
        } else {
            for (int r = 0; r < NR; r++) dst[k * NR + r] = r < nr ? src[r] : 0;
        }
    }
}

/* ---- matmul: y = x W^T + b ---- */

typedef struct mm_job {
    float *y;
    const float *x;
    int n_tok;
    const nvlm_wmat *w;
    const float *bias;
} mm_job;

static void mm_gemm_units(void *ctx, size_t begin, size_t end, int thread) {
    (void)thread;
    const mm_job *j = ctx;
    float *wp = aligned_alloc(64, sizeof(float) * GROUP * KC * NR);
    if (!wp) return;
    const int N = j->w->rows, K = j->w->cols;
    for (size_t u = begin; u < end; u++) {
        int n0 = (int)u * GROUP * NR, n1 = n0 + GROUP * NR < N ? n0 + GROUP * NR : N;
        gemm_cols(j->n_tok, K, j->x, (size_t)K, pack_wmat, j->w, n0, n1, j->y, (size_t)N, j->bias, wp);
    }
    free(wp);
}

void nvlm_matmul_avx2(nvlm_pool *pool, float *y, const float *x, int n_tok, const nvlm_wmat *w, const float *bias) {
    if (n_tok <= NVLM_GEMV_MAX) {
        nvlm_gemv_avx2(pool, y, x, n_tok, w, bias);
        return;
    }
    mm_job j = {y, x, n_tok, w, bias};
    size_t units = ((size_t)w->rows + GROUP * NR - 1) / (GROUP * NR);
    nvlm_pool_run(pool, units, 1, mm_gemm_units, &j);
}

/* ---- attention: per block of queries, S = Q K^T, softmax, O = P V, all via ukr ---- */

enum {
    BQ = 24,            /* queries per block: S is BQ x n_keys floats */
    PREPACK_KEYS = 8192 /* up to this many keys, K and V are packed once per head */
};

static size_t round16(size_t n) { return (n + 15) & ~(size_t)15; }

size_t nvlm_attention_scratch_avx2(int n_keys, int d) {
    size_t lds = round16((size_t)n_keys), s = BQ * lds + (size_t)GROUP * KC * NR + 16;
    if (n_keys <= PREPACK_KEYS) s += lds * (size_t)d + round16((size_t)d) * lds;
    return s;
}

static inline __m256 exp256(__m256 x) { /* Cephes expf, |rel err| < 2e-7 on [-87, 88] */
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
    __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500E-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

/* s[0:n] = softmax(scale * s[0:n]); s[n:n_zero] = 0. */
static void softmax_row(float *s, int n, int n_zero, float scale) {
    __m256 vs = _mm256_set1_ps(scale), mx = _mm256_set1_ps(-INFINITY);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_mul_ps(_mm256_loadu_ps(s + i), vs);
        _mm256_storeu_ps(s + i, v);
        mx = _mm256_max_ps(mx, v);
    }
    float m = -INFINITY, tmp[8];
    _mm256_storeu_ps(tmp, mx);
    for (int k = 0; k < 8; k++) m = tmp[k] > m ? tmp[k] : m;
    for (; i < n; i++) {
        s[i] *= scale;
        m = s[i] > m ? s[i] : m;
    }
    __m256 vm = _mm256_set1_ps(m), sum = _mm256_setzero_ps();
    for (i = 0; i + 8 <= n; i += 8) {
        __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(s + i), vm));
        _mm256_storeu_ps(s + i, e);
        sum = _mm256_add_ps(sum, e);
    }
    float rest[8] = {0};
    if (i < n) {
        memcpy(rest, s + i, sizeof(float) * (size_t)(n - i));
        for (int k = n - i; k < 8; k++) rest[k] = -INFINITY;
        __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(rest), vm));
        e = _mm256_blendv_ps(e, _mm256_setzero_ps(), _mm256_cmp_ps(_mm256_loadu_ps(rest), _mm256_set1_ps(-INFINITY), _CMP_EQ_OQ));
        _mm256_storeu_ps(rest, e);
        memcpy(s + i, rest, sizeof(float) * (size_t)(n - i));
        sum = _mm256_add_ps(sum, e);
    }
    _mm256_storeu_ps(tmp, sum);
    double total = 0;
    for (int k = 0; k < 8; k++) total += tmp[k];
    __m256 inv = _mm256_set1_ps(total > 0 ? (float)(1.0 / total) : 0.0f);
    for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(s + i, _mm256_mul_ps(_mm256_loadu_ps(s + i), inv));
    for (; i < n; i++) s[i] *= _mm256_cvtss_f32(inv);
    for (i = n; i < n_zero; i++) s[i] = 0;
}

/* C[0:M, panels] (+)= A . B^T with B already packed: panel p holds kp rows of NR floats
 * (row k at bp + p * kp * NR + k * NR). Same FMA chains as gemm_cols (K blocks of KC in order),
 * so the values do not depend on which path packed B. */
static void gemm_packed(int M, int K, const float *A, size_t lda, const float *bp, size_t kp, int n0, int n1,
                        float *C, size_t ldc) {
    for (int k0 = 0; k0 < K; k0 += KC) {
        int kc = K - k0 < KC ? K - k0 : KC;
        for (int t0 = 0; t0 < M; t0 += MR) {
            int mr = M - t0 < MR ? M - t0 : MR;
            for (int c0 = n0; c0 < n1; c0 += NR) {
                int nr = n1 - c0 < NR ? n1 - c0 : NR;
                ukr_any(mr, kc, A + (size_t)t0 * lda + k0, lda, bp + (size_t)(c0 / NR) * kp * NR + (size_t)k0 * NR,
                        C + (size_t)t0 * ldc + c0, ldc, nr, k0 > 0, NULL);
            }
        }
    }
}

void nvlm_attention_avx2(const float *q, size_t q_stride, int n_q, const float *k, size_t k_stride, const float *v,
                         size_t v_stride, int n_keys, int causal_pos0, int d, float scale, float *out,
                         size_t out_stride, float *scratch) {
    size_t lds = round16((size_t)n_keys);
    float *S = (float *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    float *wp = S + BQ * lds, *kp = wp + (size_t)GROUP * KC * NR, *vp = kp + lds * (size_t)d;
    strided ks = {k, k_stride}, vs = {v, v_stride};
    int prepack = n_keys <= PREPACK_KEYS && n_keys > 0;
    if (prepack) { /* once per head instead of once per block of queries */
        for (int j0 = 0; j0 < n_keys; j0 += NR)
            pack_rows_f32(&ks, j0, n_keys - j0 < NR ? n_keys - j0 : NR, 0, d, kp + (size_t)j0 * d);
        for (int c0 = 0; c0 < d; c0 += NR)
            for (int k0 = 0; k0 < n_keys; k0 += KC)
                pack_cols_f32(&vs, c0, d - c0 < NR ? d - c0 : NR, k0, n_keys - k0 < KC ? n_keys - k0 : KC,
                              vp + (size_t)(c0 / NR) * lds * NR + (size_t)k0 * NR);
    }
    for (int q0 = 0; q0 < n_q; q0 += BQ) {
        int bq = n_q - q0 < BQ ? n_q - q0 : BQ;
        int nk = causal_pos0 < 0 ? n_keys : causal_pos0 + q0 + bq;
        if (nk > n_keys) nk = n_keys;
        if (nk <= 0) {
            for (int i = 0; i < bq; i++) memset(out + (size_t)(q0 + i) * out_stride, 0, sizeof(float) * (size_t)d);
            continue;
        }
        if (prepack)
            gemm_packed(bq, d, q + (size_t)q0 * q_stride, q_stride, kp, (size_t)d, 0, nk, S, lds);
        else
            for (int j0 = 0; j0 < nk; j0 += GROUP * NR)
                gemm_cols(bq, d, q + (size_t)q0 * q_stride, q_stride, pack_rows_f32, &ks, j0,
                          j0 + GROUP * NR < nk ? j0 + GROUP * NR : nk, S, lds, NULL, wp);
        for (int i = 0; i < bq; i++) {
            int len = causal_pos0 < 0 ? nk : causal_pos0 + q0 + i + 1;
            softmax_row(S + (size_t)i * lds, len < nk ? len : nk, nk, scale);
        }
        if (prepack)
            gemm_packed(bq, nk, S, lds, vp, lds, 0, d, out + (size_t)q0 * out_stride, out_stride);
        else
            for (int c0 = 0; c0 < d; c0 += GROUP * NR)
                gemm_cols(bq, nk, S, lds, pack_cols_f32, &vs, c0, c0 + GROUP * NR < d ? c0 + GROUP * NR : d,
                          out + (size_t)q0 * out_stride, out_stride, NULL, wp);
    }
}

/* ---- activations ---- */

/* erf as a rational function (Eigen's float erf; abs error ~1e-7 in float arithmetic). */
static inline __m256 erf256(__m256 a) {
    __m256 x = _mm256_min_ps(_mm256_max_ps(a, _mm256_set1_ps(-4.0f)), _mm256_set1_ps(4.0f));
    __m256 x2 = _mm256_mul_ps(x, x);
    __m256 p = _mm256_set1_ps(-2.72614225801306e-10f);
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(2.77068142495902e-08f));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(-2.10102402082508e-06f));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(-5.69250639462346e-05f));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(-7.34990630326855e-04f));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(-2.95459980854025e-03f));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(-1.60960333262415e-02f));
    p = _mm256_mul_ps(p, x);
    __m256 qq = _mm256_set1_ps(-1.45660718464996e-05f);
    qq = _mm256_fmadd_ps(qq, x2, _mm256_set1_ps(-2.13374055278905e-04f));
    qq = _mm256_fmadd_ps(qq, x2, _mm256_set1_ps(-1.68282697438203e-03f));
    qq = _mm256_fmadd_ps(qq, x2, _mm256_set1_ps(-7.37332916720468e-03f));
    qq = _mm256_fmadd_ps(qq, x2, _mm256_set1_ps(-1.42647390514189e-02f));
    return _mm256_div_ps(p, qq);
}

void nvlm_gelu_avx2(float *x, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 e = erf256(_mm256_mul_ps(v, _mm256_set1_ps(0.70710678118654752f)));
        _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), v), _mm256_add_ps(_mm256_set1_ps(1.0f), e)));
    }
    if (i < n) nvlm_gelu(x + i, n - i);
}

void nvlm_silu_mul_avx2(float *a, const float *b, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(a + i);
        __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), v));
        __m256 s = _mm256_div_ps(v, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
        _mm256_storeu_ps(a + i, _mm256_mul_ps(s, _mm256_loadu_ps(b + i)));
    }
    if (i < n) nvlm_silu_mul(a + i, b + i, n - i);
}
#pragma GCC pop_options
#endif
