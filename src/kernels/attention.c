/* One query against a run of keys/values: the building block of every attention here. */
#include "kernels/attention.h"
#include <string.h>

void nvlm_attend(const float *q, const float *k, size_t k_stride, const float *v, size_t v_stride,
                 int n_keys, int d, float scale, float *scores, float *out) {
    for (int j = 0; j < n_keys; j++) scores[j] = nvlm_dot(q, k + (size_t)j * k_stride, d) * scale;
    nvlm_softmax(scores, n_keys);
    memset(out, 0, sizeof(float) * (size_t)d);
    for (int j = 0; j < n_keys; j++) nvlm_axpy(out, scores[j], v + (size_t)j * v_stride, d);
}
