/* Block quantization (scalar reference; the AVX2 kernels in gemv_avx2.c must agree). */
#include "kernels/qblock.h"
#include "kernels/ops.h"
#include <math.h>
#include <string.h>

int nvlm_dtype_is_block(nvlm_dtype t) { return t == NVLM_DT_Q8_0 || t == NVLM_DT_Q4; }

size_t nvlm_row_bytes(nvlm_dtype t, int64_t cols) {
    switch (t) {
    case NVLM_DT_Q8_0: return (size_t)(cols / NVLM_QK) * sizeof(nvlm_block_q8_0);
    case NVLM_DT_Q4: return (size_t)(cols / NVLM_QK) * sizeof(nvlm_block_q4);
    default: return (size_t)cols * nvlm_dtype_size(t);
    }
}

void nvlm_quantize_row_q8_0(const float *x, void *dst, int n) {
    nvlm_block_q8_0 *b = dst;
    for (int i = 0; i < n / NVLM_QK; i++, x += NVLM_QK) {
        float amax = 0;
        for (int j = 0; j < NVLM_QK; j++) amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127.0f, id = d > 0 ? 1.0f / d : 0.0f;
        b[i].d = nvlm_f32_to_f16(d);
        for (int j = 0; j < NVLM_QK; j++) b[i].q[j] = (int8_t)lrintf(x[j] * id);
    }
}

/* Q4 scale: llama.cpp's Q4_0 rule (the value of largest magnitude maps to -8), then a few
 * nearby scales are tried and the one with the least squared error is kept. */
static float q4_error(const float *x, float d) {
    float id = d != 0 ? 1.0f / d : 0.0f, e = 0;
    for (int j = 0; j < NVLM_QK; j++) {
        int q = (int)floorf(x[j] * id + 8.5f);
        q = q < 0 ? 0 : q > 15 ? 15 : q;
        float r = x[j] - d * (float)(q - 8);
        e += r * r;
    }
    return e;
}

void nvlm_quantize_row_q4(const float *x, void *dst, int n) {
    nvlm_block_q4 *b = dst;
    for (int i = 0; i < n / NVLM_QK; i++, x += NVLM_QK) {
        float amax = 0, max = 0;
        for (int j = 0; j < NVLM_QK; j++)
            if (fabsf(x[j]) > amax) amax = fabsf(x[j]), max = x[j];
        float best = max / -8.0f, best_err = q4_error(x, best);
        for (int s = 1; s <= 8; s++) { /* shrink the scale: trades the outlier for the bulk */
            float d = max / (-8.0f - 0.25f * (float)s), e = q4_error(x, d);
            if (e < best_err) best = d, best_err = e;
        }
        uint16_t dh = nvlm_f32_to_f16(best);
        float d = nvlm_f16_to_f32(dh), id = d != 0 ? 1.0f / d : 0.0f;
        b[i].d = dh;
        for (int j = 0; j < NVLM_QK / 2; j++) {
            int q0 = (int)floorf(x[j] * id + 8.5f), q1 = (int)floorf(x[j + 16] * id + 8.5f);
            q0 = q0 < 0 ? 0 : q0 > 15 ? 15 : q0;
            q1 = q1 < 0 ? 0 : q1 > 15 ? 15 : q1;
            b[i].q[j] = (uint8_t)(q0 | (q1 << 4));
        }
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

void nvlm_row_to_f32(float *dst, const void *src, nvlm_dtype t, int n) {
    if (t == NVLM_DT_Q8_0) {
        const nvlm_block_q8_0 *b = src;
        for (int i = 0; i < n / NVLM_QK; i++) {
            float d = nvlm_f16_to_f32(b[i].d);
            for (int j = 0; j < NVLM_QK; j++) dst[i * NVLM_QK + j] = d * (float)b[i].q[j];
        }
    } else if (t == NVLM_DT_Q4) {
        const nvlm_block_q4 *b = src;
        for (int i = 0; i < n / NVLM_QK; i++) {
            float d = nvlm_f16_to_f32(b[i].d);
            for (int j = 0; j < NVLM_QK / 2; j++) {
                dst[i * NVLM_QK + j] = d * (float)((b[i].q[j] & 15) - 8);
                dst[i * NVLM_QK + j + 16] = d * (float)((b[i].q[j] >> 4) - 8);
            }
        }
    } else {
        nvlm_to_f32(dst, src, t, (size_t)n);
    }
}

float nvlm_vec_dot_q(nvlm_dtype t, const void *w, const nvlm_block_q8a *x, int n) {
    float acc = 0;
    for (int i = 0; i < n / NVLM_QK; i++) {
        int s = 0;
        float dw;
        if (t == NVLM_DT_Q8_0) {
            const nvlm_block_q8_0 *b = (const nvlm_block_q8_0 *)w + i;
            dw = nvlm_f16_to_f32(b->d);
            for (int j = 0; j < NVLM_QK; j++) s += b->q[j] * x[i].q[j];
        } else {
            const nvlm_block_q4 *b = (const nvlm_block_q4 *)w + i;
            dw = nvlm_f16_to_f32(b->d);
            for (int j = 0; j < NVLM_QK / 2; j++)
                s += ((b->q[j] & 15) - 8) * x[i].q[j] + ((b->q[j] >> 4) - 8) * x[i].q[j + 16];
        }
        acc += (float)s * (dw * x[i].d);
    }
    return acc;
}
