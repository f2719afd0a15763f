/* The weight formats' traits table (kernels/dtype.h) and what derives from it: names, sizes,
 * row bytes, and the scalar row converters. */
#include "kernels/dtype.h"
#include "kernels/ops.h"
#include <string.h>

static void f32_to(float *dst, const void *src, int n) { memcpy(dst, src, sizeof(float) * (size_t)n); }
static void f32_from(const float *x, void *dst, int n) { memcpy(dst, x, sizeof(float) * (size_t)n); }

/* 16-bit formats, possibly at odd addresses */
static void f16_to(float *dst, const void *src, int n) {
    for (int i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, (const uint8_t *)src + 2 * (size_t)i, 2);
        dst[i] = nvlm_f16_to_f32(h);
    }
}
static void f16_from(const float *x, void *dst, int n) {
    for (int i = 0; i < n; i++) {
        uint16_t h = nvlm_f32_to_f16(x[i]);
        memcpy((uint8_t *)dst + 2 * (size_t)i, &h, 2);
    }
}
static void bf16_to(float *dst, const void *src, int n) {
    for (int i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, (const uint8_t *)src + 2 * (size_t)i, 2);
        dst[i] = nvlm_bf16_to_f32(h);
    }
}
static void bf16_from(const float *x, void *dst, int n) {
    for (int i = 0; i < n; i++) {
        uint16_t h = nvlm_f32_to_bf16(x[i]);
        memcpy((uint8_t *)dst + 2 * (size_t)i, &h, 2);
    }
}

static const nvlm_dtype_traits table[NVLM_DT_COUNT] = {
    [NVLM_DT_F32] = {.name = "F32", .block = 1, .block_bytes = 4, .simd = 1, .packed = NVLM_WL_P8, .to_f32 = f32_to,
                     .from_f32 = f32_from},
    [NVLM_DT_F16] = {.name = "F16", .block = 1, .block_bytes = 2, .simd = 1, .packed = NVLM_WL_P8, .to_f32 = f16_to,
                     .from_f32 = f16_from},
    [NVLM_DT_BF16] = {.name = "BF16", .block = 1, .block_bytes = 2, .simd = 1, .packed = NVLM_WL_P8, .to_f32 = bf16_to,
                      .from_f32 = bf16_from},
    [NVLM_DT_Q8_0] = {.name = "Q8_0", .block = NVLM_QK, .block_bytes = sizeof(nvlm_block_q8_0), .scales = 1, .simd = 1,
                      .packed = NVLM_WL_Q16, .to_f32 = nvlm_dequantize_row_q8_0, .from_f32 = nvlm_quantize_row_q8_0,
                      .vec_dot_q = nvlm_vec_dot_q8_0},
    /* llama.cpp's Q4_1 layout, under its name on disk */
    [NVLM_DT_Q4] = {.name = "Q4_1", .block = NVLM_QK, .block_bytes = sizeof(nvlm_block_q4), .scales = 2, .simd = 1,
                    .packed = NVLM_WL_Q16, .to_f32 = nvlm_dequantize_row_q4, .from_f32 = nvlm_quantize_row_q4,
                    .vec_dot_q = nvlm_vec_dot_q4},
    /* llama.cpp's Q4_0: 4.5 bits a weight */
    [NVLM_DT_Q4_0] = {.name = "Q4_0", .block = NVLM_QK, .block_bytes = sizeof(nvlm_block_q4_0), .scales = 1, .simd = 1,
                      .packed = NVLM_WL_Q16,
                      .to_f32 = nvlm_dequantize_row_q4_0, .from_f32 = nvlm_quantize_row_q4_0,
                      .vec_dot_q = nvlm_vec_dot_q4_0},
};

const nvlm_dtype_traits *nvlm_dtype_traits_of(nvlm_dtype t) {
    return (unsigned)t < NVLM_DT_COUNT ? &table[t] : NULL;
}

int nvlm_dtype_parse(const char *s, nvlm_dtype *out) {
    for (int t = 0; t < NVLM_DT_COUNT; t++)
        if (!strcmp(s, table[t].name)) {
            *out = (nvlm_dtype)t;
            return 0;
        }
    return -1;
}

const char *nvlm_dtype_name(nvlm_dtype t) {
    const nvlm_dtype_traits *d = nvlm_dtype_traits_of(t);
    return d ? d->name : "?";
}

size_t nvlm_dtype_size(nvlm_dtype t) {
    const nvlm_dtype_traits *d = nvlm_dtype_traits_of(t);
    return d && d->block == 1 ? d->block_bytes : 0;
}

int nvlm_dtype_is_block(nvlm_dtype t) {
    const nvlm_dtype_traits *d = nvlm_dtype_traits_of(t);
    return d && d->block > 1;
}

size_t nvlm_row_bytes(nvlm_dtype t, int64_t cols) {
    const nvlm_dtype_traits *d = nvlm_dtype_traits_of(t);
    return d ? (size_t)(cols / d->block) * d->block_bytes : 0;
}

void nvlm_row_to_f32(float *dst, const void *src, nvlm_dtype t, int n) { nvlm_dtype_traits_of(t)->to_f32(dst, src, n); }

void nvlm_row_from_f32(void *dst, const float *x, nvlm_dtype t, int n) {
    nvlm_dtype_traits_of(t)->from_f32(x, dst, n);
}

float nvlm_vec_dot_q(nvlm_dtype t, const void *w, const nvlm_block_q8a *x, int n) {
    return nvlm_dtype_traits_of(t)->vec_dot_q(w, x, n);
}
