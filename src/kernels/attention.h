/* attention.h - scaled dot-product attention for one query. Internal. */
#ifndef NVLM_KERNELS_ATTENTION_H
#define NVLM_KERNELS_ATTENTION_H
#include "kernels/ops.h"

/* out[d] = softmax_j(scale * q.k_j) . v_j over n_keys rows of k and v (row strides in floats).
 * scores must hold n_keys floats. n_keys == 0 gives zeros. */
void nvlm_attend(const float *q, const float *k, size_t k_stride, const float *v, size_t v_stride,
                 int n_keys, int d, float scale, float *scores, float *out);
#endif
