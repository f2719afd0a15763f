/* attention.h - scaled dot-product attention. Internal. */
#ifndef NVLM_KERNELS_ATTENTION_H
#define NVLM_KERNELS_ATTENTION_H
#include "kernels/ops.h"

/* out[d] = softmax_j(scale * q.k_j) . v_j over n_keys rows of k and v (row strides in floats).
 * scores must hold n_keys floats. n_keys == 0 gives zeros. (The scalar reference.) */
void nvlm_attend(const float *q, const float *k, size_t k_stride, const float *v, size_t v_stride,
                 int n_keys, int d, float scale, float *scores, float *out);

/* n_q queries of one head (rows of q at q_stride) against n_keys keys/values. causal_pos0 < 0:
 * every query sees every key; otherwise query i sees keys 0 .. causal_pos0 + i (clamped to
 * n_keys). Writes n_q rows of d values at out_stride. Works on blocks of queries, so memory is
 * O(block x n_keys), never n_q x n_keys. scratch: nvlm_attention_scratch(level, n_q, n_keys, d)
 * floats (n_q: the most queries of the calls it serves). level: kernels/cpu.h. */
void nvlm_attention(int level, const float *q, size_t q_stride, int n_q, const float *k, size_t k_stride,
                    const float *v, size_t v_stride, int n_keys, int causal_pos0, int d, float scale,
                    float *out, size_t out_stride, float *scratch);
size_t nvlm_attention_scratch(int level, int n_q, int n_keys, int d);
#endif
