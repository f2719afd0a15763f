/* AVX512-VNNI matrix-vector products of Q8_0 / Q4 / Q4_0 weights against int8 activations (generation,
 * 1 to NVLM_VNNI_GEMV_MAX tokens), bit for bit the scalar reference nvlm_vec_dot_q.
 *
 * Rows go 16 at a time, in two phases. First each row is read in order (the memory streams
 * the hardware prefetchers follow), 16 blocks at a time: 8 vpdpbusd (two blocks' 32 bytes per
 * zmm) and a reduction tree leave block q's integer sum in lane q, and the lanes make the
 * reference's per-block float terms, (float)s * (d_w * d_x) and for Q4 (float)sum(q_x) *
 * (m * d_x), each one IEEE operation as in nvlm_vec_dot_q, into a buffer. Then the 16 rows'
 * accumulators add their terms in the reference's order, 16 independent chains side by side.
 * Integer sums are exact, so every output is the reference's whatever the thread or token count.
 *
 * vpdpbusd multiplies unsigned by signed bytes: Q4 nibbles are unsigned already; Q8_0 weights
 * are made unsigned by w + 128 (xor 0x80), and 128 * sum(q_x) of the block is taken off; Q4_0's
 * nibbles are its q - 8 + 8, so 8 * sum(q_x) is, and its terms are then Q8_0's. The
 * activations are laid out once per call in the zmm order the weights take (xa below).
 *
 * Dispatched for row-major matrices at the VNNI levels (tensor-parallel slices, shapes that cannot
 * be packed), where it keeps every rank bit for bit one process; packed matrices take gemm_vnni.c,
 * faster: this reads 0.57-0.82x the AVX2 kernel's GB/s (docs/quantization.md, "VNNI"). */
#include "kernels/gemv_vnni.h"
#ifdef NVLM_HAVE_VNNI_KERNELS
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#define AI static inline __attribute__((always_inline))

enum { GB = 16, RG = 16, TMAX = NVLM_VNNI_GEMV_MAX, GRAIN_GROUPS = 2, PF_BYTES = 2048 };
enum { K_Q8_0, K_Q4, K_Q4_0 }; /* the formats' rows */

/* Per token and group of 16 blocks: the q_x of the 16 blocks in the weights' zmm order, the
 * blocks' sum(q_x) and d_x by lane. */
typedef struct xgroup {
    int8_t q[8][64];
    int32_t sum[GB];
    float d[GB];
} xgroup;

typedef struct vjob {
    float *y;
    int n_tok, nb, ng; /* tokens, blocks per row, groups of 16 blocks per row */
    const nvlm_wmat *w;
    const float *bias;
    size_t rb;
    const xgroup *xa;         /* [n_tok][ng] */
    const nvlm_block_q8a *xq; /* [n_tok][nb]: the same activations as blocks (the fallback) */
} vjob;

/* The blocks of a group in zmm k: k < 4 holds blocks k and k + 4, k >= 4 blocks k + 4 and k + 8
 * (the order in which reduce16 leaves block q in lane q). */
static int zmm_block(int k, int half) { return (k < 4 ? k : k + 4) + 4 * half; }

/* Lane q = the sum of block q's lanes (v in zmm_block's order). */
AI __m512i reduce16(const __m512i v[8]) {
    __m512i w[4], x[2];
    for (int k = 0; k < 4; k++)
        w[k] = _mm512_add_epi32(_mm512_unpacklo_epi32(v[2 * k], v[2 * k + 1]), _mm512_unpackhi_epi32(v[2 * k], v[2 * k + 1]));
    for (int m = 0; m < 2; m++)
        x[m] = _mm512_add_epi32(_mm512_unpacklo_epi64(w[2 * m], w[2 * m + 1]), _mm512_unpackhi_epi64(w[2 * m], w[2 * m + 1]));
    /* x[m]'s 128-bit lane l holds the partial sums of v[4m .. 4m+3] over that lane */
    const __m512i ia = _mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27);
    const __m512i ib = _mm512_add_epi32(ia, _mm512_set1_epi32(4));
    return _mm512_add_epi32(_mm512_permutex2var_epi32(x[0], ia, x[1]), _mm512_permutex2var_epi32(x[0], ib, x[1]));
}

/* The first 4 bytes (f16 scale, and Q4's minimum) of n <= 16 blocks bs bytes apart, block q in
 * lane q (lanes past n: the last block's). Scalar loads: vpgatherdd stalled this loop on Zen 4. */
AI __m512i scales(const uint8_t *p, size_t bs, int n) {
    uint32_t v[GB];
    if (n == GB) {
        _Pragma("GCC unroll 16") for (int q = 0; q < GB; q++) memcpy(&v[q], p + (size_t)q * bs, 4);
    } else {
        for (int q = 0; q < GB; q++) memcpy(&v[q], p + (size_t)(q < n ? q : n - 1) * bs, 4);
    }
    __m128i a = _mm_setr_epi32((int)v[0], (int)v[1], (int)v[2], (int)v[3]), b = _mm_setr_epi32((int)v[4], (int)v[5], (int)v[6], (int)v[7]);
    __m128i c = _mm_setr_epi32((int)v[8], (int)v[9], (int)v[10], (int)v[11]), d = _mm_setr_epi32((int)v[12], (int)v[13], (int)v[14], (int)v[15]);
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set_m128i(b, a)), _mm256_set_m128i(d, c), 1);
}

/* Phase 1 for one row (blocks at row, bs bytes apart) against T tokens: per group g of 16
 * blocks and token t, the reference's per-block terms by lane (block q in lane q):
 * ps = (float)s * (d_w * d_x) into P[(t * ng + g) * RG * GB + r * GB + q], and for Q4
 * pm = (float)sum(q_x) * (m * d_x) at the same place in M. */
AI void row_terms(int T, int kind, const vjob *j, const uint8_t *row, int r, float *P, float *M) {
    const int nb = j->nb, ng = j->ng, q4 = kind == K_Q4;
    const size_t bs = kind == K_Q4 ? sizeof(nvlm_block_q4) : kind == K_Q4_0 ? sizeof(nvlm_block_q4_0) : sizeof(nvlm_block_q8_0);
    const size_t qat = q4 ? 4 : 2; /* the nibbles' or bytes' offset in the block */
    for (int g = 0; g < ng; g++) {
        const int i0 = g * GB, n = nb - i0 < GB ? nb - i0 : GB;
        const uint8_t *p = row + (size_t)i0 * bs;
        /* rows follow each other in memory: software prefetch PF_BYTES ahead, in order (the
         * hardware prefetchers alone left Q8_0 at ~30% of the AVX2 kernel's GB/s) */
        for (size_t l = 0; l < GB * bs; l += 64) _mm_prefetch((const char *)p + PF_BYTES + l, _MM_HINT_T0);
        /* blocks past the row's end (a partial last group) read its last block; their lanes are dropped */
        __m512i wv[8];
        _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++) {
            int ba = zmm_block(k, 0), bb = zmm_block(k, 1);
            const uint8_t *a = p + (size_t)(ba < n ? ba : n - 1) * bs, *b = p + (size_t)(bb < n ? bb : n - 1) * bs;
            if (kind == K_Q8_0) {
                __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(a + 2))),
                                               _mm256_loadu_si256((const __m256i *)(b + 2)), 1);
                wv[k] = _mm512_xor_si512(v, _mm512_set1_epi8((char)0x80));
            } else { /* [a lo nibbles, a hi, b lo, b hi] against [x_a, x_b] */
                __m256i ab = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(a + qat))),
                                                     _mm_loadu_si128((const __m128i *)(b + qat)), 1);
                __m512i z = _mm512_castsi256_si512(ab);
                z = _mm512_shuffle_i64x2(z, z, _MM_SHUFFLE(1, 1, 0, 0));
                z = _mm512_mask_srli_epi16(z, 0xff00ff00u, z, 4);
                wv[k] = _mm512_and_si512(z, _mm512_set1_epi8(15));
            }
        }
        /* scale (Q4: and minimum) of each block, as f16 pairs, block q in lane q */
        __m512i dm = scales(p, bs, n);
        __m512 dw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dm));
        _Pragma("GCC unroll 3") for (int t = 0; t < T; t++) {
            const xgroup *xg = j->xa + (size_t)t * ng + g;
            const size_t at = ((size_t)t * ng + g) * RG * GB + (size_t)r * GB;
            __m512i s[8];
            _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++)
                s[k] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[k], _mm512_load_si512(xg->q[k]));
            __m512i si = reduce16(s);
            const __m512i xs = _mm512_load_si512(xg->sum);
            const __m512 xd = _mm512_load_ps(xg->d);
            if (q4) {
                __m512 mw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(dm, 16)));
                _mm512_store_ps(M + at, _mm512_mul_ps(_mm512_cvtepi32_ps(xs), _mm512_mul_ps(mw, xd)));
            } else {
                si = _mm512_sub_epi32(si, _mm512_slli_epi32(xs, kind == K_Q4_0 ? 3 : 7));
            }
            _mm512_store_ps(P + at, _mm512_mul_ps(_mm512_cvtepi32_ps(si), _mm512_mul_ps(dw, xd)));
        }
    }
}

/* Phase 2: the 16 rows' accumulators take their terms block by block in the reference's order
 * (16 independent chains: one add per cycle-ish instead of one chain's latency). */
AI void chains(int q4, const vjob *j, const float *P, const float *M, float out[RG]) {
    float acc[RG];
    _Pragma("GCC unroll 16") for (int r = 0; r < RG; r++) acc[r] = 0.0f;
    for (int g = 0; g < j->ng; g++) {
        const int n = j->nb - g * GB < GB ? j->nb - g * GB : GB;
        const float *pg = P + (size_t)g * RG * GB, *mg = M + (size_t)g * RG * GB;
        for (int q = 0; q < n; q++)
            _Pragma("GCC unroll 16") for (int r = 0; r < RG; r++) {
                if (q4) acc[r] += mg[r * GB + q];
                acc[r] += pg[r * GB + q];
            }
    }
    _Pragma("GCC unroll 16") for (int r = 0; r < RG; r++) out[r] = acc[r];
}

/* Groups of 16 rows [begin, end); terms: a buffer of (Q4: 2 x) T * ng * 256 floats. */
static void groups(void *ctx, size_t begin, size_t end, int thread) {
    (void)thread;
    const vjob *j = ctx;
    const int N = j->w->rows, T = j->n_tok, q4 = j->w->dtype == NVLM_DT_Q4;
    const int kind = q4 ? K_Q4 : j->w->dtype == NVLM_DT_Q4_0 ? K_Q4_0 : K_Q8_0;
    const size_t per = (size_t)T * j->ng * RG * GB;
    float *P = aligned_alloc(64, sizeof(float) * per * (q4 ? 2 : 1)), *M = q4 && P ? P + per : P;
    for (size_t gr = begin; gr < end; gr++) {
        const size_t r0 = gr * RG;
        const int R = N - (int)r0 < RG ? N - (int)r0 : RG;
        if (!P) { /* out of memory: the scalar reference, the same bits */
            for (int r = 0; r < R; r++)
                for (int t = 0; t < T; t++) {
                    float v = nvlm_vec_dot_q(j->w->dtype, (const uint8_t *)j->w->data + (r0 + r) * j->rb, j->xq + (size_t)t * j->nb, j->w->cols);
                    j->y[(size_t)t * N + r0 + r] = j->bias ? v + j->bias[r0 + r] : v;
                }
            continue;
        }
        if (R < RG) memset(P, 0, sizeof(float) * per * (q4 ? 2 : 1)); /* rows past the matrix: zeros, dropped */
        for (int r = 0; r < R; r++) {
            const uint8_t *row = (const uint8_t *)j->w->data + (r0 + r) * j->rb;
#define TERMS(K) (T == 1 ? row_terms(1, K, j, row, r, P, M) : T == 2 ? row_terms(2, K, j, row, r, P, M) : row_terms(3, K, j, row, r, P, M))
            if (kind == K_Q4) TERMS(K_Q4);
            else if (kind == K_Q4_0) TERMS(K_Q4_0);
            else TERMS(K_Q8_0);
#undef TERMS
        }
        for (int t = 0; t < T; t++) {
            float out[RG];
            const size_t at = (size_t)t * j->ng * RG * GB;
            if (q4) chains(1, j, P + at, M + at, out);
            else chains(0, j, P + at, P + at, out);
            for (int r = 0; r < R; r++) j->y[(size_t)t * N + r0 + r] = j->bias ? out[r] + j->bias[r0 + r] : out[r];
        }
    }
    free(P);
}

int nvlm_gemv_vnni(nvlm_pool *pool, float *y, const float *x, int n_tok, const nvlm_wmat *w, const float *bias) {
    const int nb = w->cols / NVLM_QK, ng = (nb + GB - 1) / GB;
    /* through the pool's scratch, whose limit stands for a failed allocation in the tests */
    nvlm_block_q8a *xq = nvlm_pool_scratch(pool, sizeof(nvlm_block_q8a) * (size_t)nb * (size_t)n_tok);
    xgroup *xa = nvlm_pool_scratch(pool, sizeof(xgroup) * (size_t)ng * (size_t)n_tok);
    if (!xq || !xa) {
        free(xq), free(xa);
        return -1;
    }
    for (int t = 0; t < n_tok; t++) {
        nvlm_block_q8a *xt = xq + (size_t)t * nb;
        nvlm_quantize_row_q8a_avx2(x + (size_t)t * w->cols, xt, w->cols);
        for (int g = 0; g < ng; g++) {
            xgroup *xg = xa + (size_t)t * ng + g;
            memset(xg, 0, sizeof *xg);
            for (int k = 0; k < 8; k++)
                for (int h = 0; h < 2; h++) {
                    int i = g * GB + zmm_block(k, h);
                    if (i < nb) memcpy(xg->q[k] + 32 * h, xt[i].q, NVLM_QK);
                }
            for (int q = 0; q < GB && g * GB + q < nb; q++) {
                int s = 0;
                for (int k = 0; k < NVLM_QK; k++) s += xt[g * GB + q].q[k];
                xg->sum[q] = s;
                xg->d[q] = xt[g * GB + q].d;
            }
        }
    }
    vjob j = {y, n_tok, nb, ng, w, bias, nvlm_row_bytes(w->dtype, w->cols), xa, xq};
    nvlm_pool_run(pool, ((size_t)w->rows + RG - 1) / RG, GRAIN_GROUPS, groups, &j);
    free(xq), free(xa);
    return 0;
}
#pragma GCC pop_options
#endif
