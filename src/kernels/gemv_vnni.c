/* AVX512-VNNI matrix-vector products of Q8_0 / Q4 weights against int8 activations (generation,
 * 1 to NVLM_GEMV_MAX tokens, the int8-activation option: kernels/pool.h's
 * nvlm_pool_int8_act_for), bit for bit the scalar reference nvlm_vec_dot_q.
 *
 * 16 rows at a time, one per lane. Per block, the integer sums of the 16 rows come from 8
 * vpdpbusd (two rows' 32 bytes per zmm) and a reduction tree that leaves row r in lane r; then
 * each lane does what nvlm_vec_dot_q does for its row, in the same order with the same roundings:
 * Q4: acc += (float)sum(q_x) * (m * d_x), then for both formats acc += (float)s * (d_w * d_x).
 * Integer sums are exact, each float operation is one IEEE operation, so the result is the
 * reference's whatever the lane, group, token count or thread.
 *
 * vpdpbusd multiplies unsigned by signed bytes: Q4 nibbles are unsigned already; Q8_0 weights
 * are made unsigned by w + 128 (xor 0x80), and 128 * sum(q_x) of the block (per token, once
 * per call) is taken off the sum. */
#include "kernels/gemv_vnni.h"
#ifdef NVLM_HAVE_VNNI_KERNELS
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#define AI static inline __attribute__((always_inline))

enum { RG = 16, TMAX = NVLM_VNNI_GEMV_MAX, GRAIN_GROUPS = 4, PF_GROUPS = 2 };

typedef struct vjob {
    float *y;
    int n_tok, nb;
    const nvlm_wmat *w;
    const float *bias;
    size_t rb;
    const uint8_t *pad;       /* the last group's rows, padded to 16 with copies of the last row, or NULL */
    const nvlm_block_q8a *xq; /* [n_tok][nb] */
    const int32_t *xs;        /* [n_tok][nb]: sum of the block's q_x */
} vjob;

/* Lane r = the sum of row r's lanes, where v[j] (j < 4) holds rows j (low 256 bits) and j + 4,
 * and v[4 + j] rows 8 + j and 12 + j. */
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

/* 16 rows at base (rb bytes apart) against T tokens. */
AI void group(int T, int q4, const vjob *j, const uint8_t *base, float out[TMAX][RG]) {
    const int nb = j->nb;
    const size_t bs = q4 ? sizeof(nvlm_block_q4) : sizeof(nvlm_block_q8_0), rb = j->rb;
    const __m512i voffs = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                             _mm512_set1_epi32((int)rb));
    /* the next group's rows (contiguous) are prefetched in order, a share per block: 16
     * interleaved row streams defeat the hardware prefetchers (measured: 1.5-2.5x slower without) */
    const uint8_t *next = base + PF_GROUPS * RG * rb;
    const size_t lines = (RG * rb + 63) / 64, per = (lines + (size_t)nb - 1) / (size_t)nb;
    __m512 acc[TMAX];
    _Pragma("GCC unroll 3") for (int t = 0; t < T; t++) acc[t] = _mm512_setzero_ps();
    const uint8_t *p = base;
    for (int i = 0; i < nb; i++, p += bs) {
        for (size_t l = (size_t)i * per; l < (size_t)(i + 1) * per && l < lines; l++)
            _mm_prefetch((const char *)next + 64 * l, _MM_HINT_T0);
        /* zmm k < 4 holds rows k and k + 4, zmm 4 + k rows 8 + k and 12 + k (reduce16's order) */
        __m512i wv[8];
        _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++) {
            const uint8_t *a = p + (size_t)(k < 4 ? k : k + 4) * rb, *b = a + 4 * rb;
            if (!q4) {
                __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(a + 2))),
                                               _mm256_loadu_si256((const __m256i *)(b + 2)), 1);
                wv[k] = _mm512_xor_si512(v, _mm512_set1_epi8((char)0x80));
            } else { /* [a lo nibbles, a hi, b lo, b hi] against x = [x0..15, x16..31] twice */
                __m256i ab = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(a + 4))),
                                                     _mm_loadu_si128((const __m128i *)(b + 4)), 1);
                __m512i z = _mm512_castsi256_si512(ab);
                z = _mm512_shuffle_i64x2(z, z, _MM_SHUFFLE(1, 1, 0, 0));
                z = _mm512_mask_srli_epi16(z, 0xff00ff00u, z, 4);
                wv[k] = _mm512_and_si512(z, _mm512_set1_epi8(15));
            }
        }
        /* the scales (Q4: scale and minimum) of the 16 rows' block i, as f16 pairs */
        __m512i dm = _mm512_i32gather_epi32(voffs, p, 1);
        __m512 dw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dm));
        _Pragma("GCC unroll 3") for (int t = 0; t < T; t++) {
            const nvlm_block_q8a *xb = j->xq + (size_t)t * nb + i;
            const __m512i xv = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)xb->q));
            __m512i s[8];
            _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++) s[k] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[k], xv);
            __m512i si = reduce16(s);
            const int32_t xsum = j->xs[(size_t)t * nb + i];
            const __m512 xd = _mm512_set1_ps(xb->d);
            if (q4) {
                __m512 mw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(dm, 16)));
                acc[t] = _mm512_add_ps(acc[t], _mm512_mul_ps(_mm512_set1_ps((float)xsum), _mm512_mul_ps(mw, xd)));
            } else {
                si = _mm512_sub_epi32(si, _mm512_set1_epi32(128 * xsum));
            }
            acc[t] = _mm512_add_ps(acc[t], _mm512_mul_ps(_mm512_cvtepi32_ps(si), _mm512_mul_ps(dw, xd)));
        }
    }
    _Pragma("GCC unroll 3") for (int t = 0; t < T; t++) _mm512_storeu_ps(out[t], acc[t]);
}

static void groups(void *ctx, size_t begin, size_t end, int thread) {
    (void)thread;
    const vjob *j = ctx;
    const int N = j->w->rows, T = j->n_tok, q4 = j->w->dtype == NVLM_DT_Q4;
    for (size_t g = begin; g < end; g++) {
        size_t r0 = g * RG;
        float out[TMAX][RG];
        const uint8_t *base = r0 + RG <= (size_t)N ? (const uint8_t *)j->w->data + r0 * j->rb : j->pad;
        if (q4) {
            if (T == 1) group(1, 1, j, base, out);
            else if (T == 2) group(2, 1, j, base, out);
            else group(3, 1, j, base, out);
        } else {
            if (T == 1) group(1, 0, j, base, out);
            else if (T == 2) group(2, 0, j, base, out);
            else group(3, 0, j, base, out);
        }
        int R = N - (int)r0 < RG ? N - (int)r0 : RG;
        for (int t = 0; t < T; t++)
            for (int r = 0; r < R; r++) {
                size_t o = r0 + (size_t)r;
                j->y[(size_t)t * N + o] = j->bias ? out[t][r] + j->bias[o] : out[t][r];
            }
    }
}

int nvlm_gemv_vnni(nvlm_pool *pool, float *y, const float *x, int n_tok, const nvlm_wmat *w, const float *bias) {
    const int nb = w->cols / NVLM_QK;
    const size_t nbt = (size_t)nb * (size_t)n_tok, rb = nvlm_row_bytes(w->dtype, w->cols);
    const int n_pad = w->rows % RG; /* rows of the last group, if partial */
    void *mem = malloc((sizeof(nvlm_block_q8a) + sizeof(int32_t)) * nbt + (n_pad ? RG * rb : 0));
    if (!mem) return -1;
    nvlm_block_q8a *xq = mem;
    int32_t *xs = (int32_t *)(xq + nbt);
    uint8_t *pad = n_pad ? (uint8_t *)(xs + nbt) : NULL;
    for (int r = 0; r < RG && pad; r++)
        memcpy(pad + (size_t)r * rb, (const uint8_t *)w->data + (size_t)(w->rows - n_pad + (r < n_pad ? r : n_pad - 1)) * rb, rb);
    for (int t = 0; t < n_tok; t++) nvlm_quantize_row_q8a_avx2(x + (size_t)t * w->cols, xq + (size_t)t * nb, w->cols);
    for (size_t b = 0; b < nbt; b++) {
        int s = 0;
        for (int k = 0; k < NVLM_QK; k++) s += xq[b].q[k];
        xs[b] = s;
    }
    vjob j = {y, n_tok, nb, w, bias, rb, pad, xq, xs};
    nvlm_pool_run(pool, ((size_t)w->rows + RG - 1) / RG, GRAIN_GROUPS, groups, &j);
    free(mem);
    return 0;
}
#pragma GCC pop_options
#endif
