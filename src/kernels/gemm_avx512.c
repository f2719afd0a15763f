/* AVX-512 matrix products for more than NVLM_GEN_TOKENS tokens (prefill, ViT): a 14x32
 * register-blocked micro-kernel (28 zmm accumulators) over packed operands.
 *
 * Packing as gemm_avx2.c: the activations (A, broadcast) once per call into slivers of MR rows,
 * k-major; the weights (B) per K block of KC, converted to float32, into panels of NR outputs,
 * k-major, GROUP panels at a time (in L2), each A sliver applied to the GROUP panels while it
 * sits in L1. All buffers are allocated before any work starts: one per call for A, one per
 * thread for the B panels.
 *
 * Numerics: each output element is one FMA chain over k in index order inside a K block of KC
 * (256, as AVX2), the blocks added in order (C + block), then the bias. The lanes of a vector
 * are output columns, so a wider vector changes no chain: the results are the bits of
 * nvlm_matmul_avx2, for any thread count and any token count (tests/test_kernels.c). */
#include "kernels/simd512.h"
#ifdef NVLM_HAVE_AVX512_KERNELS
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#include "kernels/wpack.h"
#include "kernels/qblock.h"
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/math512.h"

#define AI static inline __attribute__((always_inline))

enum {
    MR = 14,        /* tokens per micro-tile (a packed A sliver) */
    NR = 32,        /* outputs per micro-tile (two zmm): a packed B panel */
    KC = 256,       /* K block: the AVX2 kernel's, which keeps the two levels' bits equal */
    GROUP = 4,      /* panels packed together: 4 x 32 KiB in L2, an A sliver reused over them */
    PF_B = 1024,    /* B prefetched this many floats (32 k steps) ahead */
    PF_SLIVERS = 8, /* B's next K block is prefetched this many slivers before the block ends */
};

/* ---- the micro-kernel ---- */

/* One row of C: (C +) acc (+ bias) for the nr <= NR columns at c (masked past nr). */
AI void store_row(float *c, __m512 r0, __m512 r1, __mmask16 m0, __mmask16 m1, int accumulate, const float *bias) {
    if (accumulate) {
        r0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, c), r0);
        r1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, c + 16), r1);
    }
    if (bias) {
        r0 = _mm512_add_ps(r0, _mm512_maskz_loadu_ps(m0, bias));
        r1 = _mm512_add_ps(r1, _mm512_maskz_loadu_ps(m1, bias + 16));
    }
    _mm512_mask_storeu_ps(c, m0, r0);
    _mm512_mask_storeu_ps(c + 16, m1, r1);
}

#define ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13)
#define DECL(i)                                                 \
    __m512 c##i##a = _mm512_setzero_ps(), c##i##b = c##i##a;    \
    const float *a##i = a + (rs == 1 ? (size_t)i : mr > i ? (size_t)i * rs : 0); /* packed: zero rows */
#define FMA_ROW(i)                                                                                    \
    if (R > i) {                                                                                      \
        const __m512 av = _mm512_set1_ps(a##i[o]);                                                    \
        c##i##a = _mm512_fmadd_ps(av, b0, c##i##a), c##i##b = _mm512_fmadd_ps(av, b1, c##i##b);       \
    }
#define STORE_ROW(i) \
    if (R > i && i < mr) store_row(c + (size_t)i * ldc, c##i##a, c##i##b, m0, m1, accumulate, bias);

/* C[0:mr, 0:nr] (+)= A . B over kc, R >= mr rows computed (R constant: 14, 12, 7 or 4). Row i of A
 * at step k is a[i * rs + k * ks]: a packed sliver (rs 1, ks MR; rows past mr are zeros) or
 * rows at a stride (rs lda, ks 1; rows past mr read row 0). b: a packed panel (NR floats per k,
 * 64-byte aligned). accumulate: add to C (K blocks after the first); bias: added after (the last
 * block). pf: the next sliver, prefetched. */
AI void ukr_body(const int R, int kc, const float *a, size_t rs, size_t ks, const float *restrict b, float *c,
                 size_t ldc, int mr, int nr, int accumulate, const float *bias, const float *pf) {
    ROWS(DECL)
    int k = 0;
    for (; k + 4 <= kc; k += 4) {
        _mm_prefetch((const char *)(pf + k * MR), _MM_HINT_T0);
        _mm_prefetch((const char *)(pf + k * MR + 16), _MM_HINT_T0);
        _mm_prefetch((const char *)(pf + k * MR + 32), _MM_HINT_T0);
        _mm_prefetch((const char *)(b + k * NR + PF_B), _MM_HINT_T0);
        _mm_prefetch((const char *)(b + k * NR + PF_B + 16), _MM_HINT_T0);
        _mm_prefetch((const char *)(b + k * NR + PF_B + 32), _MM_HINT_T0);
        _mm_prefetch((const char *)(b + k * NR + PF_B + 48), _MM_HINT_T0);
        for (int u = 0; u < 4; u++) {
            const __m512 b0 = _mm512_load_ps(b + (k + u) * NR), b1 = _mm512_load_ps(b + (k + u) * NR + 16);
            const size_t o = (size_t)(k + u) * ks;
            ROWS(FMA_ROW)
        }
    }
    for (; k < kc; k++) {
        const __m512 b0 = _mm512_load_ps(b + k * NR), b1 = _mm512_load_ps(b + k * NR + 16);
        const size_t o = (size_t)k * ks;
        ROWS(FMA_ROW)
    }
    const __mmask16 m0 = nr >= 16 ? 0xffff : (__mmask16)((1u << nr) - 1);
    const __mmask16 m1 = nr >= 32 ? 0xffff : nr <= 16 ? 0 : (__mmask16)((1u << (nr - 16)) - 1);
    ROWS(STORE_ROW)
}

#define UKR(R)                                                                                                  \
    static void ukr##R(int kc, const float *a, const float *b, float *c, size_t ldc, int mr, int nr, int acc,   \
                       const float *bias, const float *pf) {                                                    \
        ukr_body(R, kc, a, 1, MR, b, c, ldc, mr, nr, acc, bias, pf);                                            \
    }                                                                                                           \
    static void ukr_rows##R(int kc, const float *a, size_t lda, const float *b, float *c, size_t ldc, int mr,  \
                            int nr) {                                                                           \
        ukr_body(R, kc, a, lda, 1, b, c, ldc, mr, nr, 0, NULL, b);                                              \
    }
UKR(14)
UKR(12)
UKR(7)
UKR(4)

/* The smallest instance that covers mr rows: a short last sliver (or a 4-token prompt) does not
 * pay for 14 rows; attention's blocks of 24 queries run as 12 + 12. */
static void ukr(int kc, const float *a, const float *b, float *c, size_t ldc, int mr, int nr, int acc,
                const float *bias, const float *pf) {
    if (mr > 12) ukr14(kc, a, b, c, ldc, mr, nr, acc, bias, pf);
    else if (mr > 7) ukr12(kc, a, b, c, ldc, mr, nr, acc, bias, pf);
    else if (mr > 4) ukr7(kc, a, b, c, ldc, mr, nr, acc, bias, pf);
    else ukr4(kc, a, b, c, ldc, mr, nr, acc, bias, pf);
}

/* A as mr rows at a stride lda, one K block of kc (attention's probabilities, in L2 already). */
static void ukr_rows(int kc, const float *a, size_t lda, const float *b, float *c, size_t ldc, int mr, int nr) {
    if (mr > 12) ukr_rows14(kc, a, lda, b, c, ldc, mr, nr);
    else if (mr > 7) ukr_rows12(kc, a, lda, b, c, ldc, mr, nr);
    else if (mr > 4) ukr_rows7(kc, a, lda, b, c, ldc, mr, nr);
    else ukr_rows4(kc, a, lda, b, c, ldc, mr, nr);
}

/* ---- packing ---- */

/* In-place transpose of the 8x8 block r[row][col] (ymm: the AVX-512VL forms of the AVX2 code). */
AI void transpose8(__m256 r[8]) {
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
 * ap[k0 * mp + t / MR * MR * kc + k * MR + t % MR]. */
static inline size_t a_off(size_t mp, int k0, int kc, int t0) { return (size_t)k0 * mp + (size_t)t0 * kc; }

/* Packs the mr rows at x (row stride lda, K columns) as the sliver at row t0 of ap (a multiple
 * of MR); rows past mr are zero. Two 8x8 transposes per 8 columns. */
static void pack_a(const float *x, size_t lda, int mr, int K, float *ap, size_t mp, int t0) {
    const float *row[MR];
    for (int i = 0; i < MR; i++) row[i] = x + (size_t)(i < mr ? i : 0) * lda;
    for (int k0 = 0; k0 < K; k0 += KC) {
        int kc = K - k0 < KC ? K - k0 : KC, k = 0;
        float *dst = ap + a_off(mp, k0, kc, t0);
        if (mr == MR)
            for (; k + 8 <= kc; k += 8) { /* two 8x8 transposes: rows 0-7, rows 8-13 (+2 zero) */
                __m256 r[8], s[8];
                for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(row[i] + k0 + k);
                for (int i = 0; i < 6; i++) s[i] = _mm256_loadu_ps(row[8 + i] + k0 + k);
                s[6] = s[7] = _mm256_setzero_ps();
                transpose8(r);
                transpose8(s);
                for (int j = 0; j < 8; j++) { /* 14 floats: 8 + 6, never past the sliver */
                    float *d = dst + (size_t)(k + j) * MR;
                    _mm256_storeu_ps(d, r[j]);
                    _mm256_mask_storeu_ps(d + 8, 0x3f, s[j]);
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

/* 8 weights of a plain-format row at p, as float32 (exact). */
AI __m256 load8(nvlm_dtype dt, const uint8_t *p) {
    if (dt == NVLM_DT_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
    if (dt == NVLM_DT_BF16)
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
    return _mm256_loadu_ps((const float *)p);
}

/* The plain formats' 8x8 blocks, dt constant after inlining. Row r's columns k .. k + 7 are at
 * rowp[r] + (k / 16) * ks + (k % 16) * es: ks = 16 elements row-major, the group's 8 runs of 16 in
 * NVLM_WL_P8 (kernels/ops.h). */
AI int pack_plain(nvlm_dtype dt, const uint8_t *const *rowp, size_t ks, int nr, int kc, float *dst) {
    const size_t es = dt == NVLM_DT_F32 ? 4 : 2;
    int k = 0;
    for (; k + 8 <= kc; k += 8)
        for (int h = 0; h < NR; h += 8) {
            __m256 r[8];
            for (int j = 0; j < 8; j++)
                r[j] = h + j < nr ? load8(dt, rowp[h + j] + (size_t)(k / 16) * ks + (size_t)(k % 16) * es) : _mm256_setzero_ps();
            transpose8(r);
            for (int j = 0; j < 8; j++) _mm256_store_ps(dst + (size_t)(k + j) * NR + h, r[j]);
        }
    return k;
}

/* pack_wmat for NVLM_WL_Q16 (kernels/ops.h): a panel block holds, for each k of the block, the
 * 16 rows' weights side by side (byte k % 4 of the dwords of vector k / 4), so 16 rows of
 * dst[k * NR + r] come from one vector: Q8_0 d * q, Q4 d * q + m (multiply, then add), Q4_0 d * (q - 8), as
 * nvlm_row_to_f32 computes them (the same bits as the row-major path). nr: 16 or 32. */
static void pack_q16(const nvlm_wmat *w, int n0, int nr, int k0, int kc, float *dst) {
    const int q40 = w->dtype == NVLM_DT_Q4_0, q4 = w->dtype == NVLM_DT_Q4 || q40;
    const size_t bb = nvlm_q16_block_bytes(w->dtype), nb = (size_t)w->cols / NVLM_QK;
    const __m512i off = _mm512_set1_epi32(q40 ? 8 : 0); /* Q4_0's nibbles are q - 8 */
    const __m512i flip = _mm512_set1_epi32((int)0x80808080u), byte = _mm512_set1_epi32(255), nib = _mm512_set1_epi32(15);
    for (int h = 0; h < NR; h += NVLM_Q16_ROWS) {
        if (h >= nr) {
            for (int k = 0; k < kc; k++) _mm512_storeu_ps(dst + (size_t)k * NR + h, _mm512_setzero_ps());
            continue;
        }
        const uint8_t *panel = (const uint8_t *)w->data + (size_t)((n0 + h) / NVLM_Q16_ROWS) * nb * bb;
        for (int kb = 0; kb < kc; kb += NVLM_QK) {
            const uint8_t *blk = panel + (size_t)((k0 + kb) / NVLM_QK) * bb;
            float *o = dst + (size_t)kb * NR + h;
            const uint8_t *sc = blk + (q4 ? 256 : 512);
            const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)sc));
            if (q4) {
                const __m512 m = q40 ? _mm512_setzero_ps() : _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(sc + 32)));
                for (int g = 0; g < 4; g++) {
                    const __m512i v = _mm512_loadu_si512(blk + 64 * g);
                    for (int b = 0; b < 4; b++) {
                        const __m512i u = _mm512_and_si512(_mm512_srli_epi32(v, 8 * b), byte);
                        const __m512 lo = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_and_si512(u, nib), off));
                        const __m512 hi = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_srli_epi32(u, 4), off));
                        if (q40) {
                            _mm512_storeu_ps(o + (size_t)(4 * g + b) * NR, _mm512_mul_ps(d, lo));
                            _mm512_storeu_ps(o + (size_t)(16 + 4 * g + b) * NR, _mm512_mul_ps(d, hi));
                        } else {
                            _mm512_storeu_ps(o + (size_t)(4 * g + b) * NR, _mm512_add_ps(_mm512_mul_ps(d, lo), m));
                            _mm512_storeu_ps(o + (size_t)(16 + 4 * g + b) * NR, _mm512_add_ps(_mm512_mul_ps(d, hi), m));
                        }
                    }
                }
            } else {
                for (int g = 0; g < 8; g++) {
                    const __m512i v = _mm512_xor_si512(_mm512_loadu_si512(blk + 64 * g), flip); /* the stored int8 q */
                    for (int b = 0; b < 4; b++) {
                        const __m512i q = _mm512_srai_epi32(_mm512_slli_epi32(v, 24 - 8 * b), 24);
                        _mm512_storeu_ps(o + (size_t)(4 * g + b) * NR, _mm512_mul_ps(d, _mm512_cvtepi32_ps(q)));
                    }
                }
            }
        }
    }
}

/* Fills dst[k * NR + r] (k < kc, r < NR) with W(n0 + r, k0 + k) as float32; rows past nr are
 * zero. dst NULL: only prefetch (into L2) what that call would read. */
static void pack_wmat(const nvlm_wmat *w, int n0, int nr, int k0, int kc, float *dst) {
    if (w->layout == NVLM_WL_Q16) {
        if (dst) pack_q16(w, n0, nr, k0, kc, dst);
        return;
    }
    size_t row_bytes = nvlm_row_bytes(w->dtype, w->cols);
    const int block = nvlm_dtype_is_block(w->dtype), p8 = w->layout == NVLM_WL_P8;
    size_t off = block ? nvlm_row_bytes(w->dtype, k0) /* k0 % 32 == 0 */ : (size_t)k0 * nvlm_dtype_size(w->dtype);
    const uint8_t *src = (const uint8_t *)w->data + (size_t)n0 * row_bytes + off;
    if (!dst) {
        size_t bytes = block ? nvlm_row_bytes(w->dtype, kc) : (size_t)kc * nvlm_dtype_size(w->dtype);
        if (p8) /* the panel's groups of 8 rows, K block [k0, k0 + kc): 8 * kc elements each */
            for (int g = 0; g < nr; g += NVLM_P8_ROWS) {
                const char *gp = (const char *)nvlm_wmat_at(w, nvlm_dtype_size(w->dtype), n0 + g, k0);
                for (size_t b = 0; b < NVLM_P8_ROWS * bytes; b += 64) _mm_prefetch(gp + b, _MM_HINT_T1);
            }
        else
            for (int r = 0; r < nr; r++)
                for (size_t b = 0; b < bytes; b += 64) _mm_prefetch((const char *)src + (size_t)r * row_bytes + b, _MM_HINT_T1);
        return;
    }
    int k = 0;
    if (!block) {
        const size_t es = nvlm_dtype_size(w->dtype), ks = (p8 ? NVLM_P8_ROWS * NVLM_P8_RUN : NVLM_P8_RUN) * es;
        const uint8_t *rowp[NR];
        for (int r = 0; r < nr; r++) rowp[r] = nvlm_wmat_at(w, es, n0 + r, k0); /* k0 % 16 == 0 */
        switch (w->dtype) {
        case NVLM_DT_F32: k = pack_plain(NVLM_DT_F32, rowp, ks, nr, kc, dst); break;
        case NVLM_DT_F16: k = pack_plain(NVLM_DT_F16, rowp, ks, nr, kc, dst); break;
        case NVLM_DT_BF16: k = pack_plain(NVLM_DT_BF16, rowp, ks, nr, kc, dst); break;
        default: break;
        }
    }
    if (k == kc) return; /* NVLM_WL_P8 always returns here (K % 16 == 0) */
    float rows[NR][KC] __attribute__((aligned(64)));
    for (int r = 0; r < NR; r++) {
        if (r < nr) {
            const uint8_t *p = src + (size_t)r * row_bytes + (block ? 0 : (size_t)k * nvlm_dtype_size(w->dtype));
            nvlm_row_to_f32_avx512(rows[r], p, w->dtype, kc - k);
        } else {
            memset(rows[r], 0, sizeof(float) * (size_t)(kc - k));
        }
    }
    transpose_panel((const float(*)[KC])rows, kc - k, dst + (size_t)k * NR);
}

/* ---- blocked product ---- */

/* C[0:M, n0:n1] = A . W^T (+ bias[n0:n1]), A packed, n1 - n0 <= GROUP*NR; wp holds GROUP*KC*NR
 * floats, 64-byte aligned. Near the end of each K block, W's next block (after the last,
 * columns [pn0, pn1) at k 0: the caller's next group) is prefetched. */
static void gemm_cols(int M, int K, const float *ap, const nvlm_wmat *w, int n0, int n1, float *C, size_t ldc,
                      const float *bias, float *wp, int pn0, int pn1) {
    int np = (n1 - n0 + NR - 1) / NR;
    size_t mp = (size_t)(M + MR - 1) / MR * MR;
    int t_pf = M - PF_SLIVERS * MR > 0 ? (M - PF_SLIVERS * MR) / MR * MR : 0;
    for (int k0 = 0; k0 < K; k0 += KC) {
        int kc = K - k0 < KC ? K - k0 : KC, last = k0 + kc >= K;
        for (int p = 0; p < np; p++) {
            int c0 = n0 + p * NR;
            pack_wmat(w, c0, n1 - c0 < NR ? n1 - c0 : NR, k0, kc, wp + (size_t)p * KC * NR);
        }
        for (int t0 = 0; t0 < M; t0 += MR) {
            int mr = M - t0 < MR ? M - t0 : MR;
            const float *as = ap + a_off(mp, k0, kc, t0);
            if (t0 == t_pf) {
                int f0 = last ? pn0 : n0, f1 = last ? pn1 : n1, fk = last ? 0 : k0 + KC;
                int fkc = K - fk < KC ? K - fk : KC;
                for (int c0 = f0; c0 < f1; c0 += NR) pack_wmat(w, c0, f1 - c0 < NR ? f1 - c0 : NR, fk, fkc, NULL);
            }
            for (int p = 0; p < np; p++) {
                int c0 = n0 + p * NR, nr = n1 - c0 < NR ? n1 - c0 : NR;
                ukr(kc, as, wp + (size_t)p * KC * NR, C + (size_t)t0 * ldc + c0, ldc, mr, nr, k0 > 0,
                    last && bias ? bias + c0 : NULL, as + MR * kc);
            }
        }
    }
}

/* ---- y = x W^T + b for one or several matrices sharing x ---- */

typedef struct mm_job {
    const float *x;
    float *ap;    /* x packed: ceil(n_tok / MR) slivers of K x MR */
    float *wp;    /* per thread: GROUP * KC * NR floats */
    int n_tok, K, n_w;
    float *const *y;
    const nvlm_wmat *const *w;
    const float *const *bias;
    size_t first[NVLM_MATMUL_MULTI_MAX + 1]; /* panel index where matrix i starts */
} mm_job;

static void pack_units(void *ctx, size_t begin, size_t end, int thread) {
    (void)thread;
    const mm_job *j = ctx;
    size_t mp = (size_t)(j->n_tok + MR - 1) / MR * MR;
    for (size_t s = begin; s < end; s++) {
        int t0 = (int)s * MR, mr = j->n_tok - t0 < MR ? j->n_tok - t0 : MR;
        pack_a(j->x + (size_t)t0 * j->K, (size_t)j->K, mr, j->K, j->ap, mp, t0);
    }
}

/* Units are panels of NR outputs, the matrices' panels one after the other; a thread's range is
 * done in groups of at most GROUP panels, of equal size (9 panels: 3+3+3, not 4+4+1). */
static void gemm_units(void *ctx, size_t begin, size_t end, int thread) {
    const mm_job *j = ctx;
    float *wp = j->wp + (size_t)thread * GROUP * KC * NR;
    for (int i = 0; i < j->n_w; i++) {
        size_t b = begin > j->first[i] ? begin : j->first[i], e = end < j->first[i + 1] ? end : j->first[i + 1];
        const int N = j->w[i]->rows;
        if (b >= e) continue;
        size_t ng = (e - b + GROUP - 1) / GROUP, gs = (e - b + ng - 1) / ng;
        for (size_t p = b; p < e; p += gs) {
            int n0 = (int)(p - j->first[i]) * NR, n1 = (int)((p + gs < e ? p + gs : e) - j->first[i]) * NR;
            int n2 = (int)((p + 2 * gs < e ? p + 2 * gs : e) - j->first[i]) * NR; /* the next group */
            n1 = n1 < N ? n1 : N, n2 = n2 < N ? n2 : N;
            gemm_cols(j->n_tok, j->K, j->ap, j->w[i], n0, n1, j->y[i], (size_t)N, j->bias[i], wp, n1, n2);
        }
    }
}

int nvlm_gemm_multi_avx512(nvlm_pool *pool, int n_w, float *const *y, const float *x, int n_tok,
                           const nvlm_wmat *const *w, const float *const *bias) {
    if (n_tok <= 0 || n_w <= 0) return 0;
    if (n_w > NVLM_MATMUL_MULTI_MAX) {
        for (int i = 0; i < n_w; i++)
            if (nvlm_gemm_avx512(pool, y[i], x, n_tok, w[i], bias[i])) return -1;
        return 0;
    }
    const int K = w[0]->cols, nt = nvlm_pool_threads(pool);
    size_t slivers = ((size_t)n_tok + MR - 1) / MR;
    size_t a_floats = (slivers * MR * (size_t)K + 15) / 16 * 16, w_floats = (size_t)GROUP * KC * NR;
    float *buf = nvlm_pool_scratch(pool, sizeof(float) * (a_floats + w_floats * (size_t)nt));
    if (!buf) return -1;
    mm_job j = {.x = x, .ap = buf, .wp = buf + a_floats, .n_tok = n_tok, .K = K, .n_w = n_w, .y = y, .w = w,
                .bias = bias};
    for (int i = 0; i < n_w; i++) j.first[i + 1] = j.first[i] + ((size_t)w[i]->rows + NR - 1) / NR;
    nvlm_pool_run(pool, slivers, 4, pack_units, &j);
    nvlm_pool_run(pool, j.first[n_w], GROUP, gemm_units, &j);
    free(buf);
    return 0;
}

int nvlm_gemm_avx512(nvlm_pool *pool, float *y, const float *x, int n_tok, const nvlm_wmat *w, const float *bias) {
    return nvlm_gemm_multi_avx512(pool, 1, &y, x, n_tok, &w, &bias);
}

/* ---- attention (more than DIRECT_Q queries): per block of queries, S = Q K^T, softmax,
 * O = P V on the micro-kernel, K and V packed once per head. gemm_avx2.c's algorithm with the
 * same block of queries (BQ), the same chains (S: over d; O: over the keys in one block) and
 * the same softmax sums, so the same bits as nvlm_attention_avx2; which it runs itself for 1-3
 * queries (generation: K and V read in place) and beyond PREPACK_KEYS keys. ---- */

enum {
    BQ = 24,             /* queries per block: AVX2's, so a causal block sees the same keys */
    AQ = 12,             /* queries per sliver: BQ = 2 x 12 (14 + 10 would compute 28 rows) */
    PREPACK_KEYS = 8192, /* gemm_avx2.c's limit of the packed path */
    DIRECT_Q = 3,
};

static size_t round16(size_t n) { return (n + 15) & ~(size_t)15; }
static size_t round_nr(size_t n) { return (n + NR - 1) / NR * NR; }

/* Row stride of S: a multiple of 16 floats, never of 1 KiB (the rows read together would share
 * L1 sets). */
static size_t s_stride(int n_keys) {
    size_t l = round16((size_t)n_keys);
    return l % 256 ? l : l + 16;
}

static size_t own_scratch(int n_keys, int d) {
    size_t lds = s_stride(n_keys), mp = (BQ + AQ - 1) / AQ * MR; /* the slivers' rows */
    return 16 + BQ * lds + mp * round16((size_t)d) + round_nr((size_t)n_keys) * (size_t)d + round_nr((size_t)d) * lds;
}

size_t nvlm_attention_scratch_avx512(int n_q, int n_keys, int d) {
    size_t a = nvlm_attention_scratch_avx2(n_q, n_keys, d), o = own_scratch(n_keys > 0 ? n_keys : 1, d);
    return a > o ? a : o;
}

/* s[0:n] = softmax(scale * s[0:n]); s[n:n_zero] = 0. gemm_avx2.c's softmax_row: exp on 16
 * lanes, but summed 8 lanes at a time in its order, so the same total. */
static void softmax_row(float *s, int n, int n_zero, float scale) {
    const __m512 vs = _mm512_set1_ps(scale);
    __m512 mx = _mm512_set1_ps(-INFINITY);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_mul_ps(_mm512_loadu_ps(s + i), vs);
        _mm512_storeu_ps(s + i, v);
        mx = _mm512_max_ps(mx, v);
    }
    float m = _mm512_reduce_max_ps(mx); /* a maximum: any order */
    for (; i < n; i++) {
        s[i] *= scale;
        m = s[i] > m ? s[i] : m;
    }
    const __m512 vm = _mm512_set1_ps(m);
    __m256 sum = _mm256_setzero_ps();
    for (i = 0; i + 16 <= n; i += 16) {
        __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(s + i), vm));
        _mm512_storeu_ps(s + i, e);
        sum = _mm256_add_ps(_mm256_add_ps(sum, _mm512_castps512_ps256(e)), _mm512_extractf32x8_ps(e, 1));
    }
    if (i < n) { /* the rest: -inf past n, whose exp is 0 (AVX2: an 8-lane step, then the rest) */
        float rest[16];
        for (int k = 0; k < 16; k++) rest[k] = i + k < n ? s[i + k] : -INFINITY;
        __m512 r = _mm512_loadu_ps(rest);
        __m512 e = exp512(_mm512_sub_ps(r, vm));
        e = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(r, _mm512_set1_ps(-INFINITY), _CMP_EQ_OQ), e, _mm512_setzero_ps());
        _mm512_storeu_ps(rest, e);
        memcpy(s + i, rest, sizeof(float) * (size_t)(n - i));
        sum = _mm256_add_ps(sum, _mm512_castps512_ps256(e));
        if (n - i > 8) sum = _mm256_add_ps(sum, _mm512_extractf32x8_ps(e, 1));
    }
    float tmp[8];
    _mm256_storeu_ps(tmp, sum);
    double total = 0;
    for (int k = 0; k < 8; k++) total += tmp[k];
    const float inv = total > 0 ? (float)(1.0 / total) : 0.0f;
    const __m512 vinv = _mm512_set1_ps(inv);
    for (i = 0; i + 16 <= n; i += 16) _mm512_storeu_ps(s + i, _mm512_mul_ps(_mm512_loadu_ps(s + i), vinv));
    for (; i < n; i++) s[i] *= inv;
    for (i = n; i < n_zero; i++) s[i] = 0;
}

void nvlm_softmax_row_avx512(float *s, int n, int n_zero, float scale) { softmax_row(s, n, n_zero, scale); }

/* K packed: panel j0 / NR holds keys j0 .. j0 + NR as d rows of NR (k-major), at kp + j0 * d,
 * each K block of KC at + k0 * NR; keys past n_keys are zeros. */
static void pack_keys(const float *k, size_t k_stride, int n_keys, int d, float *kp) {
    float rows[NR][KC] __attribute__((aligned(64)));
    for (int j0 = 0; j0 < n_keys; j0 += NR)
        for (int k0 = 0; k0 < d; k0 += KC) {
            int kc = d - k0 < KC ? d - k0 : KC;
            for (int r = 0; r < NR; r++) {
                if (j0 + r < n_keys) memcpy(rows[r], k + (size_t)(j0 + r) * k_stride + k0, sizeof(float) * (size_t)kc);
                else memset(rows[r], 0, sizeof(float) * (size_t)kc);
            }
            transpose_panel((const float(*)[KC])rows, kc, kp + (size_t)j0 * d + (size_t)k0 * NR);
        }
}

/* V packed: panel c0 / NR holds columns c0 .. c0 + NR of every key (key-major), at
 * vp + c0 / NR * lds * NR; columns past d are zeros. */
static void pack_values(const float *v, size_t v_stride, int n_keys, int d, size_t lds, float *vp) {
    for (int c0 = 0; c0 < d; c0 += NR) {
        int nr = d - c0 < NR ? d - c0 : NR;
        const __mmask16 m0 = nr >= 16 ? 0xffff : (__mmask16)((1u << nr) - 1);
        const __mmask16 m1 = nr >= 32 ? 0xffff : nr <= 16 ? 0 : (__mmask16)((1u << (nr - 16)) - 1);
        float *dst = vp + (size_t)(c0 / NR) * lds * NR;
        for (int j = 0; j < n_keys; j++) {
            const float *src = v + (size_t)j * v_stride + c0;
            _mm512_store_ps(dst + (size_t)j * NR, _mm512_maskz_loadu_ps(m0, src));
            _mm512_store_ps(dst + (size_t)j * NR + 16, _mm512_maskz_loadu_ps(m1, src + 16));
        }
    }
}

void nvlm_attention_avx512(const float *q, size_t q_stride, int n_q, const float *k, size_t k_stride, const float *v,
                           size_t v_stride, int n_keys, int causal_pos0, int d, float scale, float *out,
                           size_t out_stride, float *scratch) {
    if (n_q <= DIRECT_Q || n_keys <= 0 || n_keys > PREPACK_KEYS) {
        nvlm_attention_avx2(q, q_stride, n_q, k, k_stride, v, v_stride, n_keys, causal_pos0, d, scale, out, out_stride,
                            scratch);
        return;
    }
    const size_t lds = s_stride(n_keys), mp = (BQ + AQ - 1) / AQ * MR;
    float *S = (float *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    float *ap = S + BQ * lds, *kp = ap + mp * round16((size_t)d), *vp = kp + round_nr((size_t)n_keys) * (size_t)d;
    pack_keys(k, k_stride, n_keys, d, kp);
    pack_values(v, v_stride, n_keys, d, lds, vp);
    for (int q0 = 0; q0 < n_q; q0 += BQ) {
        int bq = n_q - q0 < BQ ? n_q - q0 : BQ;
        int nk = causal_pos0 < 0 ? n_keys : causal_pos0 + q0 + bq;
        if (nk > n_keys) nk = n_keys;
        if (nk <= 0) {
            for (int i = 0; i < bq; i++) memset(out + (size_t)(q0 + i) * out_stride, 0, sizeof(float) * (size_t)d);
            continue;
        }
        /* slivers of AQ queries; sliver s in the slot of rows MR * s of ap */
        const int ns = (bq + AQ - 1) / AQ;
        const size_t bmp = (size_t)ns * MR;
        for (int sl = 0; sl < ns; sl++)
            pack_a(q + (size_t)(q0 + sl * AQ) * q_stride, q_stride, bq - sl * AQ < AQ ? bq - sl * AQ : AQ, d, ap, bmp,
                   sl * MR);
        /* S = Q K^T: K blocks of KC over d (one for the usual head sizes) */
        for (int k0 = 0; k0 < d; k0 += KC) {
            int kc = d - k0 < KC ? d - k0 : KC;
            for (int sl = 0; sl < ns; sl++) {
                int mr = bq - sl * AQ < AQ ? bq - sl * AQ : AQ;
                const float *as = ap + a_off(bmp, k0, kc, sl * MR);
                for (int c0 = 0; c0 < nk; c0 += NR)
                    ukr(kc, as, kp + (size_t)c0 * d + (size_t)k0 * NR, S + (size_t)sl * AQ * lds + c0, lds, mr,
                        nk - c0 < NR ? nk - c0 : NR, k0 > 0, NULL, as + MR * kc);
            }
        }
        for (int i = 0; i < bq; i++) {
            int len = causal_pos0 < 0 ? nk : causal_pos0 + q0 + i + 1;
            softmax_row(S + (size_t)i * lds, len < nk ? len : nk, nk, scale);
        }
        /* O = P V: one chain over the nk keys per output, P read as rows of S */
        for (int t0 = 0; t0 < bq; t0 += AQ) {
            int mr = bq - t0 < AQ ? bq - t0 : AQ;
            for (int c0 = 0; c0 < d; c0 += NR)
                ukr_rows(nk, S + (size_t)t0 * lds, lds, vp + (size_t)(c0 / NR) * lds * NR,
                         out + (size_t)(q0 + t0) * out_stride + c0, out_stride, mr, d - c0 < NR ? d - c0 : NR);
        }
    }
}
#pragma GCC pop_options
#endif
