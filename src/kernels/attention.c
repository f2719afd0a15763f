/* One query against a run of keys/values (the scalar reference), and the multi-query entry
 * point that dispatches (kernels/dispatch.h) to the blocked SIMD kernels. */
#include "kernels/attention.h"
#include "kernels/dispatch.h"
#include <string.h>

void nvlm_attend(const float *q, const float *k, size_t k_stride, const float *v, size_t v_stride,
                 int n_keys, int d, float scale, float *scores, float *out) {
    for (int j = 0; j < n_keys; j++) scores[j] = nvlm_dot(q, k + (size_t)j * k_stride, d) * scale;
    nvlm_softmax(scores, n_keys);
    memset(out, 0, sizeof(float) * (size_t)d);
    for (int j = 0; j < n_keys; j++) nvlm_axpy(out, scores[j], v + (size_t)j * v_stride, d);
}

/* Enough for both ops of the level: a caller sizes scratch for its largest call, and its
 * smaller calls (the last block of queries) may run the generation kernel. */
size_t nvlm_attention_scratch(int level, int n_q, int n_keys, int d) {
    size_t a = nvlm_kernel_for(NVLM_OP_ATTENTION, level)->attention_scratch(n_q, n_keys, d);
    size_t g = nvlm_kernel_for(NVLM_OP_ATTENTION_GEN, level)->attention_scratch(n_q, n_keys, d);
    return a > g ? a : g;
}

void nvlm_attention(int level, const float *q, size_t q_stride, int n_q, const float *k, size_t k_stride,
                    const float *v, size_t v_stride, int n_keys, int causal_pos0, int d, float scale,
                    float *out, size_t out_stride, float *scratch) {
    nvlm_op op = n_q <= NVLM_GEN_TOKENS ? NVLM_OP_ATTENTION_GEN : NVLM_OP_ATTENTION;
    nvlm_kernel_for(op, level)->attention(q, q_stride, n_q, k, k_stride, v, v_stride, n_keys, causal_pos0, d, scale,
                                          out, out_stride, scratch);
}
