/* Block quantization (scalar reference; the AVX2 kernels in convert_avx2.c and gemm_avx2.c must agree). */
#include "kernels/qblock.h"
#include "kernels/ops.h"
#include <math.h>
#include <string.h>

/* (libm's fminf/fmaxf are calls: they honour NaN, which quantization never sees) */
static inline float clampf(float v, float lo, float hi) { return v < lo ? lo : v > hi ? hi : v; }

/* Round to nearest even for |v| <= 2^22 (callers clamp first): rintf is a libm call without
 * SSE4.1, and quantizing a model calls it billions of times. */
static inline float round_even(float v) {
    const float big = 12582912.0f; /* 1.5 * 2^23 (no -ffast-math: the sum is not folded away) */
    return (v + big) - big;
}

/* Squared error of a Q8_0 block with scale d (f16-rounded by the caller). */
static float q8_error(const float *x, float d) {
    float id = d != 0 ? 1.0f / d : 0.0f, e = 0;
    for (int j = 0; j < NVLM_QK; j++) {
        float q = round_even(clampf(x[j] * id, -128.0f, 127.0f));
        float r = x[j] - d * q;
        e += r * r;
    }
    return e;
}

/* Scale: amax/127 (llama.cpp's rule) and slightly smaller scales (the largest value may then
 * use -128 or clip by a fraction of a step), the one of least squared error kept. */
void nvlm_quantize_row_q8_0(const float *x, void *dst, int n) {
    nvlm_block_q8_0 *b = dst;
    for (int i = 0; i < n / NVLM_QK; i++, x += NVLM_QK) {
        float amax = 0;
        for (int j = 0; j < NVLM_QK; j++) amax = fabsf(x[j]) > amax ? fabsf(x[j]) : amax;
        uint16_t best = nvlm_f32_to_f16(amax / 127.0f);
        float best_err = q8_error(x, nvlm_f16_to_f32(best));
        for (int s = 1; s <= 8; s++) {
            uint16_t dh = nvlm_f32_to_f16(amax / (127.0f + 0.125f * (float)s));
            float e = q8_error(x, nvlm_f16_to_f32(dh));
            if (e < best_err) best = dh, best_err = e;
        }
        float d = nvlm_f16_to_f32(best), id = d != 0 ? 1.0f / d : 0.0f;
        b[i].d = best;
        for (int j = 0; j < NVLM_QK; j++) b[i].q[j] = (int8_t)round_even(clampf(x[j] * id, -128.0f, 127.0f));
    }
}

/* Nibbles of x for (d, m): q = round((x - m) / d) in [0, 15]; returns the squared error. */
static float q4_assign(const float *x, float d, float m, uint8_t *q) {
    float id = d != 0 ? 1.0f / d : 0.0f, e = 0;
    for (int j = 0; j < NVLM_QK; j++) {
        float v = round_even(clampf((x[j] - m) * id, 0.0f, 15.0f));
        q[j] = (uint8_t)v;
        float r = x[j] - (d * v + m);
        e += r * r;
    }
    return e;
}

/* Q4 (Q4_1 layout): for each of 21 candidate scales around (max - min) / 15 the nibbles are
 * assigned, (d, m) refitted by least squares for those nibbles, rounded to f16 and the nibbles
 * reassigned; the candidate of least squared error is kept (llama.cpp's make_qkx2 search). */
void nvlm_quantize_row_q4(const float *x, void *dst, int n) {
    nvlm_block_q4 *b = dst;
    for (int i = 0; i < n / NVLM_QK; i++, x += NVLM_QK) {
        float mn = x[0], mx = x[0], sx = 0;
        for (int j = 0; j < NVLM_QK; j++) mn = x[j] < mn ? x[j] : mn, mx = x[j] > mx ? x[j] : mx, sx += x[j];
        uint8_t q[NVLM_QK], best_q[NVLM_QK];
        uint16_t best_d = nvlm_f32_to_f16((mx - mn) / 15.0f), best_m = nvlm_f32_to_f16(mn);
        float best_err = q4_assign(x, nvlm_f16_to_f32(best_d), nvlm_f16_to_f32(best_m), best_q);
        for (int s = 0; mx > mn && s <= 20; s++) {
            float iscale = (15.0f - 1.0f + 0.1f * (float)s) / (mx - mn);
            q4_assign(x, 1.0f / iscale, mn, q);
            double sl = 0, sl2 = 0, sxl = 0; /* least squares for d * q + m ~ x */
            for (int j = 0; j < NVLM_QK; j++) sl += q[j], sl2 += (double)q[j] * q[j], sxl += (double)q[j] * x[j];
            double det = NVLM_QK * sl2 - sl * sl;
            if (det <= 0) continue;
            double d = (NVLM_QK * sxl - sl * sx) / det, m = (sl2 * sx - sl * sxl) / det;
            if (d <= 0) continue;
            uint16_t dh = nvlm_f32_to_f16((float)d), mh = nvlm_f32_to_f16((float)m);
            float e = q4_assign(x, nvlm_f16_to_f32(dh), nvlm_f16_to_f32(mh), q);
            if (e < best_err) best_err = e, best_d = dh, best_m = mh, memcpy(best_q, q, sizeof q);
        }
        b[i].d = best_d;
        b[i].m = best_m;
        for (int j = 0; j < NVLM_QK / 2; j++) b[i].q[j] = (uint8_t)(best_q[j] | (best_q[j + 16] << 4));
    }
}

/* Q4_0: candidate scales that map the weight of largest magnitude to -8 (llama.cpp's choice)
 * or to 7, give or take up to 0.5; for each the nibbles are assigned, d refitted by least squares
 * for them (sum x (q - 8) / sum (q - 8)^2), rounded to f16 and the nibbles reassigned; the
 * candidate of least squared error is kept. */
void nvlm_quantize_row_q4_0(const float *x, void *dst, int n) {
    nvlm_block_q4_0 *b = dst;
    for (int i = 0; i < n / NVLM_QK; i++, x += NVLM_QK) {
        float amax = 0, vmax = 0;
        for (int j = 0; j < NVLM_QK; j++)
            if (fabsf(x[j]) > amax) amax = fabsf(x[j]), vmax = x[j];
        uint8_t q[NVLM_QK], best_q[NVLM_QK];
        uint16_t best_d = nvlm_f32_to_f16(vmax / -8.0f);
        float bd = nvlm_f16_to_f32(best_d), best_err = q4_assign(x, bd, -8.0f * bd, best_q);
        for (int s = 0; amax > 0 && s <= 21; s++) {
            float c = s <= 10 ? -8.5f + 0.1f * (float)s : 6.5f + 0.1f * (float)(s - 11), d0 = vmax / c;
            q4_assign(x, d0, -8.0f * d0, q);
            double sxq = 0, sqq = 0;
            for (int j = 0; j < NVLM_QK; j++) sxq += (double)x[j] * (q[j] - 8), sqq += (double)(q[j] - 8) * (q[j] - 8);
            if (sqq <= 0) continue;
            uint16_t dh = nvlm_f32_to_f16((float)(sxq / sqq));
            float d = nvlm_f16_to_f32(dh), e = q4_assign(x, d, -8.0f * d, q);
            if (e < best_err) best_err = e, best_d = dh, memcpy(best_q, q, sizeof q);
        }
        b[i].d = best_d;
        for (int j = 0; j < NVLM_QK / 2; j++) b[i].q[j] = (uint8_t)(best_q[j] | (best_q[j + 16] << 4));
    }
}

void nvlm_quantize_row_q8a(const float *x, nvlm_block_q8a *b, int n) {
    for (int i = 0; i < n / NVLM_QK; i++, x += NVLM_QK) {
        float amax = 0;
        for (int j = 0; j < NVLM_QK; j++) amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127.0f, id = d > 0 ? 127.0f / amax : 0.0f;
        b[i].d = d;
        for (int j = 0; j < NVLM_QK; j++) b[i].q[j] = (int8_t)lrintf(x[j] * id);
    }
}

void nvlm_dequantize_row_q8_0(float *dst, const void *src, int n) {
    const nvlm_block_q8_0 *b = src;
    for (int i = 0; i < n / NVLM_QK; i++) {
        float d = nvlm_f16_to_f32(b[i].d);
        for (int j = 0; j < NVLM_QK; j++) dst[i * NVLM_QK + j] = d * (float)b[i].q[j];
    }
}

void nvlm_dequantize_row_q4(float *dst, const void *src, int n) {
    const nvlm_block_q4 *b = src;
    for (int i = 0; i < n / NVLM_QK; i++) {
        float d = nvlm_f16_to_f32(b[i].d), m = nvlm_f16_to_f32(b[i].m);
        for (int j = 0; j < NVLM_QK / 2; j++) {
            dst[i * NVLM_QK + j] = d * (float)(b[i].q[j] & 15) + m;
            dst[i * NVLM_QK + j + 16] = d * (float)(b[i].q[j] >> 4) + m;
        }
    }
}

void nvlm_dequantize_row_q4_0(float *dst, const void *src, int n) {
    const nvlm_block_q4_0 *b = src;
    for (int i = 0; i < n / NVLM_QK; i++) {
        float d = nvlm_f16_to_f32(b[i].d);
        for (int j = 0; j < NVLM_QK / 2; j++) {
            dst[i * NVLM_QK + j] = d * (float)((b[i].q[j] & 15) - 8);
            dst[i * NVLM_QK + j + 16] = d * (float)((b[i].q[j] >> 4) - 8);
        }
    }
}

float nvlm_vec_dot_q8_0(const void *w, const nvlm_block_q8a *x, int n) {
    float acc = 0;
    for (int i = 0; i < n / NVLM_QK; i++) {
        const nvlm_block_q8_0 *b = (const nvlm_block_q8_0 *)w + i;
        int s = 0;
        for (int j = 0; j < NVLM_QK; j++) s += b->q[j] * x[i].q[j];
        acc += (float)s * (nvlm_f16_to_f32(b->d) * x[i].d);
    }
    return acc;
}

/* sum of (d q + m) x = d sum(q x) + m sum(x) */
float nvlm_vec_dot_q4(const void *w, const nvlm_block_q8a *x, int n) {
    float acc = 0;
    for (int i = 0; i < n / NVLM_QK; i++) {
        const nvlm_block_q4 *b = (const nvlm_block_q4 *)w + i;
        int s = 0, sq = 0;
        float dw = nvlm_f16_to_f32(b->d), mw = nvlm_f16_to_f32(b->m);
        for (int j = 0; j < NVLM_QK / 2; j++) s += (b->q[j] & 15) * x[i].q[j] + (b->q[j] >> 4) * x[i].q[j + 16];
        for (int j = 0; j < NVLM_QK; j++) sq += x[i].q[j];
        acc += (float)sq * (mw * x[i].d);
        acc += (float)s * (dw * x[i].d);
    }
    return acc;
}

/* sum of d (q - 8) x = d sum((q - 8) x): Q8_0's float steps */
float nvlm_vec_dot_q4_0(const void *w, const nvlm_block_q8a *x, int n) {
    float acc = 0;
    for (int i = 0; i < n / NVLM_QK; i++) {
        const nvlm_block_q4_0 *b = (const nvlm_block_q4_0 *)w + i;
        int s = 0;
        for (int j = 0; j < NVLM_QK / 2; j++) s += ((b->q[j] & 15) - 8) * x[i].q[j] + ((b->q[j] >> 4) - 8) * x[i].q[j + 16];
        acc += (float)s * (nvlm_f16_to_f32(b->d) * x[i].d);
    }
    return acc;
}
