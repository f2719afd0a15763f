/* neon_math.h - inline NEON helpers shared by the *_neon.c kernels: loads of 16-bit formats
 * and the vector exp / erf of the activations and softmax (the same polynomials as the AVX2
 * kernels). Include only from code compiled for aarch64. Internal. */
#ifndef NVLM_KERNELS_NEON_MATH_H
#define NVLM_KERNELS_NEON_MATH_H
#include <arm_neon.h>
#include <stdint.h>

/* 4 BF16 values: the bits moved to the top half of a float32. */
static inline float32x4_t nvlm_neon_bf16x4(uint16x4_t h) { return vreinterpretq_f32_u32(vshll_n_u16(h, 16)); }
/* 4 F16 values (FCVTL: exact, subnormals included). */
static inline float32x4_t nvlm_neon_f16x4(uint16x4_t h) { return vcvt_f32_f16(vreinterpret_f16_u16(h)); }
static inline float nvlm_neon_f16(uint16_t h) { return vgetq_lane_f32(nvlm_neon_f16x4(vdup_n_u16(h)), 0); }

/* Cephes expf, |rel err| < 2e-7 on [-87, 88]. */
static inline float32x4_t nvlm_neon_exp(float32x4_t x) {
    x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-87.3f)), vdupq_n_f32(88.3f));
    float32x4_t fx = vrndmq_f32(vfmaq_f32(vdupq_n_f32(0.5f), x, vdupq_n_f32(1.44269504088896341f)));
    x = vfmsq_f32(x, fx, vdupq_n_f32(0.693359375f));
    x = vfmsq_f32(x, fx, vdupq_n_f32(-2.12194440e-4f));
    float32x4_t y = vdupq_n_f32(1.9875691500E-4f);
    y = vfmaq_f32(vdupq_n_f32(1.3981999507E-3f), y, x);
    y = vfmaq_f32(vdupq_n_f32(8.3334519073E-3f), y, x);
    y = vfmaq_f32(vdupq_n_f32(4.1665795894E-2f), y, x);
    y = vfmaq_f32(vdupq_n_f32(1.6666665459E-1f), y, x);
    y = vfmaq_f32(vdupq_n_f32(5.0000001201E-1f), y, x);
    y = vfmaq_f32(vaddq_f32(x, vdupq_n_f32(1.0f)), y, vmulq_f32(x, x));
    int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(fx), vdupq_n_s32(127)), 23);
    return vmulq_f32(y, vreinterpretq_f32_s32(e));
}

/* erf as a rational function (Eigen's float erf; abs error ~1e-7 in float arithmetic). */
static inline float32x4_t nvlm_neon_erf(float32x4_t a) {
    float32x4_t x = vminq_f32(vmaxq_f32(a, vdupq_n_f32(-4.0f)), vdupq_n_f32(4.0f));
    float32x4_t x2 = vmulq_f32(x, x);
    float32x4_t p = vdupq_n_f32(-2.72614225801306e-10f);
    p = vfmaq_f32(vdupq_n_f32(2.77068142495902e-08f), p, x2);
    p = vfmaq_f32(vdupq_n_f32(-2.10102402082508e-06f), p, x2);
    p = vfmaq_f32(vdupq_n_f32(-5.69250639462346e-05f), p, x2);
    p = vfmaq_f32(vdupq_n_f32(-7.34990630326855e-04f), p, x2);
    p = vfmaq_f32(vdupq_n_f32(-2.95459980854025e-03f), p, x2);
    p = vfmaq_f32(vdupq_n_f32(-1.60960333262415e-02f), p, x2);
    p = vmulq_f32(p, x);
    float32x4_t q = vdupq_n_f32(-1.45660718464996e-05f);
    q = vfmaq_f32(vdupq_n_f32(-2.13374055278905e-04f), q, x2);
    q = vfmaq_f32(vdupq_n_f32(-1.68282697438203e-03f), q, x2);
    q = vfmaq_f32(vdupq_n_f32(-7.37332916720468e-03f), q, x2);
    q = vfmaq_f32(vdupq_n_f32(-1.42647390514189e-02f), q, x2);
    return vdivq_f32(p, q);
}
#endif
