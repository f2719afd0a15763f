/* AVX2 matrix products: a 6x16 register-blocked micro-kernel over packed operands (prefill, ViT,
 * attention); up to NVLM_GEMV_MAX tokens go to the streaming matrix-vector kernels of
 * gemv_avx2.c (generation).
 *
 * Packing: the activations (A, the broadcast side) are copied once per call into slivers of
 * MR rows, k-major (row i of k at [k * MR + i]), so the micro-kernel reads one contiguous
 * stream: rows 4 KiB apart no longer alias in the L1 sets and one pointer walks them. The
 * weights (B) are converted to float32 per K block of KC into panels of NR outputs, k-major,
 * GROUP panels at a time (in L2), and each A sliver is applied to the GROUP panels in turn
 * while it sits in L1.
 *
 * Determinism: every output element is one FMA chain over k in index order inside a K block
 * of KC, the blocks added in order, then the bias. Which thread computes it, where its tile
 * or group starts and whether its sliver is padded do not change that chain, so results are
 * identical for any thread count. */
#include "kernels/simd.h"
#ifdef NVLM_HAVE_AVX2_KERNELS
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum {
    MR = 6,          /* tokens per micro-tile (a packed A sliver) */
    NR = 16,         /* outputs per micro-tile (two ymm): a packed B panel */
    KC = 256,        /* K block: a packed panel is KC x NR floats = 16 KiB */
    GROUP = 4,       /* panels packed together (64 KiB, L2): an A sliver is reused from L1 over them */
    PF_B = 512,      /* the micro-kernel prefetches its B panel this many floats (32 k steps) ahead */
    PF_SLIVERS = 8,  /* B's next K block is prefetched this many slivers before the block ends */
};


/* ---- the micro-kernel ---- */

/* C[0:mr, 0:nr] (+)= A . B over kc. A's row i at step k is a[i * rs + k * ks]: a packed sliver
 * (rs 1, ks MR; rows past mr are zeros) or rows at a stride (rs lda, ks 1; rows past mr are
 * read from row 0). Rows past mr are computed and dropped. b is a packed panel (NR floats per
 * k, 32-byte aligned). accumulate: add to C (the K blocks after the first); bias: added after
 * (the last block). pf: the A sliver to prefetch (the next one). */
static inline __attribute__((always_inline)) void ukr_body(int kc, const float *a, size_t rs, size_t ks,
                                                           const float *restrict b, float *c, size_t ldc, int mr,
                                                           int nr, int accumulate, const float *bias, const float *pf) {
    const float *a0 = a, *a1 = a + (mr > 1 ? rs : 0), *a2 = a + (mr > 2 ? 2 * rs : 0);
    const float *a3 = a + (mr > 3 ? 3 * rs : 0), *a4 = a + (mr > 4 ? 4 * rs : 0), *a5 = a + (mr > 5 ? 5 * rs : 0);
    if (rs == 1) a1 = a + 1, a2 = a + 2, a3 = a + 3, a4 = a + 4, a5 = a + 5; /* packed: zero rows */
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    /* one k step: 2 loads of B, 6 broadcasts of A, 12 FMAs */
#define UKR_STEP(k)                                                                                      \
    do {                                                                                                 \
        const __m256 b0 = _mm256_load_ps(b + (k) * NR), b1 = _mm256_load_ps(b + (k) * NR + 8);           \
        const size_t o = (size_t)(k) * ks;                                                               \
        __m256 av = _mm256_broadcast_ss(a0 + o);                                                         \
        c00 = _mm256_fmadd_ps(av, b0, c00), c01 = _mm256_fmadd_ps(av, b1, c01);                          \
        av = _mm256_broadcast_ss(a1 + o);                                                                \
        c10 = _mm256_fmadd_ps(av, b0, c10), c11 = _mm256_fmadd_ps(av, b1, c11);                          \
        av = _mm256_broadcast_ss(a2 + o);                                                                \
        c20 = _mm256_fmadd_ps(av, b0, c20), c21 = _mm256_fmadd_ps(av, b1, c21);                          \
        av = _mm256_broadcast_ss(a3 + o);                                                                \
        c30 = _mm256_fmadd_ps(av, b0, c30), c31 = _mm256_fmadd_ps(av, b1, c31);                          \
        av = _mm256_broadcast_ss(a4 + o);                                                                \
        c40 = _mm256_fmadd_ps(av, b0, c40), c41 = _mm256_fmadd_ps(av, b1, c41);                          \
        av = _mm256_broadcast_ss(a5 + o);                                                                \
        c50 = _mm256_fmadd_ps(av, b0, c50), c51 = _mm256_fmadd_ps(av, b1, c51);                          \
    } while (0)
    int k = 0;
    for (; k + 4 <= kc; k += 4) {
        /* the next sliver (from L3 when a group starts; 96 bytes of it per 4 steps) and B ahead (L2) */
        _mm_prefetch((const char *)(pf + k * MR), _MM_HINT_T0);
        _mm_prefetch((const char *)(pf + k * MR + 16), _MM_HINT_T0);
        _mm_prefetch((const char *)(b + k * NR + PF_B), _MM_HINT_T0);
        UKR_STEP(k);
        UKR_STEP(k + 1);
        UKR_STEP(k + 2);
        UKR_STEP(k + 3);
    }
    for (; k < kc; k++) UKR_STEP(k);
#undef UKR_STEP
    __m256 acc[MR][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
    __m256 bias0 = _mm256_setzero_ps(), bias1 = bias0;
    if (bias) {
        float bb[NR] = {0};
        memcpy(bb, bias, sizeof(float) * (size_t)nr);
        bias0 = _mm256_loadu_ps(bb), bias1 = _mm256_loadu_ps(bb + 8);
    }
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

/* A packed (the matrix products). */
static void ukr(int kc, const float *a, const float *b, float *c, size_t ldc, int mr, int nr, int accumulate,
                const float *bias, const float *pf) {
    ukr_body(kc, a, 1, MR, b, c, ldc, mr, nr, accumulate, bias, pf);
}

/* A as rows at a stride (attention's probabilities: already in L2, packing them would cost a
 * copy of S per block). */
static void ukr_rows(int kc, const float *a, size_t lda, const float *b, float *c, size_t ldc, int mr, int nr,
                     int accumulate) {
    ukr_body(kc, a, lda, 1, b, c, ldc, mr, nr, accumulate, NULL, b);
}

/* ---- packing ---- */

/* In-place transpose of the 8x8 block r[row][col]. */
static inline void transpose8(__m256 r[8]) {
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(s0, s4, 0x20), r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    r[2] = _mm256_permute2f128_ps(s2, s6, 0x20), r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    r[4] = _mm256_permute2f128_ps(s0, s4, 0x31), r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    r[6] = _mm256_permute2f128_ps(s2, s6, 0x31), r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

/* Packed A: K blocks one after the other, each holding the mp = ceil(M / MR) * MR rows as
 * slivers of MR rows, k-major: element (t, k0 + k) of the block at k0 is at
 * ap[k0 * mp + t / MR * MR * kc + k * MR + t % MR]. Each block is one sequential stream. */
static inline size_t a_off(size_t mp, int k0, int kc, int t0) { return (size_t)k0 * mp + (size_t)t0 * kc; }

/* Packs rows t0 .. t0 + mr of x (row stride lda, K columns) as the sliver at t0; rows i >= mr
 * are zero. */
static void pack_a(const float *x, size_t lda, int mr, int K, float *ap, size_t mp, int t0) {
    const float *row[MR];
    for (int i = 0; i < MR; i++) row[i] = x + (size_t)(t0 + (i < mr ? i : 0)) * lda;
    for (int k0 = 0; k0 < K; k0 += KC) {
        int kc = K - k0 < KC ? K - k0 : KC, k = 0;
        float *dst = ap + a_off(mp, k0, kc, t0);
        if (mr == MR)
            for (; k + 8 <= kc; k += 8) {
                __m256 r[8];
                for (int i = 0; i < MR; i++) r[i] = _mm256_loadu_ps(row[i] + k0 + k);
                r[6] = r[7] = _mm256_setzero_ps();
                transpose8(r);
                for (int j = 0; j < 8; j++) { /* 6 floats: 4 + 2, never past the sliver */
                    float *d = dst + (size_t)(k + j) * MR;
                    _mm_storeu_ps(d, _mm256_castps256_ps128(r[j]));
                    _mm_storel_pi((__m64 *)(d + 4), _mm256_extractf128_ps(r[j], 1));
                }
            }
        for (; k < kc; k++)
            for (int i = 0; i < MR; i++) dst[(size_t)k * MR + i] = i < mr ? row[i][k0 + k] : 0.0f;
    }
}

/* dst[k * NR + r] = rows[r][k] for k < kc, r < NR (rows: NR rows of KC floats). */
static void transpose_panel(const float (*rows)[KC], int kc, float *dst) {
    int k = 0;
    for (; k + 8 <= kc; k += 8)
        for (int h = 0; h < NR; h += 8) {
            __m256 r[8];
            for (int j = 0; j < 8; j++) r[j] = _mm256_load_ps(rows[h + j] + k);
            transpose8(r);
            for (int j = 0; j < 8; j++) _mm256_store_ps(dst + (size_t)(k + j) * NR + h, r[j]);
        }
    for (; k < kc; k++)
        for (int r = 0; r < NR; r++) dst[(size_t)k * NR + r] = rows[r][k];
}

/* Fills dst[k * NR + r] (k < kc, r < NR) with B(n0 + r, k0 + k); rows r >= nr are zero.
 * dst NULL: only prefetch what that call would read (weights: from DRAM into L2). */
typedef void (*pack_fn)(const void *ctx, int n0, int nr, int k0, int kc, float *dst);

/* B rows are rows of a weight matrix in any stored format: converted, then transposed. */
static void pack_wmat(const void *ctx, int n0, int nr, int k0, int kc, float *dst) {
    const nvlm_wmat *w = ctx;
    size_t row_bytes = nvlm_row_bytes(w->dtype, w->cols);
    size_t off = nvlm_dtype_is_block(w->dtype) ? nvlm_row_bytes(w->dtype, k0) /* k0 % 32 == 0 */
                                               : (size_t)k0 * nvlm_dtype_size(w->dtype);
    if (!dst) { /* prefetch into L2 only */
        size_t bytes = nvlm_dtype_is_block(w->dtype) ? nvlm_row_bytes(w->dtype, kc) : (size_t)kc * nvlm_dtype_size(w->dtype);
        for (int r = 0; r < nr; r++) {
            const char *pr = (const char *)w->data + (size_t)(n0 + r) * row_bytes + off;
            for (size_t b = 0; b < bytes; b += 64) _mm_prefetch(pr + b, _MM_HINT_T1);
        }
        return;
    }
    const uint8_t *src = (const uint8_t *)w->data + (size_t)n0 * row_bytes + off;
    int k = 0;
    if (w->dtype == NVLM_DT_F16 || w->dtype == NVLM_DT_BF16 || w->dtype == NVLM_DT_F32) {
        /* 8 rows x 8 values converted in registers and transposed: no row buffer */
        const size_t es = nvlm_dtype_size(w->dtype);
        for (; k + 8 <= kc; k += 8)
            for (int h = 0; h < NR; h += 8) {
                __m256 r[8];
                for (int j = 0; j < 8; j++) {
                    const uint8_t *p = src + (size_t)(h + j) * row_bytes + (size_t)k * es;
                    r[j] = h + j >= nr                    ? _mm256_setzero_ps()
                           : w->dtype == NVLM_DT_F16  ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p))
                           : w->dtype == NVLM_DT_BF16 ? _mm256_castsi256_ps(_mm256_slli_epi32(
                                                            _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16))
                                                      : _mm256_loadu_ps((const float *)p);
                }
                transpose8(r);
                for (int j = 0; j < 8; j++) _mm256_store_ps(dst + (size_t)(k + j) * NR + h, r[j]);
            }
        if (k == kc) return;
    }
    float rows[NR][KC] __attribute__((aligned(32)));
    for (int r = 0; r < NR; r++) {
        if (r < nr) {
            const uint8_t *p = src + (size_t)r * row_bytes; /* block formats: k is 0 here */
            p += nvlm_dtype_is_block(w->dtype) ? 0 : (size_t)k * nvlm_dtype_size(w->dtype);
            nvlm_row_to_f32_avx2(rows[r], p, w->dtype, kc - k);
        } else {
            memset(rows[r], 0, sizeof(float) * (size_t)(kc - k));
        }
    }
    transpose_panel((const float(*)[KC])rows, kc - k, dst + (size_t)k * NR);
}

typedef struct strided {
    const float *p;
    size_t stride;
} strided;

/* B rows are float rows at a stride (keys: S = Q K^T). */
static void pack_rows_f32(const void *ctx, int n0, int nr, int k0, int kc, float *dst) {
    const strided *s = ctx;
    if (!dst) return;
    float rows[NR][KC] __attribute__((aligned(32)));
    for (int r = 0; r < NR; r++) {
        if (r < nr) memcpy(rows[r], s->p + (size_t)(n0 + r) * s->stride + k0, sizeof(float) * (size_t)kc);
        else memset(rows[r], 0, sizeof(float) * (size_t)kc);
    }
    transpose_panel((const float(*)[KC])rows, kc, dst);
}

/* B^T rows are float rows at a stride (values: O = P V). */
static void pack_cols_f32(const void *ctx, int n0, int nr, int k0, int kc, float *dst) {
    const strided *s = ctx;
    if (!dst) return;
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

/* ---- blocked products ---- */

/* C[0:M, n0:n1] = A . B^T (+ bias[n0:n1]), A packed (see a_off), B reached through pack.
 * n1 - n0 <= GROUP*NR; wp holds GROUP*KC*NR floats, 32-byte aligned. Near the end of each K
 * block, B's next block (after the last, columns [pn0, pn1) at k 0: the caller's next group)
 * is prefetched, so packing it does not wait on memory. */
static void gemm_cols(int M, int K, const float *ap, pack_fn pack, const void *pctx, int n0, int n1, float *C,
                      size_t ldc, const float *bias, float *wp, int pn0, int pn1) {
    int np = (n1 - n0 + NR - 1) / NR;
    size_t mp = (size_t)(M + MR - 1) / MR * MR;
    int t_pf = M - PF_SLIVERS * MR > 0 ? (M - PF_SLIVERS * MR) / MR * MR : 0;
    for (int k0 = 0; k0 < K; k0 += KC) {
        int kc = K - k0 < KC ? K - k0 : KC, last = k0 + kc >= K;
        for (int p = 0; p < np; p++) {
            int c0 = n0 + p * NR;
            pack(pctx, c0, n1 - c0 < NR ? n1 - c0 : NR, k0, kc, wp + (size_t)p * KC * NR);
        }
        for (int t0 = 0; t0 < M; t0 += MR) {
            int mr = M - t0 < MR ? M - t0 : MR;
            const float *as = ap + a_off(mp, k0, kc, t0);
            if (t0 == t_pf) {
                int f0 = last ? pn0 : n0, f1 = last ? pn1 : n1, fk = last ? 0 : k0 + KC;
                int fkc = K - fk < KC ? K - fk : KC;
                for (int c0 = f0; c0 < f1; c0 += NR) pack(pctx, c0, f1 - c0 < NR ? f1 - c0 : NR, fk, fkc, NULL);
            }
            for (int p = 0; p < np; p++) {
                int c0 = n0 + p * NR, nr = n1 - c0 < NR ? n1 - c0 : NR;
                ukr(kc, as, wp + (size_t)p * KC * NR, C + (size_t)t0 * ldc + c0, ldc, mr, nr, k0 > 0,
                    last && bias ? bias + c0 : NULL, as + MR * kc);
            }
        }
    }
}

/* C[0:M, n0:n1] (+)= A . B^T with B already packed: panel p holds kp rows of NR floats (row k at
 * bp + p * kp * NR + k * NR). A packed as in gemm_cols (lda 0: K blocks of KC, the FMA chains
 * of gemm_cols) or rows at a stride of lda (one K block). */
static void gemm_packed(int M, int K, const float *a, size_t lda, const float *bp, size_t kp, int n0, int n1,
                        float *C, size_t ldc) {
    size_t mp = (size_t)(M + MR - 1) / MR * MR;
    /* A as rows (P V): one K block over all keys, B streams from L2; no C round trips, and no
     * block of a single key when n_keys = 1025 (the ViT) */
    const int kb = lda ? K : KC;
    for (int k0 = 0; k0 < K; k0 += kb) {
        int kc = K - k0 < kb ? K - k0 : kb;
        for (int t0 = 0; t0 < M; t0 += MR) {
            int mr = M - t0 < MR ? M - t0 : MR;
            const float *as = lda ? a + (size_t)t0 * lda + k0 : a + a_off(mp, k0, kc, t0);
            for (int c0 = n0; c0 < n1; c0 += NR) {
                int nr = n1 - c0 < NR ? n1 - c0 : NR;
                const float *bs = bp + (size_t)(c0 / NR) * kp * NR + (size_t)k0 * NR;
                float *cs = C + (size_t)t0 * ldc + c0;
                if (lda) ukr_rows(kc, as, lda, bs, cs, ldc, mr, nr, k0 > 0);
                else ukr(kc, as, bs, cs, ldc, mr, nr, k0 > 0, NULL, as + MR * kc);
            }
        }
    }
}

/* ---- matmul: y = x W^T + b, for one or several weight matrices sharing x ---- */

typedef struct mm_job {
    const float *x;
    float *ap;                          /* x packed: ceil(n_tok / MR) slivers of K x MR */
    float *wp;                          /* per thread GROUP * KC * NR floats (weights packed) */
    int n_tok, K, n_w;
    float *const *y;
    const nvlm_wmat *const *w;
    const float *const *bias;
    size_t first[NVLM_MATMUL_MULTI_MAX + 1]; /* panel index where matrix i starts */
} mm_job;

static void mm_pack_units(void *ctx, size_t begin, size_t end, int thread) {
    (void)thread;
    const mm_job *j = ctx;
    size_t mp = (size_t)(j->n_tok + MR - 1) / MR * MR;
    for (size_t s = begin; s < end; s++) {
        int t0 = (int)s * MR, mr = j->n_tok - t0 < MR ? j->n_tok - t0 : MR;
        pack_a(j->x, (size_t)j->K, mr, j->K, j->ap, mp, t0);
    }
}

/* Units are panels of NR outputs, the matrices' panels one after the other; a thread's range
 * is done in groups of at most GROUP panels. */
static void mm_gemm_units(void *ctx, size_t begin, size_t end, int thread) {
    const mm_job *j = ctx;
    float *wp = j->wp + (size_t)thread * GROUP * KC * NR;
    for (int i = 0; i < j->n_w; i++) {
        size_t b = begin > j->first[i] ? begin : j->first[i], e = end < j->first[i + 1] ? end : j->first[i + 1];
        const int N = j->w[i]->rows;
        if (b >= e) continue;
        /* groups of equal size (9 panels: 3+3+3, not 4+4+1 with a sliver read for one panel) */
        size_t ng = (e - b + GROUP - 1) / GROUP, gs = (e - b + ng - 1) / ng;
        for (size_t p = b; p < e; p += gs) {
            int n0 = (int)(p - j->first[i]) * NR, n1 = (int)((p + gs < e ? p + gs : e) - j->first[i]) * NR;
            int n2 = (int)((p + 2 * gs < e ? p + 2 * gs : e) - j->first[i]) * NR; /* the next group */
            n1 = n1 < N ? n1 : N, n2 = n2 < N ? n2 : N;
            gemm_cols(j->n_tok, j->K, j->ap, pack_wmat, j->w[i], n0, n1, j->y[i], (size_t)N, j->bias[i], wp, n1, n2);
        }
    }
}

int nvlm_matmul_multi_avx2(nvlm_pool *pool, int n_w, float *const *y, const float *x, int n_tok,
                           const nvlm_wmat *const *w, const float *const *bias, nvlm_err *err) {
    if (n_tok <= 0 || n_w <= 0) return NVLM_OK;
    if (n_tok <= NVLM_GEMV_MAX || n_w > NVLM_MATMUL_MULTI_MAX) {
        for (int i = 0; i < n_w; i++) {
            int rc = nvlm_matmul_avx2(pool, y[i], x, n_tok, w[i], bias[i], err);
            if (rc) return rc;
        }
        return NVLM_OK;
    }
    return nvlm_gemm_multi_avx2(pool, n_w, y, x, n_tok, w, bias, err);
}

int nvlm_gemm_multi_avx2(nvlm_pool *pool, int n_w, float *const *y, const float *x, int n_tok,
                         const nvlm_wmat *const *w, const float *const *bias, nvlm_err *err) {
    if (n_tok <= 0 || n_w <= 0) return NVLM_OK;
    if (n_w > NVLM_MATMUL_MULTI_MAX) {
        for (int i = 0; i < n_w; i++) {
            int rc = nvlm_gemm_multi_avx2(pool, 1, &y[i], x, n_tok, &w[i], &bias[i], err);
            if (rc) return rc;
        }
        return NVLM_OK;
    }
    const int K = w[0]->cols;
    size_t slivers = ((size_t)n_tok + MR - 1) / MR;
    /* x packed, then every thread's weight panel (64-byte aligned), all taken before the loops */
    size_t ap_n = (slivers * MR * (size_t)K + 15) & ~(size_t)15, wp_n = (size_t)GROUP * KC * NR;
    size_t bytes = sizeof(float) * (ap_n + wp_n * (size_t)nvlm_pool_threads(pool));
    float *ap = nvlm_pool_scratch(pool, bytes);
    if (!ap) return nvlm_pool_scratch_fail(err, "a matrix product", bytes);
    mm_job j = {.x = x, .ap = ap, .wp = ap + ap_n, .n_tok = n_tok, .K = K, .n_w = n_w, .y = y, .w = w, .bias = bias};
    for (int i = 0; i < n_w; i++) j.first[i + 1] = j.first[i] + ((size_t)w[i]->rows + NR - 1) / NR;
    nvlm_pool_run(pool, slivers, 8, mm_pack_units, &j);
    nvlm_pool_run(pool, j.first[n_w], GROUP, mm_gemm_units, &j);
    free(ap);
    return NVLM_OK;
}

int nvlm_gemm_avx2(nvlm_pool *pool, float *y, const float *x, int n_tok, const nvlm_wmat *w, const float *bias,
                   nvlm_err *err) {
    return nvlm_gemm_multi_avx2(pool, 1, &y, x, n_tok, &w, &bias, err);
}

int nvlm_matmul_avx2(nvlm_pool *pool, float *y, const float *x, int n_tok, const nvlm_wmat *w, const float *bias,
                     nvlm_err *err) {
    if (n_tok <= NVLM_GEMV_MAX) return nvlm_gemv_avx2(pool, y, x, n_tok, w, bias, err);
    return nvlm_matmul_multi_avx2(pool, 1, &y, x, n_tok, &w, &bias, err);
}

/* ---- attention: per block of queries, S = Q K^T, softmax, O = P V, all via ukr ---- */

enum {
    BQ = 24,            /* queries per block (4 slivers): S is BQ x n_keys floats */
    PREPACK_KEYS = 8192, /* up to this many keys, K and V are packed once per head */
    DIRECT_Q = 3         /* up to this many queries: no packing (attend_direct) */
};

static size_t round16(size_t n) { return (n + 15) & ~(size_t)15; }

/* Row stride of S: a multiple of 16 floats, never of 1 KiB, so the 6 rows that the micro-kernel
 * reads together do not share L1 sets. */
static size_t s_stride(int n_keys) {
    size_t l = round16((size_t)n_keys);
    return l % 256 ? l : l + 16;
}

size_t nvlm_attention_scratch_avx2(int n_q, int n_keys, int d) {
    if (n_q <= DIRECT_Q) return round16((size_t)(n_keys > 0 ? n_keys : 1)) + 16; /* the scores, 64-byte aligned */
    size_t lds = s_stride(n_keys), s = BQ * lds + (size_t)GROUP * KC * NR + 16;
    s += (size_t)BQ * (lds > round16((size_t)d) ? lds : round16((size_t)d)); /* Q or P packed */
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

void nvlm_softmax_row_avx2(float *s, int n, int n_zero, float scale) { softmax_row(s, n, n_zero, scale); }


/* ---- few queries (generation): K and V read in place, no packing ---- */

#define UNROLL8 _Pragma("GCC unroll 8")

/* Sums of 8 vectors, lane i = the sum of a[i] (each in the same fixed order). */
static inline __m256 hsum8(const __m256 a[8]) {
    __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

/* S[j] = q . k_j for n keys from row j0, nk (1..8) keys a pass: one 8-lane FMA chain per key
 * over d in order, the d % 8 tail added after. Eight keys share each load of q and one
 * reduction, which is what a dot product per key cost (its horizontal sum and call). */
static inline __attribute__((always_inline)) void dots(int nk, const float *q, const float *k, size_t ks, int d,
                                                       float *S) {
    __m256 acc[8];
    UNROLL8
    for (int r = 0; r < 8; r++) acc[r] = _mm256_setzero_ps();
    int c = 0;
    for (; c + 8 <= d; c += 8) {
        __m256 qv = _mm256_loadu_ps(q + c);
        UNROLL8
        for (int r = 0; r < nk; r++) acc[r] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + (size_t)r * ks + c), acc[r]);
    }
    float out[8];
    _mm256_storeu_ps(out, hsum8(acc));
    for (int r = 0; r < nk; r++) {
        for (int t = c; t < d; t++) out[r] = fmaf(q[t], k[(size_t)r * ks + t], out[r]);
        S[r] = out[r];
    }
}

/* o[0:d] = sum_j S[j] v_j over n rows: 64 columns at a time in 8 accumulators, keys in order
 * (each column one FMA chain over the keys; the d % 8 tail the same in scalar). */
static void weighted_rows(const float *S, int n, const float *v, size_t vs, int d, float *o) {
    int c0 = 0;
    for (; c0 + 8 <= d; c0 += 64) {
        int nv = (d - c0) / 8 < 8 ? (d - c0) / 8 : 8;
        __m256 acc[8];
        UNROLL8
        for (int r = 0; r < 8; r++) acc[r] = _mm256_setzero_ps();
        if (nv == 8) { /* the usual head sizes (64, 128): accumulators in registers */
            for (int j = 0; j < n; j++) {
                __m256 p = _mm256_set1_ps(S[j]);
                const float *vj = v + (size_t)j * vs + c0;
                UNROLL8
                for (int r = 0; r < 8; r++) acc[r] = _mm256_fmadd_ps(p, _mm256_loadu_ps(vj + 8 * r), acc[r]);
            }
        } else {
            for (int j = 0; j < n; j++) {
                __m256 p = _mm256_set1_ps(S[j]);
                const float *vj = v + (size_t)j * vs + c0;
                for (int r = 0; r < nv; r++) acc[r] = _mm256_fmadd_ps(p, _mm256_loadu_ps(vj + 8 * r), acc[r]);
            }
        }
        for (int r = 0; r < nv; r++) _mm256_storeu_ps(o + c0 + 8 * r, acc[r]);
    }
    for (int c = d / 8 * 8; c < d; c++) {
        float a = 0;
        for (int j = 0; j < n; j++) a = fmaf(S[j], v[(size_t)j * vs + c], a);
        o[c] = a;
    }
}

#include "kernels/attend_direct.h"

void nvlm_attention_avx2(const float *q, size_t q_stride, int n_q, const float *k, size_t k_stride, const float *v,
                         size_t v_stride, int n_keys, int causal_pos0, int d, float scale, float *out,
                         size_t out_stride, float *scratch) {
    if (n_q <= DIRECT_Q) {
        float *S = (float *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
        attend_direct(q, q_stride, n_q, k, k_stride, v, v_stride, n_keys, causal_pos0, d, scale, out, out_stride, S);
        return;
    }
    size_t lds = s_stride(n_keys), lda = lds > round16((size_t)d) ? lds : round16((size_t)d);
    float *S = (float *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    float *wp = S + BQ * lds, *ap = wp + (size_t)GROUP * KC * NR, *kp = ap + BQ * lda, *vp = kp + lds * (size_t)d;
    strided ks = {k, k_stride}, vs = {v, v_stride};
    int prepack = n_keys <= PREPACK_KEYS && n_keys > 0;
    if (prepack) { /* once per head instead of once per block of queries */
        for (int j0 = 0; j0 < n_keys; j0 += NR)
            for (int k0 = 0; k0 < d; k0 += KC)
                pack_rows_f32(&ks, j0, n_keys - j0 < NR ? n_keys - j0 : NR, k0, d - k0 < KC ? d - k0 : KC,
                              kp + (size_t)j0 * d + (size_t)k0 * NR);
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
        size_t mp = (size_t)(bq + MR - 1) / MR * MR;
        for (int t0 = 0; t0 < bq; t0 += MR)
            pack_a(q + (size_t)q0 * q_stride, q_stride, bq - t0 < MR ? bq - t0 : MR, d, ap, mp, t0);
        if (prepack)
            gemm_packed(bq, d, ap, 0, kp, (size_t)d, 0, nk, S, lds);
        else
            for (int j0 = 0; j0 < nk; j0 += GROUP * NR)
                gemm_cols(bq, d, ap, pack_rows_f32, &ks, j0, j0 + GROUP * NR < nk ? j0 + GROUP * NR : nk, S, lds,
                          NULL, wp, 0, 0);
        for (int i = 0; i < bq; i++) {
            int len = causal_pos0 < 0 ? nk : causal_pos0 + q0 + i + 1;
            softmax_row(S + (size_t)i * lds, len < nk ? len : nk, nk, scale);
        }
        if (prepack)
            gemm_packed(bq, nk, S, lds, vp, lds, 0, d, out + (size_t)q0 * out_stride, out_stride);
        else
            for (int t0 = 0; t0 < bq; t0 += MR)
                pack_a(S, lds, bq - t0 < MR ? bq - t0 : MR, nk, ap, mp, t0);
        if (!prepack)
            for (int c0 = 0; c0 < d; c0 += GROUP * NR)
                gemm_cols(bq, nk, ap, pack_cols_f32, &vs, c0, c0 + GROUP * NR < d ? c0 + GROUP * NR : d,
                          out + (size_t)q0 * out_stride, out_stride, NULL, wp, 0, 0);
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
