/* AVX512-VNNI matrix products of Q8_0 / Q4 / Q4_0 weights against int8 activations, every output bit for
 * bit nvlm_vec_dot_q (+ bias), as the generation kernel of gemv_vnni.c. Used for the matrices packed
 * NVLM_WL_Q16 (kernels/ops.h; every engine packs them at the VNNI levels): their generated rows,
 * any number; and for prefill with int8 activations forced on (NVLM_QACT=int8 /
 * nvlm_pool_set_int8_act), where a row-major matrix is packed per call (per thread, a panel of all
 * of K, in L2) into that same layout.
 *
 * Per block of a panel: 8 vectors of 16 dwords, dword r of vector g = row r's 4 weights 4g .. 4g+3
 * as unsigned bytes (Q8_0: + 128, stored so; Q4, Q4_0: the two nibbles of the stored bytes, split
 * here), then the 16 rows' f16 scales (Q4: and minimums), widened here. The unsigned bytes'
 * offset (128 for Q8_0, 8 for Q4_0) comes off the integer sum exactly, with the block's sum of
 * q_x. Per block and token, 8 vpdpbusd against the token's 4-byte groups broadcast leave row r's
 * integer sum in lane r: no reduction.
 * Lane r then takes the reference's float steps for row r, in its order. Tokens go MR at a time
 * with the panel's block in registers. */
#include "kernels/gemv_vnni.h"
#ifdef NVLM_HAVE_VNNI_KERNELS
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
#include "kernels/wpack.h"
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#define AI static inline __attribute__((always_inline))

enum { RG = NVLM_Q16_ROWS, MR = 8 };
enum { K_Q8_0, K_Q4, K_Q4_0 }; /* the formats' tiles */

typedef struct qjob {
    float *y;
    int n_tok, nb;
    const nvlm_wmat *w;
    const float *bias;
    size_t rb, bb;            /* bytes of a stored row; of a packed panel block */
    const nvlm_block_q8a *xq; /* [n_tok][nb] */
    const int32_t *xs;        /* [n_tok][nb]: sum of the block's q_x */
} qjob;

/* Tokens t0 .. t0 + T (T <= MR) against the nb packed blocks at pb: out[t][r] for 16 rows;
 * kind: K_Q8_0, K_Q4 or K_Q4_0. */
AI void tile(int T, int kind, const qjob *j, const uint8_t *pb, int t0, float out[MR][RG]) {
    const int q4 = kind == K_Q4, nibbles = kind != K_Q8_0;
    const __m512i lo = _mm512_set1_epi8(15);
    __m512 acc[MR];
    _Pragma("GCC unroll 8") for (int t = 0; t < T; t++) acc[t] = _mm512_setzero_ps();
    for (int i = 0; i < j->nb; i++, pb += j->bb) {
        __m512i w[8];
        if (nibbles)
            _Pragma("GCC unroll 4") for (int g = 0; g < 4; g++) {
                const __m512i v = _mm512_loadu_si512(pb + 64 * g);
                w[g] = _mm512_and_si512(v, lo), w[g + 4] = _mm512_and_si512(_mm512_srli_epi32(v, 4), lo);
            }
        else
            _Pragma("GCC unroll 8") for (int g = 0; g < 8; g++) w[g] = _mm512_loadu_si512(pb + 64 * g);
        const uint8_t *sc = pb + (nibbles ? 256 : 512);
        const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)sc));
        const __m512 mw = q4 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(sc + 32))) : dw;
        _Pragma("GCC unroll 8") for (int t = 0; t < T; t++) {
            const nvlm_block_q8a *xb = j->xq + (size_t)(t0 + t) * j->nb + i;
            const int32_t xs = j->xs[(size_t)(t0 + t) * j->nb + i];
            int32_t x4[8];
            memcpy(x4, xb->q, sizeof x4);
            __m512i s = _mm512_setzero_si512();
            _Pragma("GCC unroll 8") for (int g = 0; g < 8; g++) s = _mm512_dpbusd_epi32(s, w[g], _mm512_set1_epi32(x4[g]));
            const __m512 xd = _mm512_set1_ps(xb->d);
            if (q4) acc[t] = _mm512_add_ps(acc[t], _mm512_mul_ps(_mm512_set1_ps((float)xs), _mm512_mul_ps(mw, xd)));
            else s = _mm512_sub_epi32(s, _mm512_set1_epi32((kind == K_Q4_0 ? 8 : 128) * xs));
            acc[t] = _mm512_add_ps(acc[t], _mm512_mul_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, xd)));
        }
    }
    _Pragma("GCC unroll 8") for (int t = 0; t < T; t++) _mm512_storeu_ps(out[t], acc[t]);
}

AI void tile_any(int kind, const qjob *j, const uint8_t *pb, int t0, int T, float out[MR][RG]) {
    switch (T) {
    case 1: tile(1, kind, j, pb, t0, out); break;
    case 2: tile(2, kind, j, pb, t0, out); break;
    case 3: tile(3, kind, j, pb, t0, out); break;
    case 4: tile(4, kind, j, pb, t0, out); break;
    case 5: tile(5, kind, j, pb, t0, out); break;
    case 6: tile(6, kind, j, pb, t0, out); break;
    case 7: tile(7, kind, j, pb, t0, out); break;
    default: tile(8, kind, j, pb, t0, out); break;
    }
}

static void panels(void *ctx, size_t begin, size_t end, int thread) {
    (void)thread;
    const qjob *j = ctx;
    const int N = j->w->rows, packed = j->w->layout == NVLM_WL_Q16;
    const nvlm_dtype dt = j->w->dtype;
    uint8_t *buf = packed ? NULL : aligned_alloc(64, (j->bb * (size_t)j->nb + 63) / 64 * 64); /* a multiple of 64 */
    for (size_t p = begin; p < end; p++) {
        const size_t r0 = p * RG;
        const int R = N - (int)r0 < RG ? N - (int)r0 : RG;
        const uint8_t *pb = buf;
        if (packed) {
            pb = (const uint8_t *)j->w->data + p * (size_t)j->nb * j->bb;
        } else if (buf) {
            nvlm_q16_pack_panel(j->w->dtype, (const uint8_t *)j->w->data + r0 * j->rb, j->rb, R, j->nb, buf);
        } else { /* out of memory: the scalar reference, the same bits */
            for (int r = 0; r < R; r++)
                for (int t = 0; t < j->n_tok; t++) {
                    float v = nvlm_vec_dot_q(j->w->dtype, (const uint8_t *)j->w->data + (r0 + r) * j->rb, j->xq + (size_t)t * j->nb, j->w->cols);
                    j->y[(size_t)t * N + r0 + r] = j->bias ? v + j->bias[r0 + r] : v;
                }
            continue;
        }
        for (int t0 = 0; t0 < j->n_tok; t0 += MR) {
            const int T = j->n_tok - t0 < MR ? j->n_tok - t0 : MR;
            float out[MR][RG];
            if (dt == NVLM_DT_Q4) tile_any(K_Q4, j, pb, t0, T, out);
            else if (dt == NVLM_DT_Q4_0) tile_any(K_Q4_0, j, pb, t0, T, out);
            else tile_any(K_Q8_0, j, pb, t0, T, out);
            for (int t = 0; t < T; t++)
                for (int r = 0; r < R; r++)
                    j->y[(size_t)(t0 + t) * N + r0 + r] = j->bias ? out[t][r] + j->bias[r0 + r] : out[t][r];
        }
    }
    free(buf);
}

int nvlm_gemm_vnni(nvlm_pool *pool, float *y, const float *x, int n_tok, const nvlm_wmat *w, const float *bias) {
    const int nb = w->cols / NVLM_QK;
    const size_t nbt = (size_t)nb * (size_t)n_tok;
    nvlm_block_q8a *xq = nvlm_pool_scratch(pool, (sizeof(nvlm_block_q8a) + sizeof(int32_t)) * nbt);
    if (!xq) return -1;
    int32_t *xs = (int32_t *)(xq + nbt);
    for (int t = 0; t < n_tok; t++) nvlm_quantize_row_q8a_avx2(x + (size_t)t * w->cols, xq + (size_t)t * nb, w->cols);
    for (size_t b = 0; b < nbt; b++) {
        int s = 0;
        for (int k = 0; k < NVLM_QK; k++) s += xq[b].q[k];
        xs[b] = s;
    }
    qjob j = {.y = y, .n_tok = n_tok, .nb = nb, .w = w, .bias = bias, .rb = nvlm_row_bytes(w->dtype, w->cols),
              .bb = nvlm_q16_block_bytes(w->dtype), .xq = xq, .xs = xs};
    nvlm_pool_run(pool, ((size_t)w->rows + RG - 1) / RG, 1, panels, &j);
    free(xq);
    return 0;
}
#pragma GCC pop_options
#endif
