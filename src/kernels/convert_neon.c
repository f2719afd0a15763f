/* NEON row conversions, activation quantization and int8 dot products (see qblock.h).
 * Each gives the same bits as its scalar reference: conversions are exact or one rounding
 * in the same order (Q4: d * q, then + m; never fused), integer sums are exact. */
#include "kernels/simd_neon.h"
#ifdef NVLM_HAVE_NEON_KERNELS
#include "kernels/neon_math.h"
#include <string.h>

/* 32 weights of a Q8_0 block as float (exact: |q| <= 128). */
static inline void q8_to_f32(const int8_t *q, float32x4_t w[8]) {
    int8x16_t b0 = vld1q_s8(q), b1 = vld1q_s8(q + 16);
    int16x8_t h[4] = {vmovl_s8(vget_low_s8(b0)), vmovl_s8(vget_high_s8(b0)), vmovl_s8(vget_low_s8(b1)),
                      vmovl_s8(vget_high_s8(b1))};
    for (int i = 0; i < 4; i++) {
        w[2 * i] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(h[i])));
        w[2 * i + 1] = vcvtq_f32_s32(vmovl_s16(vget_high_s16(h[i])));
    }
}

/* 32 nibbles of a Q4 block (weights 0..15 low nibbles, 16..31 high) as float. */
static inline void q4_to_f32(const uint8_t *q, float32x4_t w[8]) {
    uint8x16_t bytes = vld1q_u8(q);
    uint8x16_t n[2] = {vandq_u8(bytes, vdupq_n_u8(15)), vshrq_n_u8(bytes, 4)};
    for (int i = 0; i < 2; i++) {
        uint16x8_t lo = vmovl_u8(vget_low_u8(n[i])), hi = vmovl_u8(vget_high_u8(n[i]));
        w[4 * i] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(lo)));
        w[4 * i + 1] = vcvtq_f32_u32(vmovl_u16(vget_high_u16(lo)));
        w[4 * i + 2] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(hi)));
        w[4 * i + 3] = vcvtq_f32_u32(vmovl_u16(vget_high_u16(hi)));
    }
}

void nvlm_row_to_f32_neon(float *dst, const void *src, nvlm_dtype t, int n) {
    const uint8_t *s = src;
    int i = 0;
    switch (t) {
    case NVLM_DT_F32:
        memcpy(dst, src, sizeof(float) * (size_t)n);
        return;
    case NVLM_DT_BF16:
        for (; i + 8 <= n; i += 8) {
            uint16x8_t h = vreinterpretq_u16_u8(vld1q_u8(s + 2 * (size_t)i));
            vst1q_f32(dst + i, nvlm_neon_bf16x4(vget_low_u16(h)));
            vst1q_f32(dst + i + 4, nvlm_neon_bf16x4(vget_high_u16(h)));
        }
        break;
    case NVLM_DT_F16:
        for (; i + 8 <= n; i += 8) {
            uint16x8_t h = vreinterpretq_u16_u8(vld1q_u8(s + 2 * (size_t)i));
            vst1q_f32(dst + i, nvlm_neon_f16x4(vget_low_u16(h)));
            vst1q_f32(dst + i + 4, nvlm_neon_f16x4(vget_high_u16(h)));
        }
        break;
    case NVLM_DT_Q8_0: {
        const nvlm_block_q8_0 *b = src;
        for (int k = 0; k < n / NVLM_QK; k++) {
            float32x4_t w[8];
            float d = nvlm_neon_f16(b[k].d);
            q8_to_f32(b[k].q, w);
            for (int j = 0; j < 8; j++) vst1q_f32(dst + k * NVLM_QK + 4 * j, vmulq_n_f32(w[j], d));
        }
        return;
    }
    case NVLM_DT_Q4: {
        const nvlm_block_q4 *b = src;
        for (int k = 0; k < n / NVLM_QK; k++) {
            float32x4_t w[8], m = vdupq_n_f32(nvlm_neon_f16(b[k].m));
            float d = nvlm_neon_f16(b[k].d);
            q4_to_f32(b[k].q, w);
            for (int j = 0; j < 8; j++) vst1q_f32(dst + k * NVLM_QK + 4 * j, vaddq_f32(vmulq_n_f32(w[j], d), m));
        }
        return;
    }
    case NVLM_DT_Q4_0: { /* d * (q - 8): q - 8 exact in float, one rounding as the reference */
        const nvlm_block_q4_0 *b = src;
        for (int k = 0; k < n / NVLM_QK; k++) {
            float32x4_t w[8], eight = vdupq_n_f32(8.0f);
            float d = nvlm_neon_f16(b[k].d);
            q4_to_f32(b[k].q, w);
            for (int j = 0; j < 8; j++) vst1q_f32(dst + k * NVLM_QK + 4 * j, vmulq_n_f32(vsubq_f32(w[j], eight), d));
        }
        return;
    }
    default: /* a format this code does not decode: the traits table's scalar converter */
        nvlm_row_to_f32(dst, src, t, n);
        return;
    }
    if (i < n) nvlm_to_f32(dst + i, s + 2 * (size_t)i, t, (size_t)(n - i));
}

/* Same arithmetic as nvlm_quantize_row_q8a: amax, d = amax/127, q = rint(x * 127/amax). */
void nvlm_quantize_row_q8a_neon(const float *x, nvlm_block_q8a *b, int n) {
    for (int i = 0; i < n / NVLM_QK; i++, x += NVLM_QK) {
        float32x4_t v[8], m = vdupq_n_f32(0);
        for (int j = 0; j < 8; j++) {
            v[j] = vld1q_f32(x + 4 * j);
            m = vmaxq_f32(m, vabsq_f32(v[j]));
        }
        float amax = vmaxvq_f32(m);
        float d = amax / 127.0f, id = d > 0 ? 127.0f / amax : 0.0f;
        b[i].d = d;
        int16x4_t h[8];
        for (int j = 0; j < 8; j++) h[j] = vqmovn_s32(vcvtnq_s32_f32(vmulq_n_f32(v[j], id)));
        vst1q_s8(b[i].q, vcombine_s8(vqmovn_s16(vcombine_s16(h[0], h[1])), vqmovn_s16(vcombine_s16(h[2], h[3]))));
        vst1q_s8(b[i].q + 16, vcombine_s8(vqmovn_s16(vcombine_s16(h[4], h[5])), vqmovn_s16(vcombine_s16(h[6], h[7]))));
    }
}

/* Sum of 16 int8 products. */
static inline int32_t dot16(int8x16_t a, int8x16_t b) {
    int32x4_t s = vpaddlq_s16(vmull_s8(vget_low_s8(a), vget_low_s8(b)));
    s = vpadalq_s16(s, vmull_s8(vget_high_s8(a), vget_high_s8(b)));
    return vaddvq_s32(s);
}

/* int8 activations against the weight blocks, block by block in the scalar reference's order
 * (the integer sums are exact, so the float arithmetic is the same). */
float nvlm_vec_dot_q_neon(nvlm_dtype t, const void *w, const nvlm_block_q8a *x, int n) {
    if (t != NVLM_DT_Q8_0 && t != NVLM_DT_Q4 && t != NVLM_DT_Q4_0) return nvlm_vec_dot_q(t, w, x, n); /* the table's reference */
    float acc = 0;
    for (int i = 0; i < n / NVLM_QK; i++) {
        int8x16_t x0 = vld1q_s8(x[i].q), x1 = vld1q_s8(x[i].q + 16);
        if (t == NVLM_DT_Q8_0) {
            const nvlm_block_q8_0 *b = (const nvlm_block_q8_0 *)w + i;
            int32_t s = dot16(vld1q_s8(b->q), x0) + dot16(vld1q_s8(b->q + 16), x1);
            acc += (float)s * (nvlm_neon_f16(b->d) * x[i].d);
        } else if (t == NVLM_DT_Q4_0) { /* nibbles - 8, as int8: Q8_0's steps */
            const nvlm_block_q4_0 *b = (const nvlm_block_q4_0 *)w + i;
            uint8x16_t bytes = vld1q_u8(b->q);
            int8x16_t lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(bytes, vdupq_n_u8(15))), vdupq_n_s8(8));
            int8x16_t hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(bytes, 4)), vdupq_n_s8(8));
            int32_t s = dot16(lo, x0) + dot16(hi, x1);
            acc += (float)s * (nvlm_neon_f16(b->d) * x[i].d);
        } else {
            const nvlm_block_q4 *b = (const nvlm_block_q4 *)w + i;
            uint8x16_t bytes = vld1q_u8(b->q);
            int8x16_t lo = vreinterpretq_s8_u8(vandq_u8(bytes, vdupq_n_u8(15)));
            int8x16_t hi = vreinterpretq_s8_u8(vshrq_n_u8(bytes, 4));
            int32_t s = dot16(lo, x0) + dot16(hi, x1);
            int32_t sq = vaddlvq_s8(x0) + vaddlvq_s8(x1);
            acc += (float)sq * (nvlm_neon_f16(b->m) * x[i].d);
            acc += (float)s * (nvlm_neon_f16(b->d) * x[i].d);
        }
    }
    return acc;
}
#endif
