/* AVX2 matrix-vector products (generation: 1 to NVLM_GEMV_MAX tokens): weight rows are streamed
 * once from memory and converted in registers (BF16 shift, F16 vcvtph2ps, Q8_0/Q4 blocks to float
 * then scaled per block), then multiplied by the float32 activations; or, with the int8-activation
 * option, integer dot products against activations quantized per block of 32.
 *
 * Speed: one pass handles a group of rows (4 for one token) with independent accumulators, so
 * the activation loads are shared and the FMA latency of one row hides behind the others; short
 * rows (K = 896) also share the horizontal sums (hsum4). Memory, not arithmetic, should bound it.
 *
 * Determinism: each output is computed by one thread from its row alone, in a fixed order that
 * depends neither on the group it is in nor on the number of tokens of the call, so results are
 * identical for any thread count. */
#include "kernels/simd.h"
#ifdef NVLM_HAVE_AVX2_KERNELS
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define AI static inline __attribute__((always_inline))
/* the row and token loops must unroll: their accumulators then live in registers */
#define UNROLL _Pragma("GCC unroll 4")

enum {
    GEMV_MAX = NVLM_GEMV_MAX,
    RG_MAX = 4,        /* rows per group (one token); 4 / T for T tokens */
    GRAIN_ROWS = 64,   /* smallest share of rows handed to a thread */
    PREFETCH_AHEAD = 1024,
};

/* Per-block activation data of the int8 path: scale d and (Q4) d * sum(q) of the block. */
typedef struct xq_scale {
    float d, ds;
} xq_scale;

typedef struct gemv_job {
    float *y;
    const float *x;
    int n_tok, rg; /* tokens, rows per group */
    const nvlm_wmat *w;
    const float *bias;
    const nvlm_block_q8a *xq; /* int8 x per block [n_tok, cols/32] (option), or NULL */
    const xq_scale *xd;       /* its scales [n_tok, cols/32] */
    const float *xs;          /* float path, Q4: lane sums of x per block [n_tok, cols/32, 8] */
    size_t rb;                /* bytes per weight row */
} gemv_job;

/* Rows per pass. Block formats: 4 for one token (the conversions are the bottleneck: the rows
 * share the activation loads and hide each other's latency); plain formats: 1, whose FMAs are
 * cheap, and one row stream at a time reads memory faster than several (measured). */
static int rows_per_group(nvlm_dtype dt, int T) {
    if (!nvlm_dtype_is_block(dt)) return 1;
    return T == 1 ? 4 : T == 2 ? 2 : 1;
}

/* Row sums of 4 vectors, each in the same fixed order: ((v0+v1)+(v2+v3)) + ((v4+v5)+(v6+v7)). */
AI __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
    __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

/* out[t][r] = the sum of acc[t][r]. */
AI void finish(int R, int T, __m256 acc[GEMV_MAX][RG_MAX], float out[GEMV_MAX][RG_MAX]) {
    const __m256 z = _mm256_setzero_ps();
    UNROLL
    for (int t = 0; t < T; t++)
        _mm_storeu_ps(out[t], hsum4(acc[t][0], R > 1 ? acc[t][1] : z, R > 2 ? acc[t][2] : z, R > 3 ? acc[t][3] : z));
}

/* Software prefetch, as the weights are consumed, of the same bytes of the next group
 * (PREFETCH_AHEAD further): the hardware prefetchers alone fall well short on several
 * interleaved row streams (measured: Q8_0 at 4 rows a pass from 52% to 80% of the read
 * bandwidth, one core). Lines [p, p + n), n constant. */
AI void prefetch(const uint8_t *p, size_t n) {
    for (size_t o = 0; o < n; o += 64) _mm_prefetch((const char *)p + PREFETCH_AHEAD + o, _MM_HINT_T0);
}

/* ---- F32 / F16 / BF16 ---- */

/* 8 weights of a plain-format row from element k, as float. */
AI __m256 load_plain(nvlm_dtype dt, const uint8_t *row, int k) {
    if (dt == NVLM_DT_BF16)
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(row + 2 * (size_t)k))), 16));
    if (dt == NVLM_DT_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + 2 * (size_t)k)));
    return _mm256_loadu_ps((const float *)(row + 4 * (size_t)k));
}

/* R rows (stride rb bytes; used with R = 1) against T tokens. Per row and token two accumulators, for the even
 * and odd 8-column steps of each 16; the K % 16 tail is added in order after the sum. */
AI void plain_group(int R, int T, nvlm_dtype dt, const uint8_t *w, size_t rb, const float *x, int K,
                    float out[GEMV_MAX][RG_MAX]) {
    const size_t es = dt == NVLM_DT_F32 ? 4 : 2; /* bytes per weight */
    __m256 a0[GEMV_MAX][RG_MAX], a1[GEMV_MAX][RG_MAX];
    UNROLL
    for (int t = 0; t < T; t++)
        UNROLL
        for (int r = 0; r < R; r++) a0[t][r] = a1[t][r] = _mm256_setzero_ps();
    int k = 0;
    for (; k + 16 <= K; k += 16) {
        prefetch(w + R * rb + (size_t)k * R * es, 16 * R * es);
        UNROLL
        for (int r = 0; r < R; r++) {
            __m256 w0 = load_plain(dt, w + r * rb, k), w1 = load_plain(dt, w + r * rb, k + 8);
            UNROLL
            for (int t = 0; t < T; t++) {
                a0[t][r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + (size_t)t * K + k), a0[t][r]);
                a1[t][r] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + (size_t)t * K + k + 8), a1[t][r]);
            }
        }
    }
    UNROLL
    for (int t = 0; t < T; t++)
        UNROLL
        for (int r = 0; r < R; r++) a0[t][r] = _mm256_add_ps(a0[t][r], a1[t][r]);
    finish(R, T, a0, out);
    if (k < K) {
        float tail[16];
        UNROLL
        for (int r = 0; r < R; r++) {
            nvlm_row_to_f32_avx2(tail, w + r * rb + (size_t)k * nvlm_dtype_size(dt), dt, K - k);
            UNROLL
            for (int t = 0; t < T; t++)
                for (int i = k; i < K; i++) out[t][r] += x[(size_t)t * K + i] * tail[i - k];
        }
    }
}

/* ---- Q8_0 / Q4 against float32 activations ---- */

/* sum over one Q8_0 block of q x, 8 lanes. */
AI __m256 q8_dot(const int8_t *q, const float *x) {
    __m256 s = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)q))), _mm256_loadu_ps(x));
    s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(q + 8)))), _mm256_loadu_ps(x + 8), s);
    s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(q + 16)))), _mm256_loadu_ps(x + 16), s);
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(q + 24)))), _mm256_loadu_ps(x + 24), s);
}

/* The same for a Q4 block's nibbles: byte j holds weights j (low) and j + 16 (high), so one
 * zero-extension of 8 bytes to 32-bit lanes serves two groups of 8 weights. */
AI __m256 q4_dot(const uint8_t *q, const float *x) {
    const __m256i m4 = _mm256_set1_epi32(15);
    __m256i b0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)q));
    __m256i b1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(q + 8)));
    __m256 s = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_and_si256(b0, m4)), _mm256_loadu_ps(x));
    s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(b1, m4)), _mm256_loadu_ps(x + 8), s);
    s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(b0, 4)), _mm256_loadu_ps(x + 16), s);
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(b1, 4)), _mm256_loadu_ps(x + 24), s);
}

/* A Q4 or Q4_0 block at blk: (d, m, 0, 0), Q4_0's m being -8 d (exact: w = d (q - 8) = d q + m),
 * and *q its 16 nibble bytes. The f16s are widened from a fresh register (vpinsrw into an old
 * one chained the blocks: Q4_0 ran 30% slower). */
AI __m128 nibble_dm(nvlm_dtype dt, const uint8_t *blk, const uint8_t **q) {
    if (dt == NVLM_DT_Q4_0) {
        uint16_t d16;
        memcpy(&d16, blk, 2);
        *q = blk + offsetof(nvlm_block_q4_0, q);
        const __m128 d = _mm_cvtph_ps(_mm_cvtsi32_si128((int)d16));
        return _mm_mul_ps(_mm_shuffle_ps(d, d, 0), _mm_setr_ps(1.0f, -8.0f, 0.0f, 0.0f));
    }
    uint32_t dm;
    memcpy(&dm, blk, 4);
    *q = blk + offsetof(nvlm_block_q4, q);
    return _mm_cvtph_ps(_mm_cvtsi32_si128((int)dm));
}

/* R rows of Q8_0 / Q4 / Q4_0 blocks against T float tokens: per block acc += d * sum(q x), and for
 * Q4 and Q4_0 acc += m * xs (xs: the block's x summed in 8 lanes; nibble_dm's m), one accumulator
 * per row and token; the rows of a group keep several blocks in flight. Exactly the weights' values. */
AI void qf_group(int R, int T, nvlm_dtype dt, const uint8_t *w, size_t rb, const float *x, const float *xs, int K,
                 float out[GEMV_MAX][RG_MAX]) {
    const int nb = K / NVLM_QK;
    __m256 acc[GEMV_MAX][RG_MAX];
    UNROLL
    for (int t = 0; t < T; t++)
        UNROLL
        for (int r = 0; r < R; r++) acc[t][r] = _mm256_setzero_ps();
    const size_t bs = rb / (size_t)nb; /* the block's bytes */
    for (int i = 0; i < nb; i++) {
        prefetch(w + R * rb + (size_t)i * R * bs, R * bs);
        UNROLL
        for (int r = 0; r < R; r++) {
            if (dt == NVLM_DT_Q8_0) {
                const nvlm_block_q8_0 *b = (const nvlm_block_q8_0 *)(w + r * rb) + i;
                __m256 d = _mm256_set1_ps(_cvtsh_ss(b->d));
                UNROLL
                for (int t = 0; t < T; t++)
                    acc[t][r] = _mm256_fmadd_ps(d, q8_dot(b->q, x + (size_t)t * K + (size_t)i * NVLM_QK), acc[t][r]);
            } else {
                const uint8_t *q;
                const __m128 dm = nibble_dm(dt, w + r * rb + (size_t)i * bs, &q);
                const __m256 d = _mm256_broadcastss_ps(dm), m = _mm256_broadcastss_ps(_mm_movehdup_ps(dm));
                UNROLL
                for (int t = 0; t < T; t++) {
                    acc[t][r] = _mm256_fmadd_ps(d, q4_dot(q, x + (size_t)t * K + (size_t)i * NVLM_QK), acc[t][r]);
                    acc[t][r] = _mm256_fmadd_ps(m, _mm256_loadu_ps(xs + ((size_t)t * nb + i) * 8), acc[t][r]);
                }
            }
        }
    }
    finish(R, T, acc, out);
}

/* ---- Q8_0 / Q4 against int8 activations (option) ---- */

/* Sum of 32 int8 products as 8 int32 lanes (maddubs wants an unsigned operand: |w|, sign moved
 * to x; |w| <= 128, |x| <= 127, so pairs fit in int16). */
AI __m256i dot_i8(__m256i w, __m256i x) {
    __m256i s16 = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
    return _mm256_madd_epi16(s16, _mm256_set1_epi16(1));
}

AI void qi_group(int R, int T, nvlm_dtype dt, const uint8_t *w, size_t rb, const nvlm_block_q8a *xq,
                 const xq_scale *xd, int K, float out[GEMV_MAX][RG_MAX]) {
    const int nb = K / NVLM_QK;
    __m256 acc[GEMV_MAX][RG_MAX];
    __m128 macc[GEMV_MAX][RG_MAX]; /* Q4, Q4_0: lane 1 collects m * d_x * sum(q_x) */
    UNROLL
    for (int t = 0; t < T; t++)
        UNROLL
        for (int r = 0; r < R; r++) acc[t][r] = _mm256_setzero_ps(), macc[t][r] = _mm_setzero_ps();
    const size_t bs = rb / (size_t)nb; /* the block's bytes */
    for (int i = 0; i < nb; i++) {
        prefetch(w + R * rb + (size_t)i * R * bs, R * bs);
        UNROLL
        for (int r = 0; r < R; r++) {
            if (dt == NVLM_DT_Q8_0) {
                const nvlm_block_q8_0 *b = (const nvlm_block_q8_0 *)(w + r * rb) + i;
                __m256i wq = _mm256_loadu_si256((const __m256i *)b->q);
                float dw = _cvtsh_ss(b->d);
                UNROLL
                for (int t = 0; t < T; t++) {
                    const nvlm_block_q8a *a = xq + (size_t)t * nb + i;
                    __m256 s = _mm256_cvtepi32_ps(dot_i8(wq, _mm256_loadu_si256((const __m256i *)a->q)));
                    acc[t][r] = _mm256_fmadd_ps(_mm256_set1_ps(dw * a->d), s, acc[t][r]);
                }
            } else { /* Q4, Q4_0: the nibbles unsigned, the m term through macc */
                const uint8_t *q;
                const __m128 wdm = nibble_dm(dt, w + r * rb + (size_t)i * bs, &q); /* d, m */
                __m128i bytes = _mm_loadu_si128((const __m128i *)q);
                __m256i wq = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(bytes, 4), bytes), _mm256_set1_epi8(15));
                UNROLL
                for (int t = 0; t < T; t++) {
                    const nvlm_block_q8a *a = xq + (size_t)t * nb + i;
                    __m256i s16 = _mm256_maddubs_epi16(wq, _mm256_loadu_si256((const __m256i *)a->q));
                    __m256 s = _mm256_cvtepi32_ps(_mm256_madd_epi16(s16, _mm256_set1_epi16(1)));
                    __m128 sc = _mm_mul_ps(wdm, _mm_castsi128_ps(_mm_loadl_epi64((const __m128i *)(xd + (size_t)t * nb + i))));
                    acc[t][r] = _mm256_fmadd_ps(_mm256_broadcastss_ps(sc), s, acc[t][r]);
                    macc[t][r] = _mm_add_ps(macc[t][r], sc);
                }
            }
        }
    }
    finish(R, T, acc, out);
    if (dt != NVLM_DT_Q8_0)
        UNROLL
        for (int t = 0; t < T; t++)
            UNROLL
            for (int r = 0; r < R; r++) out[t][r] += _mm_cvtss_f32(_mm_movehdup_ps(macc[t][r]));
}

/* ---- driver ---- */

/* One group of R rows from row r0, T tokens (R, T constant after inlining; plain formats come
 * one row at a time, R = 1). */
AI void group(int R, int T, const gemv_job *j, size_t r0, float out[GEMV_MAX][RG_MAX]) {
    const nvlm_dtype dt = j->w->dtype;
    const int K = j->w->cols;
    const size_t rb = j->rb;
    const uint8_t *w = (const uint8_t *)j->w->data + r0 * rb;
    switch (dt) {
    case NVLM_DT_BF16: plain_group(1, T, NVLM_DT_BF16, w, rb, j->x, K, out); break;
    case NVLM_DT_F16: plain_group(1, T, NVLM_DT_F16, w, rb, j->x, K, out); break;
    case NVLM_DT_Q8_0:
        if (j->xq) qi_group(R, T, NVLM_DT_Q8_0, w, rb, j->xq, j->xd, K, out);
        else qf_group(R, T, NVLM_DT_Q8_0, w, rb, j->x, NULL, K, out);
        break;
    case NVLM_DT_Q4:
        if (j->xq) qi_group(R, T, NVLM_DT_Q4, w, rb, j->xq, j->xd, K, out);
        else qf_group(R, T, NVLM_DT_Q4, w, rb, j->x, j->xs, K, out);
        break;
    case NVLM_DT_Q4_0:
        if (j->xq) qi_group(R, T, NVLM_DT_Q4_0, w, rb, j->xq, j->xd, K, out);
        else qf_group(R, T, NVLM_DT_Q4_0, w, rb, j->x, j->xs, K, out);
        break;
    default: /* F32; only formats whose traits say simd come here (matmul.c, kernels/dtype.h) */
        plain_group(1, T, NVLM_DT_F32, w, rb, j->x, K, out);
        break;
    }
}

/* R rows from r0 against tokens [t0, t0 + T), T <= GEMV_MAX, R <= rows_per_group(dt, T). */
static void gemv_tile(const gemv_job *j, size_t r0, int R, int t0, int T) {
    const int N = j->w->rows, K = j->w->cols, nb = K / NVLM_QK;
    gemv_job g = *j; /* the token group's activations */
    g.x = j->x + (size_t)t0 * K;
    if (j->xq) g.xq = j->xq + (size_t)t0 * nb, g.xd = j->xd + (size_t)t0 * nb;
    if (j->xs) g.xs = j->xs + (size_t)t0 * nb * 8;
    float out[GEMV_MAX][RG_MAX];
    if (T == 1) {
        if (R == 4) group(4, 1, &g, r0, out);
        else if (R == 3) group(3, 1, &g, r0, out);
        else if (R == 2) group(2, 1, &g, r0, out);
        else group(1, 1, &g, r0, out);
    } else if (T == 2) {
        if (R == 2) group(2, 2, &g, r0, out);
        else group(1, 2, &g, r0, out);
    } else {
        group(1, 3, &g, r0, out);
    }
    UNROLL
    for (int t = 0; t < T; t++)
        UNROLL
        for (int r = 0; r < R; r++)
            j->y[(size_t)(t0 + t) * N + r0 + r] = j->bias ? out[t][r] + j->bias[r0 + r] : out[t][r];
}

/* Row groups [begin, end): full groups of rg rows, the matrix's last group possibly shorter.
 * More than GEMV_MAX tokens (a batch of generating sequences): each group of rows is applied to
 * the tokens GEMV_MAX at a time while it sits in L1, so the weights are read from memory once;
 * every token still gets the same per-token order as when alone. */
static void gemv_groups(void *ctx, size_t begin, size_t end, int thread) {
    (void)thread;
    const gemv_job *j = ctx;
    const int N = j->w->rows, T = j->n_tok, rg = j->rg;
    for (size_t g = begin; g < end; g++) {
        size_t r0 = g * (size_t)rg;
        int R = N - (int)r0 < rg ? N - (int)r0 : rg;
        for (int t0 = 0; t0 < T; t0 += GEMV_MAX) {
            int tg = T - t0 < GEMV_MAX ? T - t0 : GEMV_MAX, rs = rows_per_group(j->w->dtype, tg);
            for (int r = 0; r < R; r += rs) gemv_tile(j, r0 + (size_t)r, R - r < rs ? R - r : rs, t0, tg);
        }
    }
}

/* Per-block activation data of the block formats for one call: on the stack up to 512 blocks
 * (one token of K = 16384), else on the heap. */
enum { STACK_BLOCKS = 512 };
typedef union act_buf {
    struct {
        nvlm_block_q8a q[STACK_BLOCKS];
        xq_scale d[STACK_BLOCKS];
    } i8;
    float xs[STACK_BLOCKS * 8];
} act_buf;

int nvlm_gemv_avx2(nvlm_pool *pool, float *y, const float *x, int n_tok, const nvlm_wmat *w, const float *bias,
                   nvlm_err *err) {
    gemv_job j = {.y = y, .x = x, .n_tok = n_tok, .w = w, .bias = bias, .rb = nvlm_row_bytes(w->dtype, w->cols),
                  .rg = n_tok <= GEMV_MAX ? rows_per_group(w->dtype, n_tok) : RG_MAX};
    const size_t nb = (size_t)w->cols / NVLM_QK, nbt = nb * (size_t)n_tok;
    act_buf stack;
    void *heap = NULL;
    if (nvlm_dtype_is_block(w->dtype) && nbt > STACK_BLOCKS) {
        size_t bytes = (sizeof(nvlm_block_q8a) + sizeof(xq_scale) + sizeof(float) * 8) * nbt;
        heap = nvlm_pool_scratch(pool, bytes);
        if (!heap) return nvlm_pool_scratch_fail(err, "a matrix-vector product", bytes);
    }
    nvlm_block_q8a *xq = heap ? (nvlm_block_q8a *)heap : stack.i8.q;
    xq_scale *xd = heap ? (xq_scale *)(xq + nbt) : stack.i8.d;
    float *xs = heap ? (float *)heap : stack.xs;
    if (nvlm_dtype_is_block(w->dtype) && nvlm_pool_int8_act_for(pool, w->dtype)) {
        for (int t = 0; t < n_tok; t++) nvlm_quantize_row_q8a_avx2(x + (size_t)t * w->cols, xq + t * nb, w->cols);
        for (size_t b = 0; b < nbt; b++) {
            int s = 0;
            for (int k = 0; k < NVLM_QK; k++) s += xq[b].q[k];
            xd[b].d = xq[b].d;
            xd[b].ds = xq[b].d * (float)s;
        }
        j.xq = xq, j.xd = xd;
    } else if (w->dtype == NVLM_DT_Q4 || w->dtype == NVLM_DT_Q4_0) { /* x of each block summed in 8 lanes, for the minimum term */
        for (size_t b = 0; b < nbt; b++) {
            const float *xb = x + b * NVLM_QK;
            __m256 v = _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(xb), _mm256_loadu_ps(xb + 8)),
                                     _mm256_add_ps(_mm256_loadu_ps(xb + 16), _mm256_loadu_ps(xb + 24)));
            _mm256_storeu_ps(xs + 8 * b, v);
        }
        j.xs = xs;
    }
    size_t groups = ((size_t)w->rows + j.rg - 1) / j.rg;
    nvlm_pool_run(pool, groups, (GRAIN_ROWS + j.rg - 1) / j.rg, gemv_groups, &j);
    free(heap);
    return NVLM_OK;
}

#pragma GCC pop_options
#endif
