/* NEON activations: exact GELU through a rational erf, SiLU through the vector exp
 * (kernels/neon_math.h); the tail that is not a multiple of 4 takes the scalar reference.
 * Element-wise, so any split over threads gives the same values as long as chunks start at
 * multiples of 4 (matmul.c's units of 64). */
#include "kernels/simd_neon.h"
#ifdef NVLM_HAVE_NEON_KERNELS
#include "kernels/neon_math.h"

void nvlm_gelu_neon(float *x, size_t n) {
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        float32x4_t v = vld1q_f32(x + i);
        float32x4_t e = nvlm_neon_erf(vmulq_n_f32(v, 0.70710678118654752f));
        vst1q_f32(x + i, vmulq_f32(vmulq_n_f32(v, 0.5f), vaddq_f32(vdupq_n_f32(1.0f), e)));
    }
    if (i < n) nvlm_gelu(x + i, n - i);
}

void nvlm_silu_mul_neon(float *a, const float *b, size_t n) {
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        float32x4_t v = vld1q_f32(a + i);
        float32x4_t s = vdivq_f32(v, vaddq_f32(vdupq_n_f32(1.0f), nvlm_neon_exp(vnegq_f32(v))));
        vst1q_f32(a + i, vmulq_f32(s, vld1q_f32(b + i)));
    }
    if (i < n) nvlm_silu_mul(a + i, b + i, n - i);
}
#endif
