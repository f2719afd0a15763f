/* NEON matrix products: an 8x12 register-blocked micro-kernel over packed panels (prefill,
 * ViT, attention); up to NVLM_GEMV_NEON_MAX tokens go to the streaming matrix-vector kernels
 * of gemv_neon.c (generation). The micro-kernel keeps 24 accumulators (8 rows x 3 vectors of
 * 4 outputs) in registers; per k it loads 8 values of A (two vectors) and 12 of B (three) and
 * issues 24 FMAs by lane (vfmaq_laneq_f32), so A is packed too: 8 rows interleaved by k (for a
 * matmul once per call, shared by the threads; attention packs its small blocks as it goes).
 *
 * Determinism: every output element is one FMA chain over k in index order inside a K block
 * of KC, the blocks added in order, then the bias. Which thread computes it and where its
 * tile starts does not change that chain, so results are identical for any thread count. */
#include "kernels/simd_neon.h"
#ifdef NVLM_HAVE_NEON_KERNELS
#include "kernels/neon_math.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum {
    MR = 8,    /* tokens per micro-tile (two vectors of A) */
    NR = 12,   /* outputs per micro-tile (three vectors of B) */
    KC = 256,  /* K block: a packed B panel is KC x NR floats = 12 KiB */
    GROUP = 4, /* B panels packed together: a packed A block is reused over 48 outputs */
};

/* Fills dst[k * NR + r] (k < kc, r < NR) with B(n0 + r, k0 + k); rows r >= nr are zero. */
typedef void (*pack_fn)(const void *ctx, int n0, int nr, int k0, int kc, float *dst);

/* ap[k * MR + i] = A[i, k] for i < mr, zero for mr <= i < MR (the extra rows are computed and
 * dropped: a fixed tile shape keeps the accumulators in registers). */
static void pack_a(const float *A, size_t lda, int mr, int kc, float *ap) {
    for (int i = 0; i < MR; i++) {
        const float *src = A + (size_t)i * lda;
        if (i < mr)
            for (int k = 0; k < kc; k++) ap[k * MR + i] = src[k];
        else
            for (int k = 0; k < kc; k++) ap[k * MR + i] = 0;
    }
}

/* C[0:mr, 0:nr] (+)= A . B over kc from the packed ap / bp; + bias[0:nr] when bias. */
static void ukr(int kc, const float *ap, const float *bp, float *c, size_t ldc, int mr, int nr, int accumulate,
                const float *bias) {
    float32x4_t c00 = vdupq_n_f32(0), c01 = c00, c02 = c00, c10 = c00, c11 = c00, c12 = c00;
    float32x4_t c20 = c00, c21 = c00, c22 = c00, c30 = c00, c31 = c00, c32 = c00;
    float32x4_t c40 = c00, c41 = c00, c42 = c00, c50 = c00, c51 = c00, c52 = c00;
    float32x4_t c60 = c00, c61 = c00, c62 = c00, c70 = c00, c71 = c00, c72 = c00;
    for (int k = 0; k < kc; k++, ap += MR, bp += NR) {
        float32x4_t a0 = vld1q_f32(ap), a1 = vld1q_f32(ap + 4);
        float32x4_t b0 = vld1q_f32(bp), b1 = vld1q_f32(bp + 4), b2 = vld1q_f32(bp + 8);
#define ROW(i, a, l)                                                                                                   \
    c##i##0 = vfmaq_laneq_f32(c##i##0, b0, a, l), c##i##1 = vfmaq_laneq_f32(c##i##1, b1, a, l),                        \
    c##i##2 = vfmaq_laneq_f32(c##i##2, b2, a, l)
        ROW(0, a0, 0), ROW(1, a0, 1), ROW(2, a0, 2), ROW(3, a0, 3);
        ROW(4, a1, 0), ROW(5, a1, 1), ROW(6, a1, 2), ROW(7, a1, 3);
#undef ROW
    }
    const float32x4_t acc[MR][3] = {{c00, c01, c02}, {c10, c11, c12}, {c20, c21, c22}, {c30, c31, c32},
                                    {c40, c41, c42}, {c50, c51, c52}, {c60, c61, c62}, {c70, c71, c72}};
    float bb[NR] = {0};
    if (bias) memcpy(bb, bias, sizeof(float) * (size_t)nr);
    for (int i = 0; i < mr; i++) {
        float *ci = c + (size_t)i * ldc, tmp[NR];
        if (nr < NR) {
            memset(tmp, 0, sizeof tmp);
            if (accumulate) memcpy(tmp, ci, sizeof(float) * (size_t)nr);
            ci = tmp;
        }
        for (int v = 0; v < 3; v++) {
            float32x4_t r = acc[i][v];
            if (accumulate) r = vaddq_f32(vld1q_f32(ci + 4 * v), r);
            if (bias) r = vaddq_f32(r, vld1q_f32(bb + 4 * v));
            vst1q_f32(ci + 4 * v, r);
        }
        if (nr < NR) memcpy(c + (size_t)i * ldc, tmp, sizeof(float) * (size_t)nr);
    }
}

/* A packed once per matmul call for every K block and tile of MR tokens: block (k0, t0) of
 * kc x MR floats at k0 * m_pad + t0 * kc (m_pad = M rounded up to MR), as pack_a lays it out. */
static size_t apack_at(int k0, int t0, int kc, int m_pad) { return (size_t)k0 * m_pad + (size_t)t0 * kc; }

/* C[0:M, n0:n1] = A[0:M, 0:K] . B^T (+ bias[n0:n1]), B reached through pack. A is either
 * packed already (apk, apack_at: the matmul) or rows at lda packed here per tile into ap
 * (KC*MR floats: attention's blocks). n1 - n0 <= GROUP*NR; wp holds GROUP*KC*NR floats. */
static void gemm_cols(int M, int K, const float *A, size_t lda, const float *apk, pack_fn pack, const void *pctx,
                      int n0, int n1, float *C, size_t ldc, const float *bias, float *wp, float *ap) {
    int np = (n1 - n0 + NR - 1) / NR, m_pad = (M + MR - 1) / MR * MR;
    for (int k0 = 0; k0 < K; k0 += KC) {
        int kc = K - k0 < KC ? K - k0 : KC, last = k0 + kc >= K;
        for (int p = 0; p < np; p++) {
            int c0 = n0 + p * NR;
            pack(pctx, c0, n1 - c0 < NR ? n1 - c0 : NR, k0, kc, wp + (size_t)p * KC * NR);
        }
        for (int t0 = 0; t0 < M; t0 += MR) {
            int mr = M - t0 < MR ? M - t0 : MR;
            const float *at = apk ? apk + apack_at(k0, t0, kc, m_pad) : ap;
            if (!apk) pack_a(A + (size_t)t0 * lda + k0, lda, mr, kc, ap);
            for (int p = 0; p < np; p++) {
                int c0 = n0 + p * NR, nr = n1 - c0 < NR ? n1 - c0 : NR;
                ukr(kc, at, wp + (size_t)p * KC * NR, C + (size_t)t0 * ldc + c0, ldc, mr, nr, k0 > 0,
                    last && bias ? bias + c0 : NULL);
            }
        }
    }
}

/* ---- packing B ---- */

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
            nvlm_row_to_f32_neon(row, src + nvlm_row_bytes(w->dtype, k0), w->dtype, kc);
        else
            nvlm_row_to_f32_neon(row, src + (size_t)k0 * nvlm_dtype_size(w->dtype), w->dtype, kc);
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
            vst1q_f32(dst + k * NR, vld1q_f32(src));
            vst1q_f32(dst + k * NR + 4, vld1q_f32(src + 4));
            vst1q_f32(dst + k * NR + 8, vld1q_f32(src + 8));
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
    float *apk; /* x packed (apack_at) */
    float *wp;  /* per thread GROUP * KC * NR floats (weights packed) */
} mm_job;

/* Packs the tiles [begin, end) of MR tokens of x for every K block. */
static void mm_pack_x(void *ctx, size_t begin, size_t end, int thread) {
    (void)thread;
    const mm_job *j = ctx;
    const int M = j->n_tok, K = j->w->cols, m_pad = (M + MR - 1) / MR * MR;
    for (size_t u = begin; u < end; u++) {
        int t0 = (int)u * MR, mr = M - t0 < MR ? M - t0 : MR;
        for (int k0 = 0; k0 < K; k0 += KC) {
            int kc = K - k0 < KC ? K - k0 : KC;
            pack_a(j->x + (size_t)t0 * K + k0, (size_t)K, mr, kc, j->apk + apack_at(k0, t0, kc, m_pad));
        }
    }
}

static void mm_gemm_units(void *ctx, size_t begin, size_t end, int thread) {
    const mm_job *j = ctx;
    float *wp = j->wp + (size_t)thread * GROUP * KC * NR;
    const int N = j->w->rows, K = j->w->cols;
    for (size_t u = begin; u < end; u++) {
        int n0 = (int)u * GROUP * NR, n1 = n0 + GROUP * NR < N ? n0 + GROUP * NR : N;
        gemm_cols(j->n_tok, K, NULL, 0, j->apk, pack_wmat, j->w, n0, n1, j->y, (size_t)N, j->bias, wp, NULL);
    }
}

int nvlm_matmul_neon(nvlm_pool *pool, float *y, const float *x, int n_tok, const nvlm_wmat *w, const float *bias,
                     nvlm_err *err) {
    if (n_tok <= NVLM_GEMV_NEON_MAX) return nvlm_gemv_neon(pool, y, x, n_tok, w, bias, err);
    return nvlm_gemm_neon(pool, y, x, n_tok, w, bias, err);
}

int nvlm_gemm_neon(nvlm_pool *pool, float *y, const float *x, int n_tok, const nvlm_wmat *w, const float *bias,
                   nvlm_err *err) {
    if (n_tok <= 0) return NVLM_OK;
    /* x is packed once per call (not once per group of outputs): every thread reads it; the
     * threads' weight panels follow, all taken before the loops */
    size_t tiles = ((size_t)n_tok + MR - 1) / MR;
    size_t ap_n = (tiles * MR * (size_t)w->cols + 15) & ~(size_t)15, wp_n = (size_t)GROUP * KC * NR;
    size_t bytes = sizeof(float) * (ap_n + wp_n * (size_t)nvlm_pool_threads(pool));
    float *apk = nvlm_pool_scratch(pool, bytes);
    if (!apk) return nvlm_pool_scratch_fail(err, "a matrix product", bytes);
    mm_job j = {.y = y, .x = x, .n_tok = n_tok, .w = w, .bias = bias, .apk = apk, .wp = apk + ap_n};
    nvlm_pool_run(pool, tiles, 4, mm_pack_x, &j);
    size_t units = ((size_t)w->rows + GROUP * NR - 1) / (GROUP * NR);
    nvlm_pool_run(pool, units, 1, mm_gemm_units, &j);
    free(apk);
    return NVLM_OK;
}

/* ---- attention: per block of queries, S = Q K^T, softmax, O = P V, all via ukr ---- */

enum {
    BQ = 24,             /* queries per block (3 micro-tiles): S is BQ x n_keys floats */
    PREPACK_KEYS = 8192, /* up to this many keys, K and V are packed once per head */
    DIRECT_Q = 3         /* up to this many queries: no packing (attend_direct) */
};

static size_t round_up(size_t n, size_t m) { return (n + m - 1) / m * m; }

/* Layout of the scratch: S [BQ x lds], wp, ap, then (prepack) K panels and V panels. */
size_t nvlm_attention_scratch_neon(int n_q, int n_keys, int d) {
    if (n_q <= DIRECT_Q) return (size_t)(n_keys > 0 ? n_keys : 1); /* the scores */
    size_t lds = round_up((size_t)(n_keys > 0 ? n_keys : 1), 4);
    size_t s = BQ * lds + (size_t)GROUP * KC * NR + (size_t)KC * MR;
    if (n_keys <= PREPACK_KEYS) s += round_up((size_t)n_keys, NR) * (size_t)d + round_up((size_t)d, NR) * lds;
    return s;
}

/* s[0:n] = softmax(scale * s[0:n]); s[n:n_zero] = 0. n >= 1. */
static void softmax_row(float *s, int n, int n_zero, float scale) {
    float32x4_t mx = vdupq_n_f32(-INFINITY);
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        float32x4_t v = vmulq_n_f32(vld1q_f32(s + i), scale);
        vst1q_f32(s + i, v);
        mx = vmaxq_f32(mx, v);
    }
    float m = vmaxvq_f32(mx);
    for (; i < n; i++) {
        s[i] *= scale;
        m = s[i] > m ? s[i] : m;
    }
    float32x4_t vm = vdupq_n_f32(m), sum = vdupq_n_f32(0);
    for (i = 0; i + 4 <= n; i += 4) {
        float32x4_t e = nvlm_neon_exp(vsubq_f32(vld1q_f32(s + i), vm));
        vst1q_f32(s + i, e);
        sum = vaddq_f32(sum, e);
    }
    if (i < n) { /* the tail as one vector padded with -inf, whose exp is forced to 0 */
        float rest[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
        memcpy(rest, s + i, sizeof(float) * (size_t)(n - i));
        float32x4_t r = vld1q_f32(rest);
        float32x4_t e = nvlm_neon_exp(vsubq_f32(r, vm));
        e = vbslq_f32(vceqq_f32(r, vdupq_n_f32(-INFINITY)), vdupq_n_f32(0), e);
        vst1q_f32(rest, e);
        memcpy(s + i, rest, sizeof(float) * (size_t)(n - i));
        sum = vaddq_f32(sum, e);
    }
    float lanes[4];
    vst1q_f32(lanes, sum);
    double total = (double)lanes[0] + lanes[1] + lanes[2] + lanes[3];
    float inv = total > 0 ? (float)(1.0 / total) : 0.0f;
    for (i = 0; i + 4 <= n; i += 4) vst1q_f32(s + i, vmulq_n_f32(vld1q_f32(s + i), inv));
    for (; i < n; i++) s[i] *= inv;
    for (i = n; i < n_zero; i++) s[i] = 0;
}

/* C[0:M, n0:n1] (+)= A . B^T with B already packed: panel p holds kp rows of NR floats
 * (row k at bp + p * kp * NR + k * NR). Same FMA chains as gemm_cols (K blocks of KC in order),
 * so the values do not depend on which path packed B. */
static void gemm_packed(int M, int K, const float *A, size_t lda, const float *bp, size_t kp, int n0, int n1,
                        float *C, size_t ldc, float *ap) {
    for (int k0 = 0; k0 < K; k0 += KC) {
        int kc = K - k0 < KC ? K - k0 : KC;
        for (int t0 = 0; t0 < M; t0 += MR) {
            int mr = M - t0 < MR ? M - t0 : MR;
            pack_a(A + (size_t)t0 * lda + k0, lda, mr, kc, ap);
            for (int c0 = n0; c0 < n1; c0 += NR) {
                int nr = n1 - c0 < NR ? n1 - c0 : NR;
                ukr(kc, ap, bp + (size_t)(c0 / NR) * kp * NR + (size_t)k0 * NR, C + (size_t)t0 * ldc + c0, ldc, mr,
                    nr, k0 > 0, NULL);
            }
        }
    }
}

/* ---- few queries (generation): K and V read in place, no packing (as gemm_avx2.c) ---- */

#define UNROLL8 _Pragma("GCC unroll 8")

/* S[r] = q . k_r for nk (1..8) key rows: one 4-lane FMA chain per key over d in order, the
 * d % 4 tail added after; the keys share each load of q. */
static inline __attribute__((always_inline)) void dots(int nk, const float *q, const float *k, size_t ks, int d,
                                                       float *S) {
    float32x4_t acc[8];
    UNROLL8
    for (int r = 0; r < 8; r++) acc[r] = vdupq_n_f32(0);
    int c = 0;
    for (; c + 4 <= d; c += 4) {
        float32x4_t qv = vld1q_f32(q + c);
        UNROLL8
        for (int r = 0; r < nk; r++) acc[r] = vfmaq_f32(acc[r], qv, vld1q_f32(k + (size_t)r * ks + c));
    }
    for (int r = 0; r < nk; r++) {
        float o = vaddvq_f32(acc[r]);
        for (int t = c; t < d; t++) o = fmaf(q[t], k[(size_t)r * ks + t], o);
        S[r] = o;
    }
}

/* o[0:d] = sum_j S[j] v_j: 32 columns at a time in 8 accumulators, keys in order. */
static void weighted_rows(const float *S, int n, const float *v, size_t vs, int d, float *o) {
    for (int c0 = 0; c0 + 4 <= d; c0 += 32) {
        int nv = (d - c0) / 4 < 8 ? (d - c0) / 4 : 8;
        float32x4_t acc[8];
        UNROLL8
        for (int r = 0; r < 8; r++) acc[r] = vdupq_n_f32(0);
        for (int j = 0; j < n; j++) {
            const float *vj = v + (size_t)j * vs + c0;
            if (nv == 8) {
                UNROLL8
                for (int r = 0; r < 8; r++) acc[r] = vfmaq_n_f32(acc[r], vld1q_f32(vj + 4 * r), S[j]);
            } else {
                for (int r = 0; r < nv; r++) acc[r] = vfmaq_n_f32(acc[r], vld1q_f32(vj + 4 * r), S[j]);
            }
        }
        for (int r = 0; r < nv; r++) vst1q_f32(o + c0 + 4 * r, acc[r]);
    }
    for (int c = d / 4 * 4; c < d; c++) {
        float a = 0;
        for (int j = 0; j < n; j++) a = fmaf(S[j], v[(size_t)j * vs + c], a);
        o[c] = a;
    }
}

#include "kernels/attend_direct.h"

void nvlm_attention_neon(const float *q, size_t q_stride, int n_q, const float *k, size_t k_stride, const float *v,
                         size_t v_stride, int n_keys, int causal_pos0, int d, float scale, float *out,
                         size_t out_stride, float *scratch) {
    if (n_q <= DIRECT_Q) {
        attend_direct(q, q_stride, n_q, k, k_stride, v, v_stride, n_keys, causal_pos0, d, scale, out, out_stride, scratch);
        return;
    }
    size_t lds = round_up((size_t)(n_keys > 0 ? n_keys : 1), 4);
    float *S = scratch, *wp = S + BQ * lds, *ap = wp + (size_t)GROUP * KC * NR, *kp = ap + (size_t)KC * MR;
    float *vp = kp + round_up((size_t)n_keys, NR) * (size_t)d;
    strided ks = {k, k_stride}, vs = {v, v_stride};
    int prepack = n_keys <= PREPACK_KEYS && n_keys > 0;
    if (prepack) { /* once per head instead of once per block of queries */
        for (int j0 = 0; j0 < n_keys; j0 += NR)
            pack_rows_f32(&ks, j0, n_keys - j0 < NR ? n_keys - j0 : NR, 0, d, kp + (size_t)j0 * d);
        for (int c0 = 0; c0 < d; c0 += NR)
            pack_cols_f32(&vs, c0, d - c0 < NR ? d - c0 : NR, 0, n_keys, vp + (size_t)(c0 / NR) * lds * NR);
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
            gemm_packed(bq, d, q + (size_t)q0 * q_stride, q_stride, kp, (size_t)d, 0, nk, S, lds, ap);
        else
            for (int j0 = 0; j0 < nk; j0 += GROUP * NR)
                gemm_cols(bq, d, q + (size_t)q0 * q_stride, q_stride, NULL, pack_rows_f32, &ks, j0,
                          j0 + GROUP * NR < nk ? j0 + GROUP * NR : nk, S, lds, NULL, wp, ap);
        for (int i = 0; i < bq; i++) {
            int len = causal_pos0 < 0 ? nk : causal_pos0 + q0 + i + 1;
            softmax_row(S + (size_t)i * lds, len < nk ? len : nk, nk, scale);
        }
        if (prepack)
            gemm_packed(bq, nk, S, lds, vp, lds, 0, d, out + (size_t)q0 * out_stride, out_stride, ap);
        else
            for (int c0 = 0; c0 < d; c0 += GROUP * NR)
                gemm_cols(bq, nk, S, lds, NULL, pack_cols_f32, &vs, c0, c0 + GROUP * NR < d ? c0 + GROUP * NR : d,
                          out + (size_t)q0 * out_stride, out_stride, NULL, wp, ap);
    }
}
#endif
