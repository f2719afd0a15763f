/* AVX-512 matrix-vector products (generation: 1 to NVLM_GEMV_MAX tokens) for F32/F16/BF16
 * weights: rows streamed once from memory, 16 weights at a time converted in registers (BF16:
 * zero-extension + shift; F16: vcvtph2ps), multiplied by the float32 activations. Q8_0/Q4 rows go to
 * nvlm_gemv_avx2 (the VNNI kernels are elsewhere).
 *
 * Numerics: each output is its row's sum in a fixed order, the same for any group size, token
 * count or thread count, and the same as gemv_avx2.c: lane l of the one 16-lane accumulator
 * gathers the products k = 16 i + l in order of i, exactly what AVX2's two 8-lane accumulators
 * (even and odd 8-column steps) gather; their halves are added (AVX2: a0 + a1), summed across
 * lanes in AVX2's order (hsum4), and the K % 16 tail is added in order after. So the two levels
 * give the same bits (tests/test_gemv.c). */
#include "kernels/simd512.h"
#ifdef NVLM_HAVE_AVX512_KERNELS
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#define AI static inline __attribute__((always_inline))
#define UNROLL _Pragma("GCC unroll 4")

enum {
    GEMV_MAX = NVLM_GEMV_MAX,
    RG_MAX = 2,      /* rows per group at most */
    ROWS = 1,        /* rows per group: one row stream at a time reads memory fastest (measured:
                        two streams of 16-lane chains ran at half the speed, like AVX2's finding) */
    GRAIN_ROWS = 64, /* smallest share of rows handed to a thread */
    /* F32 rows prefetch the next row this far ahead; F16/BF16 rows none: on Zen 4, one token of
     * Qwen2-0.5B's matrices (988 MB BF16) without it read 1.16-1.20x faster for BF16 and F16 (1 and
     * 2 threads, process CPU time, 9-11 alternated pairs; the hardware prefetcher follows one
     * stream alone), while F32 rows read 0.78x as fast without it. Same bits either way. */
    PREFETCH_AHEAD = 1024,
};

typedef struct gemv_job {
    float *y;
    const float *x;
    const float *xp; /* BF16: x permuted by PERM in blocks of 16 */
    int n_tok, rg;   /* tokens, rows per group */
    const nvlm_wmat *w;
    const float *bias;
    size_t rb; /* bytes per weight row */
} gemv_job;

/* 16 weights of a plain-format row from element k, as float32 (exact). F16 widens two halves
 * of 8 in 256-bit registers and joins them (vcvtph2ps zmm crosses 128-bit lanes: 8% slower on
 * Zen 4). BF16 interleaves zeros below each value in 128-bit lanes (one unpack gives value << 16),
 * which yields the 16 weights in the order P = [0-3, 8-11, 4-7, 12-15]: the activations are
 * permuted alike once per call (PERM) and the sums put back in order before they are added, so
 * each lane keeps its chain (vpmovzxwd zmm + shift measured 14% slower than AVX2). */
#define PERM _MM_SHUFFLE(3, 1, 2, 0) /* 128-bit chunks 0, 2, 1, 3: P as a chunk shuffle (P = P^-1) */
AI __m512 load16(nvlm_dtype dt, const uint8_t *row, int k) {
    const uint8_t *p = row + 2 * (size_t)k;
    if (dt == NVLM_DT_BF16) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)p), z = _mm256_setzero_si256();
        __m256i lo = _mm256_unpacklo_epi16(z, v), hi = _mm256_unpackhi_epi16(z, v);
        return _mm512_castsi512_ps(_mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1));
    }
    if (dt == NVLM_DT_F16) {
        __m256 lo = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
        __m256 hi = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 16)));
        return _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1);
    }
    return _mm512_loadu_ps((const float *)(row + 4 * (size_t)k));
}

/* gemv_avx2.c's hsum4: row sums of 4 vectors, ((v0+v1)+(v2+v3)) + ((v4+v5)+(v6+v7)) each. */
AI __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
    __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

/* lanes 0-7 + lanes 8-15: AVX2's a0 + a1. */
AI __m256 fold(__m512 v) { return _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1)); }

/* R rows (stride rb bytes) against T tokens; R, T, dt constant after inlining. xv: the
 * activations the vector loop reads (BF16: permuted by PERM per 16), x: as given (the tail). */
AI void plain_group(int R, int T, nvlm_dtype dt, const uint8_t *w, size_t rb, const float *x, const float *xv, int K,
                    float out[GEMV_MAX][RG_MAX]) {
    const size_t es = dt == NVLM_DT_F32 ? 4 : 2;
    __m512 acc[GEMV_MAX][RG_MAX];
    UNROLL
    for (int t = 0; t < T; t++)
        UNROLL
        for (int r = 0; r < R; r++) acc[t][r] = _mm512_setzero_ps();
    int k = 0;
    for (; k + 16 <= K; k += 16) {
        UNROLL
        for (int r = 0; r < R; r++) {
            if (es == 4) { /* F32 only: see PREFETCH_AHEAD */
                _mm_prefetch((const char *)w + (size_t)(r + R) * rb + (size_t)k * es + PREFETCH_AHEAD, _MM_HINT_T0);
                _mm_prefetch((const char *)w + (size_t)(r + R) * rb + (size_t)k * es + PREFETCH_AHEAD + 32, _MM_HINT_T0);
            }
            __m512 wv = load16(dt, w + r * rb, k);
            UNROLL
            for (int t = 0; t < T; t++) acc[t][r] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(xv + (size_t)t * K + k), acc[t][r]);
        }
    }
    if (dt == NVLM_DT_BF16) /* each chain back to its lane */
        UNROLL
        for (int t = 0; t < T; t++)
            UNROLL
            for (int r = 0; r < R; r++) acc[t][r] = _mm512_shuffle_f32x4(acc[t][r], acc[t][r], PERM);
    const __m256 z = _mm256_setzero_ps();
    UNROLL
    for (int t = 0; t < T; t++) {
        float s[4];
        _mm_storeu_ps(s, hsum4(fold(acc[t][0]), R > 1 ? fold(acc[t][1]) : z, z, z));
        UNROLL
        for (int r = 0; r < R; r++) out[t][r] = s[r];
    }
    if (k < K) {
        float tail[16];
        UNROLL
        for (int r = 0; r < R; r++) {
            nvlm_row_to_f32_avx512(tail, w + r * rb + (size_t)k * es, dt, K - k);
            UNROLL
            for (int t = 0; t < T; t++)
                for (int i = k; i < K; i++) out[t][r] += x[(size_t)t * K + i] * tail[i - k];
        }
    }
}

AI void group(int R, int T, const gemv_job *j, size_t r0, float out[GEMV_MAX][RG_MAX]) {
    const uint8_t *w = (const uint8_t *)j->w->data + r0 * j->rb;
    switch (j->w->dtype) {
    case NVLM_DT_BF16: plain_group(R, T, NVLM_DT_BF16, w, j->rb, j->x, j->xp, j->w->cols, out); break;
    case NVLM_DT_F16: plain_group(R, T, NVLM_DT_F16, w, j->rb, j->x, j->x, j->w->cols, out); break;
    default: plain_group(R, T, NVLM_DT_F32, w, j->rb, j->x, j->x, j->w->cols, out); break;
    }
}

/* Row groups [begin, end): full groups of rg rows, the matrix's last group possibly shorter. */
static void gemv_groups(void *ctx, size_t begin, size_t end, int thread) {
    (void)thread;
    const gemv_job *j = ctx;
    const int N = j->w->rows, T = j->n_tok, rg = j->rg;
    for (size_t g = begin; g < end; g++) {
        size_t r0 = g * (size_t)rg;
        int R = N - (int)r0 < rg ? N - (int)r0 : rg;
        float out[GEMV_MAX][RG_MAX];
        if (R == 2) {
            if (T == 1) group(2, 1, j, r0, out);
            else if (T == 2) group(2, 2, j, r0, out);
            else group(2, 3, j, r0, out);
        } else {
            if (T == 1) group(1, 1, j, r0, out);
            else if (T == 2) group(1, 2, j, r0, out);
            else group(1, 3, j, r0, out);
        }
        for (int t = 0; t < T; t++)
            for (int r = 0; r < R; r++) j->y[(size_t)t * N + r0 + r] = j->bias ? out[t][r] + j->bias[r0 + r] : out[t][r];
    }
}

/* ---- NVLM_WL_P8 rows (kernels/ops.h), any number of tokens ----
 * Eight rows a pass from one sequential stream: the group's runs of 16 lie side by side, so the
 * eight independent FMA chains per token (each row's own, as above) keep the FMA latency hidden
 * while the hardware prefetcher follows a single stream. Row-major, one row's chain at a time is
 * bound by that latency, and the x row it re-reads from L1 no longer fits beside the stream once K
 * passes ~4096 (Qwen2's down_proj: 10-16 GB/s against 25-29 here; docs/performance.md). Tokens go
 * P8_TOK at a time (8 x 3 accumulators); more tokens take the group again, from L2. Several rows
 * of a group a pass, as the batch kernel takes row-major rows, would read the group strided:
 * 2-3x slower on Zen 4. */
enum { P8_TOK = 3 };

AI void p8_group(int T, nvlm_dtype dt, const uint8_t *g, const float *xv, int K, float out[P8_TOK][NVLM_P8_ROWS]) {
    enum { R = NVLM_P8_ROWS };
    const size_t es = dt == NVLM_DT_F32 ? 4 : 2, step = (size_t)R * NVLM_P8_RUN * es;
    __m512 acc[P8_TOK][R];
    _Pragma("GCC unroll 3") for (int t = 0; t < T; t++)
        _Pragma("GCC unroll 8") for (int r = 0; r < R; r++) acc[t][r] = _mm512_setzero_ps();
    for (int k = 0; k < K; k += 16, g += step) {
        __m512 xk[P8_TOK];
        _Pragma("GCC unroll 3") for (int t = 0; t < T; t++) xk[t] = _mm512_loadu_ps(xv + (size_t)t * K + k);
        _Pragma("GCC unroll 8") for (int r = 0; r < R; r++) {
            const __m512 wv = load16(dt, g + (size_t)r * NVLM_P8_RUN * es, 0);
            _Pragma("GCC unroll 3") for (int t = 0; t < T; t++) acc[t][r] = _mm512_fmadd_ps(wv, xk[t], acc[t][r]);
        }
    }
    _Pragma("GCC unroll 3") for (int t = 0; t < T; t++) {
        if (dt == NVLM_DT_BF16)
            _Pragma("GCC unroll 8") for (int r = 0; r < R; r++) acc[t][r] = _mm512_shuffle_f32x4(acc[t][r], acc[t][r], PERM);
        _mm_storeu_ps(out[t], hsum4(fold(acc[t][0]), fold(acc[t][1]), fold(acc[t][2]), fold(acc[t][3])));
        _mm_storeu_ps(out[t] + 4, hsum4(fold(acc[t][4]), fold(acc[t][5]), fold(acc[t][6]), fold(acc[t][7])));
    }
}

AI void p8_group_dt(int T, nvlm_dtype dt, const uint8_t *g, const float *xv, int K, float out[P8_TOK][NVLM_P8_ROWS]) {
    if (dt == NVLM_DT_BF16) p8_group(T, NVLM_DT_BF16, g, xv, K, out);
    else if (dt == NVLM_DT_F16) p8_group(T, NVLM_DT_F16, g, xv, K, out);
    else p8_group(T, NVLM_DT_F32, g, xv, K, out);
}

static void p8_groups(void *ctx, size_t begin, size_t end, int thread) {
    (void)thread;
    const gemv_job *j = ctx;
    const int K = j->w->cols, N = j->w->rows;
    const nvlm_dtype dt = j->w->dtype;
    const float *xv = dt == NVLM_DT_BF16 ? j->xp : j->x;
    const size_t group = NVLM_P8_ROWS * (size_t)K * nvlm_dtype_size(dt);
    for (size_t g = begin; g < end; g++) {
        const uint8_t *base = (const uint8_t *)j->w->data + g * group;
        for (int t0 = 0; t0 < j->n_tok; t0 += P8_TOK) {
            const int T = j->n_tok - t0 < P8_TOK ? j->n_tok - t0 : P8_TOK;
            const float *xt = xv + (size_t)t0 * K;
            float out[P8_TOK][NVLM_P8_ROWS];
            if (T == 1) p8_group_dt(1, dt, base, xt, K, out);
            else if (T == 2) p8_group_dt(2, dt, base, xt, K, out);
            else p8_group_dt(3, dt, base, xt, K, out);
            for (int t = 0; t < T; t++)
                for (int r = 0; r < NVLM_P8_ROWS; r++) {
                    size_t o = g * NVLM_P8_ROWS + (size_t)r;
                    j->y[(size_t)(t0 + t) * N + o] = j->bias ? out[t][r] + j->bias[o] : out[t][r];
                }
        }
    }
}

/* BF16 activations permuted by PERM in blocks of 16 (the order load16 widens BF16 weights in). */
static void permute_x(float *xp, const float *x, int n_tok, int K) {
    for (int t = 0; t < n_tok; t++)
        for (int k = 0; k + 16 <= K; k += 16) {
            __m512 v = _mm512_loadu_ps(x + (size_t)t * K + k);
            _mm512_storeu_ps(xp + (size_t)t * K + k, _mm512_shuffle_f32x4(v, v, PERM));
        }
}

/* The NVLM_WL_P8 product: 0, or -1 when the BF16 activations' copy cannot be allocated. */
static int gemv_p8(nvlm_pool *pool, float *y, const float *x, int n_tok, const nvlm_wmat *w, const float *bias, float *stack,
                   size_t stack_floats) {
    const int K = w->cols;
    float *xp = stack;
    if (w->dtype == NVLM_DT_BF16) {
        if ((size_t)n_tok * K > stack_floats && !(xp = malloc(sizeof(float) * (size_t)n_tok * K))) return -1;
        permute_x(xp, x, n_tok, K);
    }
    gemv_job j = {.y = y, .x = x, .xp = xp, .n_tok = n_tok, .w = w, .bias = bias};
    nvlm_pool_run(pool, (size_t)w->rows / NVLM_P8_ROWS, GRAIN_ROWS / NVLM_P8_ROWS, p8_groups, &j);
    if (xp != stack) free(xp);
    return 0;
}

enum { XP_STACK = 16384 }; /* floats of permuted activations kept on the stack */

/* More than GEMV_MAX tokens run in groups of GEMV_MAX: a token's sums do not depend on the
 * tokens beside it, so the values are those of one call per token. 0, or -1 when the BF16
 * activations' copy cannot be allocated (nothing computed then). */
int nvlm_gemv_avx512(nvlm_pool *pool, float *y, const float *x, int n_tok, const nvlm_wmat *w, const float *bias) {
    float stack[XP_STACK] __attribute__((aligned(64)));
    if (w->layout == NVLM_WL_P8) return gemv_p8(pool, y, x, n_tok, w, bias, stack, XP_STACK); /* any n_tok */
    /* row-major, 2 tokens or more (a batch of generated tokens): each row read once for all of
     * them, several rows a pass (bench/batch: faster at every count from 2, 16 included); the
     * same bytes */
    if (n_tok > 1 && nvlm_gemv_batch_avx512_ok(w->dtype)) {
        nvlm_gemv_batch_avx512(pool, y, x, n_tok, w, bias);
        return 0;
    }
    const int N = w->rows, K = w->cols, rg = ROWS;
    const int bf16 = w->dtype == NVLM_DT_BF16, tmax = n_tok < GEMV_MAX ? n_tok : GEMV_MAX;
    float *xp = stack;
    if (bf16 && (size_t)tmax * K > XP_STACK && !(xp = malloc(sizeof(float) * (size_t)tmax * K))) return -1;
    for (int t0 = 0; t0 < n_tok; t0 += GEMV_MAX) {
        int T = n_tok - t0 < GEMV_MAX ? n_tok - t0 : GEMV_MAX;
        float *yt = y + (size_t)t0 * N;
        const float *xt = x + (size_t)t0 * K;
        if (nvlm_dtype_is_block(w->dtype)) {
            if (nvlm_gemv_avx2(pool, yt, xt, T, w, bias, NULL)) return -1; /* the table words it */
            continue;
        }
        if (bf16) permute_x(xp, xt, T, K);
        gemv_job j = {.y = yt, .x = xt, .xp = xp, .n_tok = T, .rg = rg, .w = w, .bias = bias,
                      .rb = nvlm_row_bytes(w->dtype, K)};
        size_t groups = ((size_t)N + rg - 1) / rg;
        nvlm_pool_run(pool, groups, (GRAIN_ROWS + rg - 1) / rg, gemv_groups, &j);
    }
    if (xp != stack) free(xp);
    return 0;
}
#pragma GCC pop_options
#endif
