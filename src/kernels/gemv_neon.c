/* NEON matrix-vector products (generation: 1 to NVLM_GEMV_NEON_MAX tokens): weight rows are
 * streamed once and converted in registers (BF16 shift, F16 FCVTL, Q8_0/Q4 blocks to float
 * then scaled per block) and multiplied by the float32 activations; or, with the int8-activation
 * option, integer dot products against activations quantized per block (convert_neon.c).
 *
 * Determinism: each output is computed by one thread from its row alone, in a fixed order, so
 * results are identical for any thread count. */
#include "kernels/simd_neon.h"
#ifdef NVLM_HAVE_NEON_KERNELS
#include "kernels/neon_math.h"
#include <stdlib.h>

enum { GEMV_MAX = NVLM_GEMV_NEON_MAX };

typedef struct gemv_job {
    float *y;
    const float *x;
    int n_tok;
    const nvlm_wmat *w;
    const float *bias;
    const nvlm_block_q8a *xq; /* int8 x for block formats (option), or NULL */
    const float *xsum;        /* Q4: sum of x per block of 32, [n_tok, cols/32] */
} gemv_job;

/* 16 weights of a plain-format row from element k. */
static inline __attribute__((always_inline)) void load16(nvlm_dtype dt, const uint8_t *wr, int k, float32x4_t w[4]) {
    if (dt == NVLM_DT_F32) {
        const float *p = (const float *)(const void *)(wr + 4 * (size_t)k);
        w[0] = vld1q_f32(p), w[1] = vld1q_f32(p + 4), w[2] = vld1q_f32(p + 8), w[3] = vld1q_f32(p + 12);
        return;
    }
    uint16x8_t h0 = vreinterpretq_u16_u8(vld1q_u8(wr + 2 * (size_t)k));
    uint16x8_t h1 = vreinterpretq_u16_u8(vld1q_u8(wr + 2 * (size_t)k + 16));
    if (dt == NVLM_DT_BF16) {
        w[0] = nvlm_neon_bf16x4(vget_low_u16(h0)), w[1] = nvlm_neon_bf16x4(vget_high_u16(h0));
        w[2] = nvlm_neon_bf16x4(vget_low_u16(h1)), w[3] = nvlm_neon_bf16x4(vget_high_u16(h1));
    } else {
        w[0] = nvlm_neon_f16x4(vget_low_u16(h0)), w[1] = nvlm_neon_f16x4(vget_high_u16(h0));
        w[2] = nvlm_neon_f16x4(vget_low_u16(h1)), w[3] = nvlm_neon_f16x4(vget_high_u16(h1));
    }
}

/* One plain-format weight row against T tokens (T constant after inlining: the 4 x T
 * accumulators stay in registers). */
static inline __attribute__((always_inline)) void gemv_row(int T, nvlm_dtype dt, const uint8_t *wr, const float *x,
                                                           int K, float *out) {
    float32x4_t acc[GEMV_MAX][4];
#pragma GCC unroll 3
    for (int t = 0; t < T; t++) acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = vdupq_n_f32(0);
    int k = 0;
    for (; k + 16 <= K; k += 16) {
        float32x4_t w[4];
        load16(dt, wr, k, w);
#pragma GCC unroll 3
        for (int t = 0; t < T; t++) {
            const float *xt = x + (size_t)t * K + k;
            acc[t][0] = vfmaq_f32(acc[t][0], vld1q_f32(xt), w[0]);
            acc[t][1] = vfmaq_f32(acc[t][1], vld1q_f32(xt + 4), w[1]);
            acc[t][2] = vfmaq_f32(acc[t][2], vld1q_f32(xt + 8), w[2]);
            acc[t][3] = vfmaq_f32(acc[t][3], vld1q_f32(xt + 12), w[3]);
        }
    }
    float tail[16];
    if (k < K) nvlm_row_to_f32_neon(tail, wr + (size_t)k * nvlm_dtype_size(dt), dt, K - k);
    for (int t = 0; t < T; t++) {
        float v = vaddvq_f32(vaddq_f32(vaddq_f32(acc[t][0], acc[t][1]), vaddq_f32(acc[t][2], acc[t][3])));
        for (int i = k; i < K; i++) v += x[(size_t)t * K + i] * tail[i - k];
        out[t] = v;
    }
}

/* (Only formats whose traits say simd reach the NEON kernels: matmul.c, kernels/dtype.h.)
 * Block i of a Q8_0 / Q4 / Q4_0 row as 8 x 4 floats q (Q8_0: int8; Q4, Q4_0: nibbles 0..15),
 * its scale d and (Q4) minimum m; Q4_0's d (q - 8) is taken as m = -8 d (exact). */
static inline __attribute__((always_inline)) void qblock_load(nvlm_dtype dt, const uint8_t *wr, int i,
                                                              float32x4_t w[8], float *d, float *m) {
    if (dt == NVLM_DT_Q8_0) {
        const nvlm_block_q8_0 *b = (const nvlm_block_q8_0 *)(const void *)wr + i;
        *d = nvlm_neon_f16(b->d);
        int8x16_t b0 = vld1q_s8(b->q), b1 = vld1q_s8(b->q + 16);
        int16x8_t h0 = vmovl_s8(vget_low_s8(b0)), h1 = vmovl_s8(vget_high_s8(b0));
        int16x8_t h2 = vmovl_s8(vget_low_s8(b1)), h3 = vmovl_s8(vget_high_s8(b1));
        w[0] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(h0))), w[1] = vcvtq_f32_s32(vmovl_s16(vget_high_s16(h0)));
        w[2] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(h1))), w[3] = vcvtq_f32_s32(vmovl_s16(vget_high_s16(h1)));
        w[4] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(h2))), w[5] = vcvtq_f32_s32(vmovl_s16(vget_high_s16(h2)));
        w[6] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(h3))), w[7] = vcvtq_f32_s32(vmovl_s16(vget_high_s16(h3)));
    } else {
        const nvlm_block_q4 *b = (const nvlm_block_q4 *)(const void *)wr + i;
        const nvlm_block_q4_0 *b0 = (const nvlm_block_q4_0 *)(const void *)wr + i;
        *d = nvlm_neon_f16(dt == NVLM_DT_Q4_0 ? b0->d : b->d);
        *m = dt == NVLM_DT_Q4_0 ? -8.0f * *d : nvlm_neon_f16(b->m);
        uint8x16_t bytes = vld1q_u8(dt == NVLM_DT_Q4_0 ? b0->q : b->q);
        uint8x16_t lo = vandq_u8(bytes, vdupq_n_u8(15)), hi = vshrq_n_u8(bytes, 4);
        uint16x8_t l0 = vmovl_u8(vget_low_u8(lo)), l1 = vmovl_u8(vget_high_u8(lo));
        uint16x8_t h0 = vmovl_u8(vget_low_u8(hi)), h1 = vmovl_u8(vget_high_u8(hi));
        w[0] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(l0))), w[1] = vcvtq_f32_u32(vmovl_u16(vget_high_u16(l0)));
        w[2] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(l1))), w[3] = vcvtq_f32_u32(vmovl_u16(vget_high_u16(l1)));
        w[4] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(h0))), w[5] = vcvtq_f32_u32(vmovl_u16(vget_high_u16(h0)));
        w[6] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(h1))), w[7] = vcvtq_f32_u32(vmovl_u16(vget_high_u16(h1)));
    }
}

/* acc += d * sum(q x) over one block (two partial sums for the FMA latency). */
static inline __attribute__((always_inline)) float32x4_t qblock_fma(const float32x4_t w[8], float d, const float *xt,
                                                                    float32x4_t acc) {
    float32x4_t s0 = vmulq_f32(w[0], vld1q_f32(xt)), s1 = vmulq_f32(w[1], vld1q_f32(xt + 4));
    s0 = vfmaq_f32(s0, w[2], vld1q_f32(xt + 8)), s1 = vfmaq_f32(s1, w[3], vld1q_f32(xt + 12));
    s0 = vfmaq_f32(s0, w[4], vld1q_f32(xt + 16)), s1 = vfmaq_f32(s1, w[5], vld1q_f32(xt + 20));
    s0 = vfmaq_f32(s0, w[6], vld1q_f32(xt + 24)), s1 = vfmaq_f32(s1, w[7], vld1q_f32(xt + 28));
    return vfmaq_n_f32(acc, vaddq_f32(s0, s1), d);
}

/* One Q8_0 / Q4 weight row against T float32 tokens: per block, the 32 weights converted to
 * float in registers, sum(q x) by FMA, then scaled by d (and, for Q4, m * sum(x) of the block
 * from xsum[t * nb + i]). Exactly the weights' values; no activation rounding. */
static inline __attribute__((always_inline)) void gemv_qrow(int T, nvlm_dtype dt, const uint8_t *wr, const float *x,
                                                            const float *xsum, int K, float *out) {
    const int nb = K / NVLM_QK;
    float32x4_t acc[GEMV_MAX];
    float macc[GEMV_MAX] = {0};
#pragma GCC unroll 3
    for (int t = 0; t < T; t++) acc[t] = vdupq_n_f32(0);
    for (int i = 0; i < nb; i++) {
        float32x4_t w[8];
        float d, m = 0;
        qblock_load(dt, wr, i, w, &d, &m);
#pragma GCC unroll 3
        for (int t = 0; t < T; t++) {
            acc[t] = qblock_fma(w, d, x + (size_t)t * K + (size_t)i * NVLM_QK, acc[t]);
            if (dt != NVLM_DT_Q8_0) macc[t] += m * xsum[(size_t)t * nb + i];
        }
    }
    for (int t = 0; t < T; t++) out[t] = vaddvq_f32(acc[t]) + macc[t];
}

/* Streams weight rows [begin, end) once, each against up to GEMV_MAX tokens. */
static void gemv_rows(void *ctx, size_t begin, size_t end, int thread) {
    (void)thread;
    const gemv_job *j = ctx;
    const int N = j->w->rows, K = j->w->cols, T = j->n_tok;
    const nvlm_dtype dt = j->w->dtype;
    const size_t row_bytes = nvlm_row_bytes(dt, K);
    for (size_t r = begin; r < end; r++) {
        const uint8_t *wr = (const uint8_t *)j->w->data + r * row_bytes;
        float out[GEMV_MAX];
        if (nvlm_dtype_is_block(dt) && j->xq) { /* int8 activations (option) */
            for (int t = 0; t < T; t++) out[t] = nvlm_vec_dot_q_neon(dt, wr, j->xq + (size_t)t * (K / NVLM_QK), K);
        } else { /* constant (T, dtype) pairs */
#define ROW(TT)                                                                                     \
    (dt == NVLM_DT_BF16   ? gemv_row(TT, NVLM_DT_BF16, wr, j->x, K, out)                             \
     : dt == NVLM_DT_F16  ? gemv_row(TT, NVLM_DT_F16, wr, j->x, K, out)                              \
     : dt == NVLM_DT_Q8_0 ? gemv_qrow(TT, NVLM_DT_Q8_0, wr, j->x, NULL, K, out)                      \
     : dt == NVLM_DT_Q4   ? gemv_qrow(TT, NVLM_DT_Q4, wr, j->x, j->xsum, K, out)                     \
     : dt == NVLM_DT_Q4_0 ? gemv_qrow(TT, NVLM_DT_Q4_0, wr, j->x, j->xsum, K, out)                   \
                          : gemv_row(TT, NVLM_DT_F32, wr, j->x, K, out))
            if (T == 1) ROW(1);
            else if (T == 2) ROW(2);
            else ROW(3);
#undef ROW
        }
        for (int t = 0; t < T; t++) j->y[(size_t)t * N + r] = j->bias ? out[t] + j->bias[r] : out[t];
    }
}

int nvlm_gemv_neon(nvlm_pool *pool, float *y, const float *x, int n_tok, const nvlm_wmat *w, const float *bias,
                   nvlm_err *err) {
    gemv_job j = {.y = y, .x = x, .n_tok = n_tok, .w = w, .bias = bias};
    /* per-call activation data on the stack up to K = 16384, else scratch taken before the loop */
    nvlm_block_q8a xq[GEMV_MAX * 512], *xqp = NULL;
    float xs[GEMV_MAX * 512], *xsp = NULL;
    size_t nb = (size_t)w->cols / NVLM_QK, nbt = nb * (size_t)n_tok;
    if (nvlm_dtype_is_block(w->dtype) && nvlm_pool_int8_act(pool)) {
        size_t bytes = sizeof *xqp * nbt;
        xqp = nbt > sizeof xq / sizeof xq[0] ? nvlm_pool_scratch(pool, bytes) : xq;
        if (!xqp) return nvlm_pool_scratch_fail(err, "a matrix-vector product", bytes);
        for (int t = 0; t < n_tok; t++) nvlm_quantize_row_q8a_neon(x + (size_t)t * w->cols, xqp + t * nb, w->cols);
        j.xq = xqp;
    } else if (w->dtype == NVLM_DT_Q4 || w->dtype == NVLM_DT_Q4_0) { /* block sums of x for the minimum term */
        size_t bytes = sizeof *xsp * nbt;
        xsp = nbt > sizeof xs / sizeof xs[0] ? nvlm_pool_scratch(pool, bytes) : xs;
        if (!xsp) return nvlm_pool_scratch_fail(err, "a matrix-vector product", bytes);
        for (size_t b = 0; b < nbt; b++) {
            const float *xb = x + b * NVLM_QK;
            float32x4_t s0 = vaddq_f32(vld1q_f32(xb), vld1q_f32(xb + 4));
            float32x4_t s1 = vaddq_f32(vld1q_f32(xb + 8), vld1q_f32(xb + 12));
            s0 = vaddq_f32(s0, vaddq_f32(vld1q_f32(xb + 16), vld1q_f32(xb + 20)));
            s1 = vaddq_f32(s1, vaddq_f32(vld1q_f32(xb + 24), vld1q_f32(xb + 28)));
            xsp[b] = vaddvq_f32(vaddq_f32(s0, s1));
        }
        j.xsum = xsp;
    }
    nvlm_pool_run(pool, (size_t)w->rows, 16, gemv_rows, &j);
    if (xqp && xqp != xq) free(xqp);
    if (xsp && xsp != xs) free(xsp);
    return NVLM_OK;
}
#endif
