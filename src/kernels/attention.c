/* One query against a run of keys/values (the scalar reference), and the multi-query entry
 * point that dispatches to the blocked SIMD kernel. */
#include "kernels/attention.h"
#include "kernels/cpu.h"
#include "kernels/simd.h"
#include "kernels/simd_neon.h"
#include <string.h>

void nvlm_attend(const float *q, const float *k, size_t k_stride, const float *v, size_t v_stride,
                 int n_keys, int d, float scale, float *scores, float *out) {
    for (int j = 0; j < n_keys; j++) scores[j] = nvlm_dot(q, k + (size_t)j * k_stride, d) * scale;
    nvlm_softmax(scores, n_keys);
    memset(out, 0, sizeof(float) * (size_t)d);
    for (int j = 0; j < n_keys; j++) nvlm_axpy(out, scores[j], v + (size_t)j * v_stride, d);
}

size_t nvlm_attention_scratch(int level, int n_q, int n_keys, int d) {
#ifdef NVLM_HAVE_AVX2_KERNELS
    if (nvlm_cpu_at_least(level, NVLM_CPU_AVX2)) return nvlm_attention_scratch_avx2(n_q, n_keys, d);
#endif
#ifdef NVLM_HAVE_NEON_KERNELS
    if (level == NVLM_CPU_NEON) return nvlm_attention_scratch_neon(n_q, n_keys, d);
#endif
    (void)level, (void)n_q, (void)d;
    return (size_t)(n_keys > 0 ? n_keys : 1);
}

void nvlm_attention(int level, const float *q, size_t q_stride, int n_q, const float *k, size_t k_stride,
                    const float *v, size_t v_stride, int n_keys, int causal_pos0, int d, float scale,
                    float *out, size_t out_stride, float *scratch) {
#ifdef NVLM_HAVE_AVX2_KERNELS
    if (nvlm_cpu_at_least(level, NVLM_CPU_AVX2)) {
        nvlm_attention_avx2(q, q_stride, n_q, k, k_stride, v, v_stride, n_keys, causal_pos0, d, scale, out,
                            out_stride, scratch);
        return;
    }
#endif
#ifdef NVLM_HAVE_NEON_KERNELS
    if (level == NVLM_CPU_NEON) {
        nvlm_attention_neon(q, q_stride, n_q, k, k_stride, v, v_stride, n_keys, causal_pos0, d, scale, out,
                            out_stride, scratch);
        return;
    }
#endif
    (void)level;
    for (int i = 0; i < n_q; i++) {
        int len = causal_pos0 < 0 ? n_keys : causal_pos0 + i + 1;
        if (len > n_keys) len = n_keys;
        nvlm_attend(q + (size_t)i * q_stride, k, k_stride, v, v_stride, len, d, scale, scratch,
                    out + (size_t)i * out_stride);
    }
}
