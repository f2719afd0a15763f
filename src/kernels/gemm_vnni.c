/* AVX512-VNNI matrix products of Q8_0 / Q4 weights against int8 activations for 4+ tokens
 * (prefill with int8 activations forced on: NVLM_QACT=int8 / nvlm_pool_set_int8_act), every
 * output bit for bit nvlm_vec_dot_q (+ bias), as the generation kernel of gemv_vnni.c.
 *
 * Layout: a panel of 16 weight rows is packed once per call (per thread, all of K, in L2) the
 * way vpdpbusd wants it: per block, 8 zmm of 16 dwords, dword r of zmm g = row r's 4 weights
 * 4g .. 4g+3 (Q8_0: + 128, as unsigned bytes; Q4: the nibbles unpacked to bytes in x's order),
 * then the 16 rows' scales (Q4: and minimums) as float32. Per block and token, 8 vpdpbusd
 * against the token's 4-byte groups broadcast leave row r's integer sum in lane r: no
 * reduction. Lane r then takes the reference's float steps for row r, in its order. Tokens go
 * MR at a time with the panel's block in registers. */
#include "kernels/gemv_vnni.h"
#ifdef NVLM_HAVE_VNNI_KERNELS
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#define AI static inline __attribute__((always_inline))

enum { RG = 16, MR = 8 };

/* One block of a packed panel. */
typedef struct pblock {
    uint32_t w[8][RG]; /* w[g][r]: row r's bytes 4g .. 4g+3 (unsigned) */
    float d[RG], m[RG]; /* scale and (Q4) minimum of each row's block */
} pblock;

typedef struct qjob {
    float *y;
    int n_tok, nb;
    const nvlm_wmat *w;
    const float *bias;
    size_t rb;
    const nvlm_block_q8a *xq; /* [n_tok][nb] */
    const int32_t *xs;        /* [n_tok][nb]: sum of the block's q_x */
} qjob;

/* Rows r0 .. r0 + R (R <= 16; rows past R: zeros, dropped) into nb packed blocks. */
static void pack_panel(const qjob *j, size_t r0, int R, pblock *pb) {
    const int q4 = j->w->dtype == NVLM_DT_Q4;
    memset(pb, 0, sizeof(pblock) * (size_t)j->nb);
    for (int r = 0; r < R; r++) {
        const uint8_t *row = (const uint8_t *)j->w->data + (r0 + (size_t)r) * j->rb;
        for (int i = 0; i < j->nb; i++) {
            uint8_t q[NVLM_QK];
            if (q4) {
                const nvlm_block_q4 *b = (const nvlm_block_q4 *)row + i;
                for (int k = 0; k < NVLM_QK / 2; k++) q[k] = b->q[k] & 15, q[k + 16] = b->q[k] >> 4;
                pb[i].d[r] = _cvtsh_ss(b->d), pb[i].m[r] = _cvtsh_ss(b->m);
            } else {
                const nvlm_block_q8_0 *b = (const nvlm_block_q8_0 *)row + i;
                for (int k = 0; k < NVLM_QK; k++) q[k] = (uint8_t)(b->q[k] ^ 0x80);
                pb[i].d[r] = _cvtsh_ss(b->d);
            }
            for (int g = 0; g < 8; g++) memcpy(&pb[i].w[g][r], q + 4 * g, 4);
        }
    }
}

/* Tokens t0 .. t0 + T (T <= MR) against a packed panel: out[t][r] for 16 rows. */
AI void tile(int T, int q4, const qjob *j, const pblock *pb, int t0, float out[MR][RG]) {
    __m512 acc[MR];
    _Pragma("GCC unroll 8") for (int t = 0; t < T; t++) acc[t] = _mm512_setzero_ps();
    for (int i = 0; i < j->nb; i++) {
        __m512i w[8];
        _Pragma("GCC unroll 8") for (int g = 0; g < 8; g++) w[g] = _mm512_load_si512(pb[i].w[g]);
        const __m512 dw = _mm512_load_ps(pb[i].d);
        _Pragma("GCC unroll 8") for (int t = 0; t < T; t++) {
            const nvlm_block_q8a *xb = j->xq + (size_t)(t0 + t) * j->nb + i;
            const int32_t xs = j->xs[(size_t)(t0 + t) * j->nb + i];
            int32_t x4[8];
            memcpy(x4, xb->q, sizeof x4);
            __m512i s = _mm512_setzero_si512();
            _Pragma("GCC unroll 8") for (int g = 0; g < 8; g++) s = _mm512_dpbusd_epi32(s, w[g], _mm512_set1_epi32(x4[g]));
            const __m512 xd = _mm512_set1_ps(xb->d);
            if (q4) {
                acc[t] = _mm512_add_ps(acc[t], _mm512_mul_ps(_mm512_set1_ps((float)xs), _mm512_mul_ps(_mm512_load_ps(pb[i].m), xd)));
            } else {
                s = _mm512_sub_epi32(s, _mm512_set1_epi32(128 * xs));
            }
            acc[t] = _mm512_add_ps(acc[t], _mm512_mul_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, xd)));
        }
    }
    _Pragma("GCC unroll 8") for (int t = 0; t < T; t++) _mm512_storeu_ps(out[t], acc[t]);
}

AI void tile_any(int q4, const qjob *j, const pblock *pb, int t0, int T, float out[MR][RG]) {
    switch (T) {
    case 1: tile(1, q4, j, pb, t0, out); break;
    case 2: tile(2, q4, j, pb, t0, out); break;
    case 3: tile(3, q4, j, pb, t0, out); break;
    case 4: tile(4, q4, j, pb, t0, out); break;
    case 5: tile(5, q4, j, pb, t0, out); break;
    case 6: tile(6, q4, j, pb, t0, out); break;
    case 7: tile(7, q4, j, pb, t0, out); break;
    default: tile(8, q4, j, pb, t0, out); break;
    }
}

static void panels(void *ctx, size_t begin, size_t end, int thread) {
    (void)thread;
    const qjob *j = ctx;
    const int N = j->w->rows, q4 = j->w->dtype == NVLM_DT_Q4;
    pblock *pb = aligned_alloc(64, sizeof(pblock) * (size_t)j->nb);
    for (size_t p = begin; p < end; p++) {
        const size_t r0 = p * RG;
        const int R = N - (int)r0 < RG ? N - (int)r0 : RG;
        if (!pb) { /* out of memory: the scalar reference, the same bits */
            for (int r = 0; r < R; r++)
                for (int t = 0; t < j->n_tok; t++) {
                    float v = nvlm_vec_dot_q(j->w->dtype, (const uint8_t *)j->w->data + (r0 + r) * j->rb, j->xq + (size_t)t * j->nb, j->w->cols);
                    j->y[(size_t)t * N + r0 + r] = j->bias ? v + j->bias[r0 + r] : v;
                }
            continue;
        }
        pack_panel(j, r0, R, pb);
        for (int t0 = 0; t0 < j->n_tok; t0 += MR) {
            const int T = j->n_tok - t0 < MR ? j->n_tok - t0 : MR;
            float out[MR][RG];
            if (q4) tile_any(1, j, pb, t0, T, out);
            else tile_any(0, j, pb, t0, T, out);
            for (int t = 0; t < T; t++)
                for (int r = 0; r < R; r++)
                    j->y[(size_t)(t0 + t) * N + r0 + r] = j->bias ? out[t][r] + j->bias[r0 + r] : out[t][r];
        }
    }
    free(pb);
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
    qjob j = {y, n_tok, nb, w, bias, nvlm_row_bytes(w->dtype, w->cols), xq, xs};
    nvlm_pool_run(pool, ((size_t)w->rows + RG - 1) / RG, 1, panels, &j);
    free(xq);
    return 0;
}
#pragma GCC pop_options
#endif
